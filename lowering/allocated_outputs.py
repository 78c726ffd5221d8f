"""Quantization outputs allocated by Inductor instead of by the ops.

A functional `fp8pass.quantize_*` op allocates its two or four outputs in Python on every call,
and Inductor then unpacks and checks each of them (a getitem, a size and an alignment assert per
output): host work repeated ~300 times in a 1B-parameter train step, whose host time per step
measured 61-78 ms on an H200 against BF16's 18-21 ms, as long as its ~68 ms of kernels in some
runs (benchmarks/RESULTS.md, session 9, with what this change measured: the step 74.39 / 74.86 ms
with it against 75.11 / 82.10 ms without in two runs; the host's time per step moved as much
between runs of the same code as between the two).

So, after partitioning, `mark_quantize_ops` marks each such op, and the Inductor lowering
registered here turns a marked op into its out variant (kernels/ops.py `out_variant`) on buffers
that Inductor allocates in its generated code (`empty_strided_*`, or a buffer freed earlier in the
graph, reused):

    buf3 = empty_strided_cuda(...)   # x4
    torch.ops.fp8pass.quantize_1x128_128x1_out.default(buf2, buf3, buf4, buf5, buf6)

The buffers are made in the lowering, after the op's input is realized: created as graph nodes
before the op, they were allocated ahead of the kernel that computes the input whenever Inductor
realized that input late (a SwiGLU backward kernel writing two gradients), holding them beside
the tensors that kernel frees: +462 MiB at the Llama block's peak. The numbers are the same: the
out variants run the same kernels. Symbolic sizes (dynamic shapes) become the buffers' symbolic
sizes (tested on the CPU; not yet run on a GPU). Unmarked ops (`inductor_buffers=False`, or a
plain `backend="inductor"` compile of the ops) lower as Inductor's usual fallback call.
"""

from __future__ import annotations

import torch
from torch.fx import Graph

from fp8pass.kernels.ops import OUT_VARIANTS, out_variant

MARK = "fp8pass_inductor_buffers"


def mark_quantize_ops(graph: Graph) -> int:
    """Mark each quantization for the lowering below (its outputs' shapes and strides, symbolic
    ones included, are read from the node's fake values). Returns how many were marked."""
    marked = 0
    for node in graph.nodes:
        if node.op != "call_function" or out_variant(node.target) is None:
            continue
        vals = node.meta.get("val")
        if isinstance(vals, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in vals):
            ensure_lowering(node.target)
            node.meta[MARK] = True
            marked += 1
    return marked


def _lowering(functional):
    from torch._inductor import lowering as L
    from torch._inductor.utils import convert_shape_to_inductor
    from torch._inductor.virtualized import V

    fallback = L.fallback_handler(functional, add_to_fallback_set=False)
    write_into = L.fallback_handler(out_variant(functional), add_to_fallback_set=False)

    def lower(*inputs):
        node = V.graph.current_node
        if node is None or not node.meta.get(MARK):
            return fallback(*inputs)
        for x in inputs:  # the inputs' kernels first: the buffers are allocated after them
            x.realize()
        buffers = [L.empty_strided(convert_shape_to_inductor(v.shape), convert_shape_to_inductor(v.stride()),
                                   dtype=v.dtype, device=v.device) for v in node.meta["val"]]
        write_into(*inputs, *buffers)
        return tuple(buffers)

    lower.fp8pass_out_lowering = True
    return lower


def ensure_lowering(functional) -> None:
    """Register the lowering above for this op object unless it already has it. Inductor keys its
    lowerings by OpOverload object, and those under torch.ops.fp8pass can be rebuilt during a
    process (kernels/ops.py): checked for each marked op, not only at import."""
    from torch._inductor import lowering as L

    if not getattr(L.lowerings.get(functional), "fp8pass_out_lowering", False):
        L.register_lowering(functional, type_promotion_kind=None)(_lowering(functional))


for _name in OUT_VARIANTS:
    ensure_lowering(getattr(torch.ops.fp8pass, _name).default)
