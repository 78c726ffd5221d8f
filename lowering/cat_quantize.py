"""A fused QKV projection's output gradient quantized from its three parts, without the cat.

With one Linear for Q, K and V (`wqkv(x).split(d, -1)`, then per-head views for SDPA), the
backward concatenates SDPA's three input gradients into the projection's output gradient and the
dual quantization then reads that concatenation back:

    dq, dk, dv = sdpa_backward(...)                       # [B, H, T, D] each
    cat = aten.cat([reshape(permute(dq, [0, 2, 1, 3]), [B, T, H*D]), ... dk ..., ... dv ...], -1)
    quantize_1x128_128x1(reshape(cat, [B*T, 3*H*D]))

With `qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)` (timm's attention) the
backward stacks the three gradients instead (a dim-0 cat viewed [3, B, H, N, D]), permutes them to
[B, N, 3, H, D] and copies that contiguous before the 2-D view.

`fold_cat_into_quantization` puts `quantize_1x128_128x1_cat3(permute(dq), permute(dk),
permute(dv))` in place of the cat (or stack) and what follows it: on sm90 one kernel reads each
128x128 tile from the part that holds it, through its strides (kernels/triton_quantize_gluon.py),
so the concatenated BF16 tensor is neither written nor read (2 x 384 MiB of traffic per step of
the Llama block at batch 4 x 4096, dim 4096). Same numbers: the op's CPU kernel is the concatenation followed by
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
from fp8pass.sites import tensor_meta

from .swiglu import _VIEWS

aten = torch.ops.aten
fp8_ops = torch.ops.fp8pass


def _four_d_part(piece: Node) -> "Node | None":
    """The [B, T, H, D] tensor that the cat input `piece` ([B, T, H*D]) is a reshape of, else None."""
    if not isinstance(piece, Node) or piece.op != "call_function" or piece.target not in _VIEWS:
        return None
    val, src_val = tensor_meta(piece), tensor_meta(piece.args[0])
    if val is None or src_val is None or val.dim() != 3 or src_val.dim() != 4:
        return None
    if not all(statically_known_true(a == b) for a, b in zip(src_val.shape[:2], val.shape[:2])):
        return None
    return piece.args[0]


def _single_user_chain(node, targets) -> "tuple[Node, list[Node]]":
    """Up from `node` through ops in `targets` each read only by the next: (the first node that is
    not one, the ones passed, readers first)."""
    passed = []
    while (isinstance(node, Node) and node.op == "call_function" and node.target in targets
           and len(node.users) == 1):
        passed.append(node)
        node = node.args[0]
    return node, passed


def _cat_of_three(node) -> "tuple[list[Node], int] | None":
    """(the three pieces, the dim) of an aten.cat read only by its one user, else None."""
    if not isinstance(node, Node) or node.target is not aten.cat.default or len(node.users) != 1:
        return None
    pieces = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return (list(pieces), dim) if len(pieces) == 3 else None


def _split_parts(quant: Node) -> "tuple[list[Node], list[tuple[Node, None]]] | None":
    """`wqkv(x).split(d, -1)` then per-head views: the gradient is a 2-D view of a last-dim cat of
    three [B, T, H*D] reshapes of [B, T, H, D] tensors. (the nodes the fold removes, readers first;
    the parts), else None."""
    joined_node, views = _single_user_chain(quant.args[0], _VIEWS)
    found = _cat_of_three(joined_node)
    if not views or found is None:
        return None
    pieces, dim = found
    flat, joined = tensor_meta(quant.args[0]), tensor_meta(joined_node)
    if flat is None or joined is None or joined.dim() != 3 or dim not in (2, -1):
        return None
    if not statically_known_true(flat.shape[-1] == joined.shape[-1]):  # [B*T, K], not another 2-D view
        return None
    parts = [_four_d_part(p) for p in pieces]
    if any(p is None for p in parts):
        return None
    return [*views, joined_node], [(p, None) for p in parts]


def _unbind_parts(quant: Node) -> "tuple[list[Node], list[tuple[Node, list[int]]]] | None":
    """`qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)` (timm's attention): the
    gradient is the three SDPA gradients stacked (a dim-0 cat viewed [3, *g.shape]), permuted to
    [B, N, 3, H, D], copied contiguous and viewed 2-D. (the nodes the fold removes, readers first;
    each gradient with the permutation that makes it a [B, N, H, D] part), else None."""
    permuted, chain = _single_user_chain(quant.args[0], (*_VIEWS, aten.clone.default))
    if not isinstance(permuted, Node) or permuted.target is not aten.permute.default or len(permuted.users) != 1:
        return None
    stacked = permuted.args[0]
    order = list(permuted.args[1])
    if (not isinstance(stacked, Node) or stacked.target not in _VIEWS or len(stacked.users) != 1
            or sorted(order) != [0, 1, 2, 3, 4] or order[2] != 0):
        return None
    found = _cat_of_three(stacked.args[0])
    if found is None or found[1] != 0:
        return None
    pieces = found[0]
    vals = [tensor_meta(p) for p in pieces]
    flat, stacked_val = tensor_meta(quant.args[0]), tensor_meta(stacked)
    if flat is None or stacked_val is None or any(v is None or v.dim() != 4 for v in vals):
        return None
    shape = vals[0].shape
    same = [statically_known_true(a == b) for v in vals[1:] for a, b in zip(v.shape, shape)]
    same += [statically_known_true(a == b) for a, b in zip(stacked_val.shape, (3, *shape))]
    # the 2-D view: rows = the first two permuted dims, columns = (the part, the last two)
    cols = 3 * shape[order[3] - 1] * shape[order[4] - 1]
    if stacked_val.dim() != 5 or not all(same) or flat.dim() != 2 or not statically_known_true(flat.shape[1] == cols):
        return None
    perm = [d - 1 for d in order if d != 0]
    return [*chain, permuted, stacked, stacked.args[0]], [(p, perm) for p in pieces]


def fold_cat_into_quantization(graph: Graph) -> int:
    """Each dual quantization of a fused QKV gradient assembled from three gradients (module
    docstring) -> the cat3 op on the gradients. Returns how many were folded."""
    folded = 0
    for quant in list(graph.nodes):
        if quant.op != "call_function" or op_name(quant.target) != "quantize_1x128_128x1":
            continue
        found = _split_parts(quant) or _unbind_parts(quant)
        if found is None:
            continue
        dead, parts = found
        pieces = dead[-1].args[0]  # the cat's inputs
        with graph.inserting_before(quant):
            args = []
            for part, perm in parts:
                if perm is not None:
                    view = graph.call_function(aten.permute.default, (part, perm))
                    view.meta["val"] = part.meta["val"].permute(perm)
                    part = view
                args.append(part)
            node = graph.call_function(fp8_ops.quantize_1x128_128x1_cat3.default, tuple(args))
        node.meta["val"] = quant.meta["val"]  # the same outputs, shapes and layouts (kernels/ops.py)
        if FP8_META_KEY in quant.meta:  # which site and role the copies are for (explain)
            node.meta[FP8_META_KEY] = quant.meta[FP8_META_KEY]
        quant.replace_all_uses_with(node)
        for gone in (quant, *dead):
            graph.erase_node(gone)
        for piece in dict.fromkeys(pieces):
            if not piece.users:
                graph.erase_node(piece)
        folded += 1
    if folded:
        graph.lint()
    return folded
