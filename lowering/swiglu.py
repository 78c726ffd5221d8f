"""SwiGLU MLPs: silu(a) * b computed inside the kernels that quantize it (`fuse_swiglu`).

In a SwiGLU MLP, w2(silu(w1(x)) * w3(x)), the product's only reader is w2's dual quantization
in forward, and in backward the gradients of w1's and w3's outputs go only to their own dual
quantizations. Inductor writes each of those tensors from one elementwise kernel and the
quantizer reads it back: per 8192 x 5632 bf16 tensor ~185 MB written and read again, three times
per MLP and step. The fused ops (kernels/ops.py: `swiglu_quantize_1x128_128x1` and the two
`swiglu_grad_*_quantize_1x128_128x1`) compute the SwiGLU values of a tile in registers and write
only the FP8 copies. Three graph functions:

  rewrite_swiglu(gm)               on the graph torch.compile gives the backend (torch-level ops,
                                   checkpointed regions' subgraphs included):
                                   `F.silu(a) * b` becomes the op `fp8pass.swiglu(a, b)`, whose
                                   autograd formula is one op, `fp8pass.swiglu_backward`, so that
                                   the joint graph holds both as single nodes to match (after
                                   Inductor's decompositions silu would be five aten ops, spelled
                                   differently across torch versions);
  fuse_swiglu_quantizations(graph) on each partitioned graph: a dual quantization whose input is
                                   (a view of) `swiglu(a, b)` becomes the fused op, and the two of
                                   `swiglu_backward`'s outputs the two fused ops of its gradients;
                                   a 1x128 or 128x1 quantization of the product alone (with
                                   recompute_fp8_activations the forward's, and the backward's of
                                   the recomputed product; inference's) becomes
                                   `swiglu_quantize_1x128` / `_128x1` (without, the BF16 product
                                   recomputed in backward is written beside the two input
                                   gradients: the Llama block's peak rose 652 MiB);
  decompose_swiglu_ops(graph)      every `swiglu` / `swiglu_backward` left (the product read by
                                   something else: an opted-out w2) becomes aten ops again, for
                                   Inductor to fuse as it would have without the rewrite (the same
                                   numerics: reference.swiglu is Inductor's decomposition of silu).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch._guards import detect_fake_mode
from torch.fx import Graph, GraphModule, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from fp8pass.kernels import reference
from fp8pass.kernels.ops import op_name
from fp8pass.kernels.reference import TILE
from fp8pass.rewrite import FP8_META_KEY

from .fused_quantize import inline_traced

aten = torch.ops.aten
fp8_ops = torch.ops.fp8pass

_MULS = (operator.mul, torch.mul, torch.Tensor.mul)
_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def _example(node) -> "torch.Tensor | None":
    if not isinstance(node, Node):
        return None
    val = node.meta.get("example_value", node.meta.get("val"))
    return val if isinstance(val, torch.Tensor) else None


def _is_silu(node) -> bool:
    return (isinstance(node, Node) and node.op == "call_function" and node.target is F.silu
            and len(node.args) == 1 and not node.kwargs.get("inplace", False) and len(node.users) == 1)


def rewrite_swiglu(gm: GraphModule) -> int:
    """`F.silu(a) * b` (either operand order) -> `fp8pass.swiglu(a, b)` where a and b are tensors of
    one shape and floating dtype whose last dim is a multiple of 128 (else the product's reader
    could not be an FP8 GEMM anyway), in gm and in its subgraphs (the bodies of torch.utils.checkpoint
    regions). Returns how many were rewritten."""
    return sum(_rewrite_graph(m) for m in gm.modules() if isinstance(m, GraphModule))


def _rewrite_graph(gm: GraphModule) -> int:
    count = 0
    for mul in list(gm.graph.nodes):
        if mul.op != "call_function" or mul.target not in _MULS or len(mul.args) != 2 or mul.kwargs:
            continue
        first, second = mul.args
        silu, other = (first, second) if _is_silu(first) else (second, first) if _is_silu(second) else (None, None)
        if silu is None or not isinstance(other, Node):
            continue
        a, ea, eb = silu.args[0], _example(silu.args[0]), _example(other)
        if ea is None or eb is None or not ea.dtype.is_floating_point or ea.dtype != eb.dtype:
            continue
        if ea.dim() < 1 or ea.shape != eb.shape or not statically_known_true(ea.shape[-1] % TILE == 0):
            continue
        with gm.graph.inserting_before(mul):
            fused = gm.graph.call_function(fp8_ops.swiglu.default, (a, other))
        fused.meta.update(mul.meta)
        mul.replace_all_uses_with(fused)
        gm.graph.erase_node(mul)
        gm.graph.erase_node(silu)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _quantized_through_views(node: Node, names=("quantize_1x128_128x1",)) -> "tuple[Node, list[Node]] | None":
    """(the quantization reading `node`, one of the ops `names`, and the view nodes between) if that
    quantization is the only reader of node and of each view, and its input's last dim is static;
    else None."""
    chain = []
    cur = node
    while len(cur.users) == 1:
        (user,) = cur.users
        if user.op == "call_function" and user.target in _VIEWS:
            chain.append(user)
            cur = user
            continue
        if user.op == "call_function" and op_name(user.target) in names:
            static_k = isinstance(user.args[0].meta["val"].shape[-1], int)
            return (user, chain) if static_k else None
        return None
    return None


def _as_2d(graph: Graph, node: Node, k: int) -> Node:
    """node viewed as [-1, k] (a -1, not the token count: no symbolic size enters the graph as a
    raw argument under dynamic shapes)."""
    val = node.meta["val"]
    if val.dim() == 2:
        return node
    view = graph.call_function(aten.reshape.default, (node, [-1, k]))
    view.meta["val"] = val.reshape(-1, k)
    return view


def _fuse(graph: Graph, before: Node, fused_op, inputs: list[Node], quantization: Node) -> Node:
    """Put fused_op(*inputs, each viewed 2-D) before `before`, in place of the quantization (its
    getitems rewired to the fused op's outputs); returns the fused node."""
    k = quantization.args[0].meta["val"].shape[-1]
    fake_mode = detect_fake_mode([quantization.args[0].meta["val"]])
    with graph.inserting_before(before):
        args = [_as_2d(graph, n, k) for n in inputs]
        fused = graph.call_function(fused_op, tuple(args))
        with fake_mode:
            fused.meta["val"] = fused_op(*(a.meta["val"] for a in args))
    if FP8_META_KEY in quantization.meta:  # which site and role the copies are for (explain)
        fused.meta[FP8_META_KEY] = quantization.meta[FP8_META_KEY]
    quantization.replace_all_uses_with(fused)
    graph.erase_node(quantization)
    return fused


def _erase(graph: Graph, nodes: list[Node]) -> None:
    for node in nodes:  # readers first
        graph.erase_node(node)


# quantization of swiglu(a, b) -> the fused op in its place
_FUSED_FOR = {"quantize_1x128_128x1": "swiglu_quantize_1x128_128x1", "quantize_1x128": "swiglu_quantize_1x128",
              "quantize_128x1": "swiglu_quantize_128x1"}


def fuse_swiglu_quantizations(graph: Graph) -> int:
    """The fused ops in place of the dual quantizations of swiglu's output and of both of
    swiglu_backward's outputs (module docstring). Returns how many SwiGLU ops were fused."""
    fused = 0
    for node in list(graph.nodes):
        name = op_name(node.target) if node.op == "call_function" else None
        if name == "swiglu":
            # the dual quantization, or one copy alone: recompute_fp8_activations' 1x128 one in
            # forward (and inference's), and its 128x1 one made in backward from the recomputed product
            found = _quantized_through_views(node, tuple(_FUSED_FOR))
            if found is None:
                continue
            quant, views = found
            _fuse(graph, node, getattr(fp8_ops, _FUSED_FOR[op_name(quant.target)]).default, list(node.args), quant)
            _erase(graph, views[::-1] + [node])
            fused += 1
        elif name == "swiglu_backward":
            getitems = {u.args[1]: u for u in node.users if u.target is operator.getitem}
            if len(node.users) != 2 or set(getitems) != {0, 1}:
                continue
            found = [_quantized_through_views(getitems[i]) for i in (0, 1)]
            if any(f is None for f in found):
                continue
            grad, a, b = node.args
            # grad_a's op first: it is b's last reader, so b can be freed before grad_b's copies
            # are allocated (kernels/ops.py)
            _fuse(graph, node, fp8_ops.swiglu_grad_a_quantize_1x128_128x1.default, [grad, a, b], found[0][0])
            _fuse(graph, node, fp8_ops.swiglu_grad_b_quantize_1x128_128x1.default, [grad, a], found[1][0])
            _erase(graph, [v for _, views in found for v in views[::-1]] + [getitems[0], getitems[1], node])
            fused += 1
    if fused:
        graph.lint()
    return fused


_DECOMPOSITIONS = {"swiglu": reference.swiglu, "swiglu_backward": reference.swiglu_backward}


def decompose_swiglu_ops(graph: Graph) -> int:
    """Every swiglu / swiglu_backward op left in a graph -> aten ops. Returns how many."""
    nodes = [n for n in graph.nodes if n.op == "call_function" and op_name(n.target) in _DECOMPOSITIONS]
    if not nodes:
        return 0
    fake_mode = detect_fake_mode([nodes[0].args[0].meta["val"]])
    for node in nodes:
        inline_traced(graph, node, _DECOMPOSITIONS[op_name(node.target)], fake_mode)
    graph.lint()
    return len(nodes)
