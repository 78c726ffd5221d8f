"""The partition of the FP8 joint graph into forward and backward: what crosses between them.

Inductor's min-cut partition decides what the forward saves for backward. Two FP8 choices are
made around it:
  * before it, the FP8 copies of weights (quantize_128x128 of a parameter, and the K-major copy
    Dgrad reads, quantize_128x128_transposed) are tagged to be recomputed in backward instead of
    saved: a parameter is alive in backward anyway, so saving its FP8 copy would hold N*K more
    bytes per weight through the whole step, while quantizing it again costs one pass over the
    weight (`recompute_fp8_weights`);
  * before it too, Wgrad's 128x1 copy of a Linear's input X (`recompute_fp8_activations`): the
    forward's dual quantization of X is split into its 1x128 half (Fprop, in forward) and a
    128x1 quantization tagged to be made in backward. In a transformer the backward has X for
    nothing: the attention output is saved for SDPA's backward anyway, a norm's output is
    recomputed from the norm's saved input and rstd, the SwiGLU product from its two saved inputs;
    BF16 training saves nothing extra for these Linears, and the FP8 copy (1 byte an element held
    through the step) was pure extra memory. The pointwise chains that recompute such an X from
    what backward reads anyway are tagged too. A site where the backward then needs tensors saved
    only for that recomputation, more bytes than the FP8 copy (X a GEMM's output nothing else
    keeps), gets its chain tagged, or else its dual quantization back, and the graph is
    partitioned again;
  * after it, large saved activation inputs are stored in FP8 (saved_activations.py).
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from typing import Any, Optional, Sequence

import torch
import torch._functorch.config as functorch_config
from torch._functorch.partitioners import min_cut_rematerialization_partition
from torch._inductor.custom_graph_pass import CustomPartitionerFn
from torch.fx import GraphModule, Node
from torch.utils.checkpoint import CheckpointPolicy

from fp8pass.kernels.ops import op_name
from fp8pass.rewrite import FP8_META_KEY, NodeBuilder
from fp8pass.sites import strip_to_placeholder

from .saved_activations import store_saved_activations_in_fp8
from .source_digest import source_digest

aten = torch.ops.aten
fp8_ops = torch.ops.fp8pass
log = logging.getLogger("fp8pass")

# What lies between an FP8 copy and the GEMMs reading it: tuple items, transposes, and (for a
# weight) the contiguous copy that makes Dgrad's operand K-major.
_COPY_USERS = (operator.getitem, aten.permute.default, aten.t.default, aten.clone.default)


def _tag_for_recompute(node: Node) -> list[Node]:
    """Tag node and the tuple items/transposes/copies reading it PREFER_RECOMPUTE; returns them."""
    tagged, stack = [], [node]
    while stack:
        cur = stack.pop()
        cur.meta["recompute"] = CheckpointPolicy.PREFER_RECOMPUTE
        tagged.append(cur)
        stack += [u for u in cur.users if u.op == "call_function" and u.target in _COPY_USERS
                  and "recompute" not in u.meta]
    return tagged


def tag_fp8_weights_for_recompute(graph: torch.fx.Graph) -> list[Node]:
    """Mark each parameter's FP8 copies (and their transposes/K-major copy) PREFER_RECOMPUTE, so
    the min-cut partition re-quantizes the weight in backward rather than saving the copy (that
    matters where backward runs an Fprop again: checkpoint regions, activation_memory_budget).
    Nodes that already carry a tag (a checkpoint policy's) keep it. Returns the tagged nodes."""
    nodes = [node for target in (fp8_ops.quantize_128x128.default, fp8_ops.quantize_128x128_transposed.default)
             for node in graph.find_nodes(op="call_function", target=target)]  # one target per lookup
    tagged = []
    for node in nodes:
        source, _ = strip_to_placeholder(node.args[0])
        if source is None or source.name.startswith("tangents") or "recompute" in node.meta:
            continue
        tagged += _tag_for_recompute(node)
    return tagged


@dataclasses.dataclass(frozen=True)
class SplitQuantization:
    """A forward dual quantization of X split in two: `row` (1x128, forward), `col` (128x1, tagged
    for backward, with the nodes `tagged` alongside it). Node names, not nodes: the partition
    replaces the joint graph by a copy (its CSE pass), which keeps the names."""

    source: str
    row: str
    col: str
    tagged: tuple[str, ...]


def _depends_on_tangents(graph: torch.fx.Graph) -> set[Node]:
    found: set[Node] = set()
    for node in graph.nodes:  # topological order
        if (node.op == "placeholder" and node.name.startswith("tangents")) or any(
                a in found for a in node.all_input_nodes):
            found.add(node)
    return found


def split_forward_dual_quantizations(graph: torch.fx.Graph) -> list[SplitQuantization]:
    """Each dual quantization of a forward tensor (not a gradient, not inside a checkpointed
    region, whose tags already decide) becomes quantize_1x128 + quantize_128x1, the latter tagged
    PREFER_RECOMPUTE. The two ops emit the same tensors, in the same layouts, as the dual op."""
    backward = _depends_on_tangents(graph)
    builder = NodeBuilder(graph)
    splits = []
    for dual in list(graph.find_nodes(op="call_function", target=fp8_ops.quantize_1x128_128x1.default)):
        if dual in backward or "recompute" in dual.meta:
            continue
        source, fp8_meta = dual.args[0], dual.meta.get(FP8_META_KEY)
        with graph.inserting_after(dual):
            col = builder.call(fp8_ops.quantize_128x1.default, (source,), dual, fp8_meta)
        with graph.inserting_after(dual):
            row = builder.call(fp8_ops.quantize_1x128.default, (source,), dual, fp8_meta)
        for item in list(dual.users):
            index = item.args[1]
            item.args = (row, index) if index < 2 else (col, index - 2)
        graph.erase_node(dual)
        tagged = tuple(n.name for n in _tag_for_recompute(col))
        splits.append(SplitQuantization(source.name, row.name, col.name, tagged))
    return splits


def merge_split_quantization(builder: NodeBuilder, nodes: dict[str, Node], split: SplitQuantization) -> None:
    """Undo one split in builder's graph (`nodes`: its nodes by name): the dual op again,
    quantizing X once in forward and saving its col copy."""
    graph = builder.graph
    source, row, col = nodes[split.source], nodes[split.row], nodes[split.col]
    for name in split.tagged:  # (a transpose the CSE merged with another is gone)
        if name in nodes:
            nodes[name].meta.pop("recompute", None)
    with graph.inserting_before(row):
        dual = builder.call(fp8_ops.quantize_1x128_128x1.default, (source,), row, row.meta.get(FP8_META_KEY))
    for item in list(row.users):
        item.args = (dual, item.args[1])
    for item in list(col.users):
        item.args = (dual, item.args[1] + 2)
    graph.erase_node(col)
    graph.erase_node(row)


def _size_hint(n) -> int:
    """An int for a possibly symbolic size: its example value (dynamic shapes), without a guard."""
    if isinstance(n, torch.SymInt):
        hint = getattr(n.node, "hint", None)
        return int(hint) if hint is not None else 1 << 20
    return int(n)


def _bytes(node: Node) -> int:
    vals = node.meta.get("val")
    total = 0
    for val in vals if isinstance(vals, (tuple, list)) else (vals,):
        if isinstance(val, torch.Tensor):
            total += _size_hint(val.numel()) * val.element_size()
    return total


def splits_costing_memory(bw: GraphModule, splits: list[SplitQuantization]) -> dict[SplitQuantization, list[str]]:
    """{split: the saved tensors backward receives only for its recomputation} for each split
    where those are more bytes than the FP8 copy the forward would have saved instead."""
    by_name = {n.name: n for n in bw.graph.nodes}
    costly = {}
    for split in splits:
        col = by_name.get(split.col)
        if col is None:  # the partition kept it in forward after all
            continue
        # the nodes whose every use leads only to this copy: what backward would not need without it
        only_feeding = {col}
        for node in reversed(bw.graph.nodes):
            if node.users and all(u in only_feeding for u in node.users):
                only_feeding.add(node)
        # a graph input (parameter, the model's input) is the caller's, held anyway as in BF16
        # training, where backward reads it too
        only_for_this = [n for n in only_feeding if n.op == "placeholder" and not n.name.startswith("primals")]
        if sum(_bytes(p) for p in only_for_this) > _bytes(col):
            costly[split] = [p.name for p in only_for_this]
    return costly


_VIEWS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
          aten.t.default, aten.squeeze.dim, aten.unsqueeze.default, aten.expand.default)


