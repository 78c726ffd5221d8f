"""Quantization outputs allocated by Inductor instead of by the ops.

A functional `fp8pass.quantize_*` op allocates its two or four outputs in Python on every call,
and Inductor then unpacks and checks each of them (a getitem, a size and an alignment assert per
output): host work repeated ~300 times in a 1B-parameter train step, whose host time per step
measured 61-78 ms on an H200 against BF16's 18-21 ms, as long as its ~68 ms of kernels in some
runs (benchmarks/RESULTS.md, session 9, with what this change measured: the step 74.39 / 74.86 ms
with it against 75.11 / 82.10 ms without in two runs; the host's time per step moved as much
between runs of the same code as between the two).

So, after partitioning, `mark_quantize_ops` marks each such op whose output shapes are static,
and the Inductor lowering registered here turns a marked op into its out variant (kernels/ops.py
`OUT_VARIANTS`) on buffers that Inductor allocates in its generated code (`empty_strided_*`, or a
buffer freed earlier in the graph, reused):

    buf3 = empty_strided_cuda(...)   # x4
    torch.ops.fp8pass.quantize_1x128_128x1_out.default(buf2, buf3, buf4, buf5, buf6)

The buffers are made in the lowering, after the op's input is realized: created as graph nodes
before the op, they were allocated ahead of the kernel that computes the input whenever Inductor
realized that input late (a SwiGLU backward kernel writing two gradients), holding them beside
the tensors that kernel frees: +462 MiB at the Llama block's peak. The numbers are the same: the
out variants run the same kernels. Unmarked ops (symbolic shapes, `inductor_buffers=False`, or a
plain `backend="inductor"` compile of the ops) lower as Inductor's usual fallback call.
"""

from __future__ import annotations

import torch
from torch.fx import Graph

from fp8pass.kernels.ops import OUT_VARIANTS

MARK = "fp8pass_inductor_buffers"


def _static(t) -> bool:
    return isinstance(t, torch.Tensor) and all(isinstance(v, int) for v in (*t.shape, *t.stride()))


def mark_quantize_ops(graph: Graph) -> int:
    """Mark each quantization whose outputs all have static shapes and strides for the lowering
    below. Returns how many were marked."""
    marked = 0
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in OUT_VARIANTS:
            continue
        vals = node.meta.get("val")
        if isinstance(vals, (tuple, list)) and all(_static(v) for v in vals):
            node.meta[MARK] = True
            marked += 1
    return marked


def _register_lowerings() -> None:
    from torch._inductor import lowering as L
    from torch._inductor.virtualized import V

    for functional, out_op in OUT_VARIANTS.items():
        fallback = L.fallback_handler(functional, add_to_fallback_set=False)
        write_into = L.fallback_handler(out_op, add_to_fallback_set=False)

        def lower(x, fallback=fallback, write_into=write_into):
            node = V.graph.current_node
            if node is None or not node.meta.get(MARK):
                return fallback(x)
            x.realize()  # the input's kernel first: the buffers are allocated after it
            buffers = [L.empty_strided(list(v.shape), list(v.stride()), dtype=v.dtype, device=v.device)
                       for v in node.meta["val"]]
            write_into(x, *buffers)
            return tuple(buffers)

        L.register_lowering(functional, type_promotion_kind=None)(lower)


_register_lowerings()
