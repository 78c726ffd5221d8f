"""The partition of the FP8 joint graph into forward and backward: what crosses between them.

Inductor's min-cut partition decides what the forward saves for backward. Two FP8 choices are
made around it:
  * before it, the FP8 copies of weights (quantize_128x128 of a parameter, and the K-major copy
    Dgrad reads, quantize_128x128_transposed) are tagged to be recomputed in backward instead of
    saved: a parameter is alive in backward anyway, so saving its FP8 copy would hold N*K more
    bytes per weight through the whole step, while quantizing it again costs one pass over the
    weight (`recompute_fp8_weights`);
  * after it, large saved activation inputs are stored in FP8 (saved_activations.py).
"""

from __future__ import annotations

import logging
import operator
from typing import Any, Optional, Sequence

import torch
from torch._functorch.partitioners import min_cut_rematerialization_partition
from torch._inductor.custom_graph_pass import CustomPartitionerFn
from torch.fx import GraphModule, Node
from torch.utils.checkpoint import CheckpointPolicy

from fp8pass.sites import strip_to_placeholder

from .saved_activations import store_saved_activations_in_fp8

aten = torch.ops.aten
log = logging.getLogger("fp8pass")

# What lies between a weight's FP8 copy and the GEMMs reading it: tuple items, transposes, and
# the contiguous copy that makes Dgrad's operand K-major.
_WEIGHT_COPY_USERS = (operator.getitem, aten.permute.default, aten.t.default, aten.clone.default)


def tag_fp8_weights_for_recompute(graph: torch.fx.Graph) -> list[Node]:
    """Mark each parameter's FP8 copies (and their transposes/K-major copy) PREFER_RECOMPUTE, so
    the min-cut partition re-quantizes the weight in backward rather than saving the copy. Nodes
    that already carry a tag (inside torch.utils.checkpoint regions) keep it. Returns the tagged
    nodes."""
    targets = (torch.ops.fp8pass.quantize_128x128.default, torch.ops.fp8pass.quantize_128x128_transposed.default)
    tagged = []
    for node in graph.find_nodes(op="call_function", target=targets):
        source, _ = strip_to_placeholder(node.args[0])
        if source is None or source.name.startswith("tangents") or "recompute" in node.meta:
            continue
        stack = [node]
        while stack:
            cur = stack.pop()
            cur.meta["recompute"] = CheckpointPolicy.PREFER_RECOMPUTE
            tagged.append(cur)
            stack += [u for u in cur.users if u.op == "call_function" and u.target in _WEIGHT_COPY_USERS
                      and "recompute" not in u.meta]
    return tagged


class Fp8Partitioner(CustomPartitionerFn):
    """`custom_partitioner_fn`: min-cut partition with the FP8 choices above."""

    # Holds plain values only: Inductor pickles its config, this object included, into its cache
    # keys, so any per-compile state here (a graph name, a recorder) would defeat the caches.
    def __init__(self, recompute_weights: bool, saved_activations_min_bytes: Optional[int]):
        self.recompute_weights = recompute_weights
        self.saved_activations_min_bytes = saved_activations_min_bytes  # None: off

    def __call__(self, gm: GraphModule, joint_inputs: Sequence[object], **kwargs: Any):
        if self.recompute_weights:
            tag_fp8_weights_for_recompute(gm.graph)
        fw, bw = min_cut_rematerialization_partition(gm, joint_inputs, **kwargs)
        if self.saved_activations_min_bytes is not None:
            changed = store_saved_activations_in_fp8(fw, bw, kwargs["num_fwd_outputs"],
                                                     self.saved_activations_min_bytes)
            if changed:
                log.info("fp8pass: saved in FP8 for backward (1x128 tiles): %s", ", ".join(changed))
        return fw, bw

    def uuid(self):
        # the backend's digest of the pass's source (this file and saved_activations.py included),
        # computed once per process instead of re-reading the files at every compile; imported
        # here because backend.py imports this module
        from .backend import _source_digest

        return f"fp8pass-partition-{_source_digest()[:16]}-{self.recompute_weights}-{self.saved_activations_min_bytes}"