def _cheap_to_recompute(node: Node) -> bool:
    target = node.target
    return node.op == "call_function" and (
        target in _VIEWS or (isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags)
        or op_name(target) == "swiglu")  # elementwise too (lowering/swiglu.py)


def recompute_chain(nodes: dict[str, Node], name: str, available: set[str], limit: int = 24) -> Optional[list[Node]]:
    """The pointwise and view nodes (of the graph whose nodes by name are `nodes`) that compute
    `name` from graph inputs and the tensors in `available` (saved for backward anyway), or None if
    there are none such (a GEMM, a reduction on the way). Min-cut does not recompute a tensor that
    backward must materialize (here for the 128x1 quantization): tagging this chain makes it,
    where the FP8 copy is the larger cost."""
    chain, stack, seen = [], [nodes[name]], set()
    while stack:
        cur = stack.pop()
        if cur in seen:
            continue
        seen.add(cur)
        if cur.op == "placeholder" or (cur.name in available and chain):
            continue
        if not _cheap_to_recompute(cur) or len(chain) >= limit:
            return None
        chain.append(cur)
        stack += cur.all_input_nodes
    return chain


def tag_recompute_chains(graph: torch.fx.Graph, splits: list[SplitQuantization]) -> list[str]:
    """Before the first partition: tag PREFER_RECOMPUTE the pointwise/view chain computing each
    split's X from tensors the backward reads anyway (a norm's output from its input and rstd,
    which the norm's backward reads). Without the tags min-cut saves such an X for the 128x1
    quantization alone, and the partition ran again with them (the retry in Fp8Partitioner): for
    a 16-layer GPT on the dev machine's CPU the partition took 8.5-10.7 s with the retry and
    5.0-5.5 s with the tags. The generated code is the same for static shapes (GPT fp32/bf16, with
    and without fuse_swiglu, checkpointed, HF Llama); with dynamic shapes the retry had kept the
    first norm output's 128x1 copy saved from forward (its chain not found among the first
    partition's saved tensors), which the tags now make in backward from what is saved anyway
    (benchmarks/RESULTS.md, session 13). Returns the sources whose chains were tagged; the retry
    still handles what this estimate of "read anyway" gets wrong."""
    backward = _depends_on_tangents(graph)
    # (this includes the splits' own 128x1 copies, which Wgrad reads: they descend from X, so they
    # are neither X nor on a chain computing it)
    read_anyway = {a.name for n in backward for a in n.all_input_nodes if a not in backward}
    nodes = {n.name: n for n in graph.nodes}
    tagged = []
    for split in splits:
        if split.source in read_anyway:
            continue  # backward has X itself (an SDPA output, say): nothing to recompute
        chain = recompute_chain(nodes, split.source, read_anyway)
        if chain:
            prefer_recompute(chain)
            tagged.append(split.source)
    return tagged


