"""Rewriting converted matmuls into quantize + blockwise-scaled FP8 GEMM nodes.

Each GEMM operand asks its source tensor for one FP8 copy:
  * the A operand needs 1x128 tiles along its K (last) dim: the "row" copy of A, or, when A is
    a transpose T^T (Wgrad's dY^T), the "col" (128x1) copy of T, transposed;
  * the B operand of Wgrad needs 128x1 tiles along its K (first) dim: the "col" copy;
  * a weight B needs its 128x128 "block" copy, transposed as the graph uses it.
A tensor asked for both row and col copies (a Linear's input, the output gradient) gets the
single-read op that emits both. Col copies are stored transposed, so both Wgrad operands are
K-major (what FP8 tensor cores read) without copies. A weight gets two block copies, each read
K-major without a copy: quantize_128x128 for Fprop (read as W^T) and quantize_128x128_transposed
for Dgrad (read as W), made in backward; without Config.recompute_fp8_weights, Dgrad reads a
transposed copy of the Fprop copy instead, which forward keeps.
Grouped GEMMs (MoE experts, `_grouped_mm` over a [G, ., .] weight stack) take the same copies: the
stack's quantize_128x128 and quantize_128x128_transposed (matrix by matrix; Dgrad's each expert's
transpose, K-major: the plain-Triton GEMM ran Dgrad ~4x slower on an N-major B, and the Gluon one
reads K-major operands only, benchmarks/RESULTS_gemm.md, session 11), and the dual quantization of
the experts' input and output gradient as for a Linear.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Optional

import torch
from torch._guards import detect_fake_mode
from torch.fx import Graph, Node

from .sites import is_2d_transpose, is_prequantized_weight, strip_to_placeholder, tensor_meta

aten = torch.ops.aten
fp8_ops = torch.ops.fp8pass

FP8_META_KEY = "fp8pass"  # node.meta[FP8_META_KEY] = {"role": ..., "module": ...} on new nodes
# Metadata new nodes take from the node they stand for: lineage for reports, and the activation
# checkpointing tags ("recompute", "ac_graph_id") that tell the partitioner to recompute them.
_INHERITED_META = ("seq_nr", "nn_module_stack", "stack_trace", "custom", "source_fn_stack", "recompute",
                   "ac_graph_id")


@dataclasses.dataclass(frozen=True)
class GemmRewrite:
    """One matmul node to replace: mm(a, b) or addmm(bias, a, b) in a Linear's `role`."""

    node: Node
    role: str  # "fprop" | "dgrad" | "wgrad"
    module: str
    weight: Optional[Node] = None  # set for fprop/dgrad: B is this weight's 128x128 copy
    swap: bool = False  # the weight is the left operand (Dgrad of a transposed-layout input)
    offs: Optional[Node] = None  # a grouped GEMM (MoE experts, _grouped_mm): its groups' ends


@dataclasses.dataclass(frozen=True)
class _Request:
    source: Node
    kind: str  # "row" | "col" | "block"
    transpose: bool


