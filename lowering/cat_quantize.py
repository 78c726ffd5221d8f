"""A fused QKV projection's output gradient quantized from its three parts, without the cat.

With one Linear for Q, K and V (`wqkv(x).split(d, -1)`, then per-head views for SDPA), the
backward concatenates SDPA's three input gradients into the projection's output gradient and the
dual quantization then reads that concatenation back:

    dq, dk, dv = sdpa_backward(...)                       # [B, H, T, D] each
    cat = aten.cat([reshape(permute(dq, [0, 2, 1, 3]), [B, T, H*D]), ... dk ..., ... dv ...], -1)
    quantize_1x128_128x1(reshape(cat, [B*T, 3*H*D]))

`fold_cat_into_quantization` puts `quantize_1x128_128x1_cat3(permute(dq), permute(dk),
permute(dv))` in place of the last two: on sm90 one kernel reads each 128x128 tile from the part
that holds it, through its strides (kernels/triton_quantize_gluon.py), so the concatenated
BF16 tensor is neither written nor read (2 x 384 MiB of traffic per step of the Llama block at
batch 4 x 4096, dim 4096). Same numbers: the op's CPU kernel is the concatenation followed by
the dual quantization. Grouped-query widths (K and V narrower than Q) fold too, and so do rotary
embeddings: Q's and K's gradients then come from Inductor's rotary-backward kernel (written to
their own buffers instead of into the cat), V's straight from SDPA. On an H100 the
block step's kernels took 268 us less: the cat kernel (261 us) gone, the cat3 kernel as fast as
the plain dual quantizer it replaces (289 vs ~297 us; benchmarks/RESULTS.md, session 16).
"""

from __future__ import annotations

import torch
from torch.fx import Graph, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from fp8pass.kernels.ops import op_name
from fp8pass.rewrite import FP8_META_KEY

from .swiglu import _VIEWS

aten = torch.ops.aten
fp8_ops = torch.ops.fp8pass


def _only_user(node: Node) -> "Node | None":
    return next(iter(node.users)) if len(node.users) == 1 else None


def _four_d_part(piece: Node) -> "Node | None":
    """The [B, T, H, D] tensor that the cat input `piece` ([B, T, H*D]) is a reshape of, else None."""
    if piece.op != "call_function" or piece.target not in _VIEWS:
        return None
    src = piece.args[0]
    val, src_val = piece.meta.get("val"), getattr(src, "meta", {}).get("val")
    if not isinstance(val, torch.Tensor) or not isinstance(src_val, torch.Tensor):
        return None
    if val.dim() != 3 or src_val.dim() != 4:
        return None
    if not all(statically_known_true(a == b) for a, b in zip(src_val.shape[:2], val.shape[:2])):
        return None
    return src


def _foldable(quant: Node) -> "tuple[Node, Node, list[Node]] | None":
    """(the view, the cat, its three 4-D parts) under the dual quantization `quant`, if its input
    is a 2-D view of a last-dim cat of three [B, T, H*D] reshapes of [B, T, H, D] tensors, each
    read by nothing else on the way; else None."""
    view = quant.args[0]
    if not isinstance(view, Node) or view.op != "call_function" or view.target not in _VIEWS:
        return None
    cat = view.args[0]
    if not isinstance(cat, Node) or cat.target is not aten.cat.default or _only_user(view) is not quant:
        return None
    if _only_user(cat) is not view:
        return None
    pieces = cat.args[0]
    dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
    if len(pieces) != 3 or dim not in (2, -1):
        return None
    flat, joined = view.meta.get("val"), cat.meta.get("val")
    if not isinstance(flat, torch.Tensor) or not isinstance(joined, torch.Tensor) or joined.dim() != 3:
        return None
    if not statically_known_true(flat.shape[-1] == joined.shape[-1]):  # [B*T, K], not another 2-D view
        return None
    parts = [_four_d_part(p) for p in pieces]
    if any(p is None for p in parts):
        return None
    return view, cat, parts


def fold_cat_into_quantization(graph: Graph) -> int:
    """Each dual quantization of a three-part last-dim cat (module docstring) -> the cat3 op on the
    parts. Returns how many were folded."""
    folded = 0
    for quant in list(graph.nodes):
        if quant.op != "call_function" or op_name(quant.target) != "quantize_1x128_128x1":
            continue
        found = _foldable(quant)
        if found is None:
            continue
        view, cat, parts = found
        with graph.inserting_before(quant):
            node = graph.call_function(fp8_ops.quantize_1x128_128x1_cat3.default, tuple(parts))
        node.meta["val"] = quant.meta["val"]  # the same outputs, shapes and layouts (kernels/ops.py)
        if FP8_META_KEY in quant.meta:  # which site and role the copies are for (explain)
            node.meta[FP8_META_KEY] = quant.meta[FP8_META_KEY]
        quant.replace_all_uses_with(node)
        pieces = cat.args[0]
        for dead in (quant, view, cat):
            graph.erase_node(dead)
        for piece in dict.fromkeys(pieces):
            if not piece.users:
                graph.erase_node(piece)
        folded += 1
    if folded:
        graph.lint()
    return folded