def prefer_recompute(nodes) -> None:
    """Tag nodes for min-cut to recompute in backward (a tag set earlier, e.g. by
    torch.utils.checkpoint, is kept)."""
    for node in nodes:
        node.meta.setdefault("recompute", CheckpointPolicy.PREFER_RECOMPUTE)


def min_cut_partition(gm: GraphModule, joint_inputs: Sequence[object], **kwargs: Any):
    """Inductor's min-cut partition, with the project's ops kept from wholesale recomputation under
    torch._functorch.config.activation_memory_budget < 1. Under a budget the partitioner first
    tries min-cut without its recompute allowlist, where only aten's matmuls count as compute
    intensive: the FP8 GEMMs (custom ops) became free to recompute, and a 1B model saved nothing
    and recomputed its whole forward in backward (peak 1.24x BF16's under the same budget, H100,
    benchmarks/RESULTS.md session 18). `is_non_builtin_to_include` bans non-builtin ops as aten.mm
    is banned; the knapsack may still lift a ban where the budget needs it, ranking by FLOPs
    (kernels/ops.py `gemm_blockwise_flops`). The flag covers every custom op of the graph, so a
    model's own custom ops (a flash-attention op, say) are kept from recompute under a budget too,
    where the stock backend may recompute them. Without a budget this flag changes nothing: custom
    ops are outside the allowlist anyway."""
    with functorch_config.patch(is_non_builtin_to_include=True):
        return min_cut_rematerialization_partition(gm, joint_inputs, **kwargs)