class NodeBuilder:
    """Creates nodes with fake-tensor metadata, so later passes (partitioner) see shapes."""

    def __init__(self, graph: Graph):
        self.graph = graph
        vals = [n.meta["val"] for n in graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
        self.fake_mode = detect_fake_mode(vals)

    def call(self, target, args, meta_from: Optional[Node] = None, fp8_meta: Optional[dict] = None,
             kwargs: Optional[dict] = None) -> Node:
        node = self.graph.call_function(target, args, kwargs or {})
        fake_args = [a.meta["val"] if isinstance(a, Node) else a for a in args]
        if self.fake_mode is not None:
            with self.fake_mode:
                node.meta["val"] = target(*fake_args, **(kwargs or {}))
        if meta_from is not None:
            for key in _INHERITED_META:
                if key in meta_from.meta:
                    node.meta[key] = meta_from.meta[key]
        if fp8_meta is not None:
            node.meta[FP8_META_KEY] = dict(fp8_meta)
        return node

    def getitem(self, node: Node, index: int) -> Node:
        item = self.graph.call_function(operator.getitem, (node, index))
        if isinstance(node.meta.get("val"), (tuple, list)):
            item.meta["val"] = node.meta["val"][index]
        for key in (*_INHERITED_META, FP8_META_KEY):
            if key in node.meta:
                item.meta[key] = node.meta[key]
        return item

    def transpose(self, node: Node) -> Node:
        """node with its last two dims swapped (a matrix, or each matrix of an experts' stack)."""
        ndim = tensor_meta(node).dim() if tensor_meta(node) is not None else 2
        return self.call(aten.permute.default, (node, [*range(ndim - 2), ndim - 1, ndim - 2]), meta_from=node)

    def k_major_weight(self, weight: Node, q: Node, s: Node, meta: dict, requantize: bool) -> tuple[Node, Node]:
        """W[N, K] used as the B[K'=N, N'=K] of Dgrad, with K' contiguous, and its block scale.
        requantize: the weight quantized again straight into the transposed layout (one pass over
        W, made in backward when the partitioner recomputes weight copies). Otherwise, or for a
        weight that arrives already quantized (FP8 all-gather): a transposed copy of the FP8 copy
        q (N*K bytes), its scale copied by the GEMM dispatcher."""
        if not requantize or is_prequantized_weight(weight):
            q_t = self.call(aten.clone.default, (self.transpose(q),), meta_from=q,
                            kwargs={"memory_format": torch.contiguous_format})
            return self.transpose(q_t), s
        both = self.call(fp8_ops.quantize_128x128_transposed.default, (weight,), weight, meta)
        return self.transpose(self.getitem(both, 0)), self.transpose(self.getitem(both, 1))


def _reduce_transposes(node: Node, transposed: bool = False) -> tuple[Node, bool]:
    """(source, transposed) such that the operand is source, or source^T when transposed."""
    while is_2d_transpose(node):
        node, transposed = node.args[0], not transposed
    return node, transposed


def _operand_requests(rw: GemmRewrite) -> tuple[_Request, _Request]:
    if rw.node.target is aten.addmm.default:
        a, b = rw.node.args[1:3]
    else:
        a, b = rw.node.args[:2]
    a_src, a_t = _reduce_transposes(a)
    b_src, b_t = _reduce_transposes(b)
    if rw.swap:  # mm(L, R) computed as (R^T @ L^T)^T so that the weight is the B operand
        (a_src, a_t), (b_src, b_t) = (b_src, not b_t), (a_src, not a_t)
    # A needs 1x128 tiles along its last dim: a row copy, or a transposed col copy.
    req_a = _Request(a_src, "col" if a_t else "row", a_t)
    if rw.weight is not None:
        weight, transposed = strip_to_placeholder(b_src)
        assert weight is rw.weight, "B operand must be the site's weight"
        req_b = _Request(weight, "block", transposed != b_t)
    else:  # B needs 128x1 tiles along its first dim: a col copy, or a transposed row copy.
        req_b = _Request(b_src, "row" if b_t else "col", b_t)
    return req_a, req_b


def rewrite_gemms(graph: Graph, rewrites: list[GemmRewrite], requantize_dgrad_weights: bool = True) -> list[Node]:
    """Replace each matmul by its FP8 form; returns the new gemm nodes. requantize_dgrad_weights:
    Dgrad's K-major weight copy is a second quantization of the weight (with
    Config.recompute_fp8_weights, where backward quantizes the weight again anyway), else a
    transposed copy of the Fprop copy (which the partitioner then keeps from forward)."""
    if not rewrites:
        return []
    builder = NodeBuilder(graph)
    order = {node: i for i, node in enumerate(graph.nodes)}
    requests = {rw.node: _operand_requests(rw) for rw in rewrites}

    # Which copies each source needs, and the earliest consumer (the copies go right before it).
    kinds: dict[Node, set[str]] = {}
    first_use: dict[Node, Node] = {}
    owner: dict[Node, GemmRewrite] = {}
    for rw in sorted(rewrites, key=lambda r: order[r.node]):
        for req in requests[rw.node]:
            kinds.setdefault(req.source, set()).add(req.kind)
            first_use.setdefault(req.source, rw.node)
            owner.setdefault(req.source, rw)

    copies: dict[tuple[Node, str], tuple[Node, Node]] = {}
    for source, wanted in kinds.items():
        rw = owner[source]
        meta = {"role": "quantize", "module": rw.module, "for": rw.role}
        if is_prequantized_weight(source) and wanted == {"block"}:
            # FP8 all-gather: the weight's 128x128 copy is the gathered graph input itself
            copies[(source, "block")] = (source.args[0], source.args[1])
            continue
        with graph.inserting_before(first_use[source]):
            if wanted >= {"row", "col"}:
                both = builder.call(fp8_ops.quantize_1x128_128x1.default, (source,), source, meta)
                items = [builder.getitem(both, i) for i in range(4)]
                copies[(source, "row")] = (items[0], items[1])
                copies[(source, "col")] = (items[2], items[3])  # stored transposed: (q.T, s.T)
            for kind, op in (("row", fp8_ops.quantize_1x128.default), ("col", fp8_ops.quantize_128x1.default),
                             ("block", fp8_ops.quantize_128x128.default)):
                if kind in wanted and (source, kind) not in copies:
                    q = builder.call(op, (source,), source, meta)
                    copies[(source, kind)] = (builder.getitem(q, 0), builder.getitem(q, 1))

    new_nodes = []
    for rw in sorted(rewrites, key=lambda r: order[r.node]):
        node = rw.node
        operands = []
        with graph.inserting_before(node):
            for req in requests[node]:
                q, s = copies[(req.source, req.kind)]
                # col copies are stored transposed (K-major for Wgrad), so a transposed use is free
                if req.transpose != (req.kind == "col"):
                    q, s = builder.transpose(q), builder.transpose(s)
                elif req.kind == "block":  # Dgrad's B = W: make it K-major once per weight
                    key = (req.source, "block_k_major")
                    if key not in copies:  # rewrites run in graph order: this is the first use
                        meta = {"role": "quantize", "module": rw.module, "for": rw.role}
                        copies[key] = builder.k_major_weight(req.source, q, s, meta, requantize_dgrad_weights)
                    q, s = copies[key]
                operands += [q, s]
            out_dtype = tensor_meta(node).dtype
            fp8_meta = {"role": rw.role, "module": rw.module}
            if rw.offs is None:
                gemm = builder.call(fp8_ops.gemm_blockwise.default, (*operands, out_dtype), node, fp8_meta)
            else:
                gemm = builder.call(fp8_ops.gemm_blockwise_grouped.default, (*operands, rw.offs, out_dtype), node,
                                    fp8_meta)
            result = builder.transpose(gemm) if rw.swap else gemm
            if node.target is aten.addmm.default:
                result = builder.call(aten.add.Tensor, (gemm, node.args[0]), node)
        node.replace_all_uses_with(result)
        graph.erase_node(node)
        new_nodes.append(gemm)
    graph.eliminate_dead_code()
    return new_nodes


def observe_gemms(graph: Graph, rewrites: list[GemmRewrite], graph_name: str) -> None:
    """Observation mode (Report.numerics): replace each matmul by `observe_mm(A, B, key)` on its
    canonical operands, computing the same high-precision product and keeping A and B (a grouped
    GEMM, MoE experts: `observe_grouped_mm(A, B, offs, key)`, as torch._grouped_mm takes them)."""
    builder = NodeBuilder(graph)
    for index, rw in enumerate(rewrites):
        node = rw.node
        a, b = node.args[1:3] if node.target is aten.addmm.default else node.args[:2]
        with graph.inserting_before(node):
            if rw.swap:
                a, b = builder.transpose(b), builder.transpose(a)
            key = f"{graph_name}|{index:05d}|{rw.module}|{rw.role}"
            fp8_meta = {"role": rw.role, "module": rw.module}
            if rw.offs is None:
                result = builder.call(torch.ops.fp8pass.observe_mm.default, (a, b, key), node, fp8_meta)
            else:
                result = builder.call(torch.ops.fp8pass.observe_grouped_mm.default, (a, b, rw.offs, key), node,
                                      fp8_meta)
            if rw.swap:
                result = builder.transpose(result)
            if node.target is aten.addmm.default:
                result = builder.call(aten.add.Tensor, (result, node.args[0]), node)
        node.replace_all_uses_with(result)
        graph.erase_node(node)
    graph.eliminate_dead_code()
