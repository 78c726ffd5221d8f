"""FP8 storage of the activations saved for backward beyond the Linear inputs.

At converted sites the pass already makes the partitioner save FP8 copies of each Linear's input
and weight. What else the backward keeps is mostly the Linear *outputs* that feed an activation
function: the two SwiGLU inputs (w1 x, w3 x) or a GELU input. DeepSeek-V3 caches those in FP8 as
well. After Inductor's usual min-cut partition (partitioner.py), for each such saved tensor this
makes the forward save its 1x128 FP8 copy and scales instead and the backward dequantize it with
plain aten ops (views, a cast and a multiply) that Inductor fuses into the activation's backward
kernel, so no high-precision copy is materialized.
"""

from __future__ import annotations

import logging
import operator

import torch
from torch.fx import GraphModule, Node

from fp8pass.kernels.reference import TILE
from fp8pass.rewrite import FP8_META_KEY

aten = torch.ops.aten
log = logging.getLogger("fp8pass")

_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
# Forward consumers that make a saved Linear output "an activation's input" (SiLU, GELU, the
# SwiGLU product). A residual add among them means the value feeds the stream: left alone.
_RESIDUAL = (aten.add.Tensor, aten.sub.Tensor)
_FLOAT = (torch.bfloat16, torch.float16, torch.float32)


def _gemm_source(node: Node) -> Node | None:
    while node.op == "call_function" and node.target in _VIEWS:
        node = node.args[0]
    if node.op == "call_function" and (node.meta.get(FP8_META_KEY) or {}).get("role") == "fprop":
        return node
    return None


def _forward_consumers(node: Node) -> list[Node]:
    out, stack = [], [node]
    while stack:
        cur = stack.pop()
        for user in cur.users:
            if user.op == "call_function" and user.target in _VIEWS:
                stack.append(user)
            elif user.op != "output":
                out.append(user)
    return out


def should_store_fp8(node: Node, min_bytes: int) -> bool:
    """A saved tensor that is a converted Linear's output feeding an activation, large enough."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dtype not in _FLOAT or val.dim() < 2:
        return False
    if not isinstance(val.shape[-1], int) or val.shape[-1] % TILE:
        return False
    numel = val.numel()
    # A symbolic size (dynamic shapes) counts as large: comparing it would add a guard, and a
    # recompile whenever a length crosses the threshold.
    if isinstance(numel, int) and numel * val.element_size() < min_bytes:
        return False
    source = _gemm_source(node)
    if source is None:
        return False
    consumers = _forward_consumers(source)
    return bool(consumers) and not any(c.target in _RESIDUAL for c in consumers)


def _set_val(node: Node, fn, *args) -> None:
    node.meta["val"] = fn(*[a.meta["val"] if isinstance(a, Node) else a for a in args])


def store_saved_activations_in_fp8(fw: GraphModule, bw: GraphModule, num_fwd_outputs: int,
                                   min_bytes: int) -> list[str]:
    """Rewrite the partitioned pair in place; returns the names of the tensors now kept in FP8."""
    fw_out = next(iter(fw.graph.find_nodes(op="output")))
    outputs = list(fw_out.args[0])
    saved = outputs[num_fwd_outputs:]
    bw_inputs = [n for n in bw.graph.nodes if n.op == "placeholder"]
    if [n.name for n in bw_inputs[: len(saved)]] != [n.name if isinstance(n, Node) else None for n in saved]:
        log.info("fp8pass: saved tensors and backward inputs do not line up by name; FP8 activation storage off")
        return []
    fake_mode = torch._guards.detect_fake_mode([n.meta.get("val") for n in bw_inputs])
    changed = []
    new_outputs = outputs[:num_fwd_outputs]
    for node, bw_in in zip(saved, bw_inputs):
        if not isinstance(node, Node) or node.op == "placeholder" or not should_store_fp8(node, min_bytes):
            new_outputs.append(node)
            continue
        val = node.meta["val"]
        with fw.graph.inserting_before(fw_out), fake_mode:
            quant = fw.graph.call_function(torch.ops.fp8pass.quantize_1x128.default, (node,))
            _set_val(quant, torch.ops.fp8pass.quantize_1x128.default, node)
            q = fw.graph.call_function(operator.getitem, (quant, 0))
            s_mn = fw.graph.call_function(operator.getitem, (quant, 1))
            q.meta["val"], s_mn.meta["val"] = quant.meta["val"]
            # The op's scales are MN-major (the layout cuBLAS reads); the backward reads them in the
            # activation's elementwise kernel instead, where a transposed read makes Inductor tile
            # the whole kernel 2-D (a SwiGLU backward of the 1B model's size took 141 us against
            # BF16's 106 on an H200, 89 us with this). A row-major copy of the scales (K/128 floats
            # a row) is saved instead.
            s = fw.graph.call_function(aten.clone.default, (s_mn,), {"memory_format": torch.contiguous_format})
            s.meta["val"] = s_mn.meta["val"].clone(memory_format=torch.contiguous_format)
            module = (_gemm_source(node).meta.get(FP8_META_KEY) or {}).get("module", "")
            for new in (quant, q, s_mn, s):  # attribution for reports
                new.meta[FP8_META_KEY] = {"role": "quantize", "module": module, "for": "saved activation"}
        new_outputs += [q, s]
        with bw.graph.inserting_after(bw_in), fake_mode:
            q_in = bw.graph.placeholder(q.name)
            q_in.meta["val"] = q.meta["val"]
        with bw.graph.inserting_after(q_in), fake_mode:
            s_in = bw.graph.placeholder(s.name)
            s_in.meta["val"] = s.meta["val"]
        first_compute = next(n for n in bw.graph.nodes if n.op != "placeholder")
        with bw.graph.inserting_before(first_compute), fake_mode:
            restored = _dequantize_with_aten_ops(bw.graph, q_in, s_in, val.dtype)
        bw_in.replace_all_uses_with(restored)
        bw.graph.erase_node(bw_in)
        changed.append(node.name)
    if changed:
        fw_out.args = (tuple(new_outputs),)
        fw.graph.lint()
        bw.graph.lint()
        fw.recompile()
        bw.recompile()
    return changed


def _dequantize_with_aten_ops(graph, q: Node, s: Node, dtype: torch.dtype) -> Node:
    """q[..., K] (E4M3) * s[..., K/128] -> dtype, as views + cast + mul (fusable by Inductor)."""
    shape = list(q.meta["val"].shape)
    tiled = shape[:-1] + [shape[-1] // TILE, TILE]
    nodes = []

    def call(target, *args):
        node = graph.call_function(target, args)
        _set_val(node, target, *args)
        nodes.append(node)
        return node

    qv = call(aten.view.default, q, tiled)
    qf = call(torch.ops.prims.convert_element_type.default, qv, torch.float32)
    su = call(aten.unsqueeze.default, s, -1)
    prod = call(aten.mul.Tensor, qf, su)
    flat = call(aten.view.default, prod, shape)
    return call(torch.ops.prims.convert_element_type.default, flat, dtype)