class Fp8Partitioner(CustomPartitionerFn):
    """`custom_partitioner_fn`: min-cut partition with the FP8 choices above."""

    # Holds plain values only: Inductor pickles its config, this object included, into its cache
    # keys, so any per-compile state here (a graph name, a recorder) would defeat the caches.
    def __init__(self, recompute_weights: bool, saved_activations_min_bytes: Optional[int],
                 recompute_activations: bool = False):
        self.recompute_weights = recompute_weights
        self.saved_activations_min_bytes = saved_activations_min_bytes  # None: off
        self.recompute_activations = recompute_activations

    def __call__(self, gm: GraphModule, joint_inputs: Sequence[object], **kwargs: Any):
        if self.recompute_weights:
            tag_fp8_weights_for_recompute(gm.graph)
        splits = split_forward_dual_quantizations(gm.graph) if self.recompute_activations else []
        if splits:
            tag_recompute_chains(gm.graph, splits)
        fw, bw = min_cut_partition(gm, joint_inputs, **kwargs)
        # At most two more partitions: first the splits whose inputs min-cut saved only for them
        # get those inputs recomputed (when they are pointwise of what is saved anyway), then any
        # split still costing memory gets its dual quantization back.
        for attempt in range(2):
            costly = splits_costing_memory(bw, splits)
            if not costly:
                break
            saved = {n.name for n in bw.graph.find_nodes(op="placeholder")}
            nodes = {n.name: n for n in gm.graph.nodes}  # the joint graph as the partition left it
            builder, merged = NodeBuilder(gm.graph), []
            for split, only_for_it in costly.items():
                chains = ([recompute_chain(nodes, name, saved - set(only_for_it)) for name in only_for_it]
                          if attempt == 0 else [None])
                if all(c is not None for c in chains):
                    prefer_recompute(n for c in chains for n in c)
                else:
                    merge_split_quantization(builder, nodes, split)
                    merged.append(split)
            splits = [s for s in splits if s not in merged]
            if merged:
                log.info("fp8pass: Wgrad copies of %s saved from forward (making them in backward would "
                         "need more saved bytes than it frees)", ", ".join(s.source for s in merged))
            gm.recompile()
            fw, bw = min_cut_partition(gm, joint_inputs, **kwargs)
        if self.saved_activations_min_bytes is not None:
            changed = store_saved_activations_in_fp8(fw, bw, kwargs["num_fwd_outputs"],
                                                     self.saved_activations_min_bytes)
            if changed:
                log.info("fp8pass: saved in FP8 for backward (1x128 tiles): %s", ", ".join(changed))
        return fw, bw

    def uuid(self):
        # the digest of the backend's source (this file and saved_activations.py included)
        return (f"fp8pass-partition-{source_digest()[:16]}-{self.recompute_weights}-"
                f"{self.saved_activations_min_bytes}-{self.recompute_activations}")
