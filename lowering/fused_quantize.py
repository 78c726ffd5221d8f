"""Quantization fused into the kernels that produce its input.

The pass emits `fp8pass.quantize_*` ops on the joint graph: readable, and what the partitioner
needs to see to save FP8 copies for backward. Left as they are, each is a separate kernel that
reads its input back from memory after the producer (RMSNorm, SiLU*mul, a residual add, a
backward kernel) wrote it. After partitioning, this pass replaces each activation/gradient
quantize op by the same arithmetic as plain aten ops (views, abs, amax, a division, a clamp and
the E4M3 cast: kernels/reference.py's numerics, traced with Inductor's decompositions). Inductor
then inlines the producer's pointwise math into the quantization kernels, so the high-precision
tensor never goes to memory when only the GEMMs need it.

Weights (`quantize_128x128`) are left as ops: they come straight from a parameter, with no
producer kernel to fuse into.

Division: FP32 `x / y` in Triton is an approximate division on NVIDIA; the numerics ask for the
correctly rounded one (what eager torch and the CUDA kernels compute), so the backend turns on
Inductor's eager division rounding (`div_rn`) while this pass is in use (`division_rounding_patch`;
it applies to every FP32 division of the graph, not only these). Known gap: off the CPU, Inductor
lowers a division by a constant (the scale's amax / 448) to a multiplication by its reciprocal,
which that patch does not reach, so on CUDA some scales are one ulp off the reference
(tests/test_fusion.py, xfail on CUDA).
"""

from __future__ import annotations

import contextlib
import operator

import torch
import torch.nn.functional as F
from torch._guards import detect_fake_mode
from torch.fx import Graph, Node
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from fp8pass.kernels.ops import op_name
from fp8pass.kernels.reference import TILE, _cast_to_fp8, _scale_from_amax
from fp8pass.rewrite import FP8_META_KEY

fp8_ops = torch.ops.fp8pass


def _quantize_1x128(x: torch.Tensor):
    """reference.quantize_1x128 for a last dim that is a multiple of 128 (no padding)."""
    tiles = x.float().reshape(*x.shape[:-1], x.shape[-1] // TILE, TILE)
    scale = _scale_from_amax(tiles.abs().amax(dim=-1))
    # contiguous: a strided input must not give the GEMM a strided operand (the op's contract);
    # the scales MN-major, as the op returns them (ops.py)
    q = _cast_to_fp8(tiles / scale.unsqueeze(-1)).reshape(x.shape).contiguous()
    return q, scale.reshape(-1, scale.shape[-1]).t().contiguous().t().view(scale.shape)


def _quantize_128x1_transposed(x: torch.Tensor):
    """ops.quantize_128x1: 128x1 tiles of x[M, K], stored transposed (q_t[K, M], s_t[K, M/128]).

    M (tokens) may be symbolic and have a tail: it is padded with zeros (which leave every amax
    unchanged) by a pad whose size is itself symbolic, so no guard on M % 128 is added."""
    m, k = x.shape
    padded = -(-m // TILE) * TILE
    xf = x.float()
    if not (isinstance(m, int) and m % TILE == 0):
        xf = F.pad(xf, (0, 0, 0, padded - m))
    tiles = xf.reshape(padded // TILE, TILE, k)
    scale = _scale_from_amax(tiles.abs().amax(dim=1))
    q = _cast_to_fp8(tiles / scale.unsqueeze(1)).reshape(padded, k)[:m]
    return q.t().contiguous(), scale.t()  # scale [M/128, K] contiguous: its .T is MN-major


def _quantize_1x128_128x1(x: torch.Tensor):
    return (*_quantize_1x128(x), *_quantize_128x1_transposed(x))


def _quantize_1x128_fused_128x1_op(x: torch.Tensor):
    return (*_quantize_1x128(x), *fp8_ops.quantize_128x1(x))


# By op name: the OpOverload objects under torch.ops.fp8pass can be rebuilt during a process
# (kernels/ops.py), so a dict keyed by the objects of import time could stop matching later graphs.
_DECOMPOSITIONS = {
    "quantize_1x128": _quantize_1x128,
    "quantize_128x1": _quantize_128x1_transposed,
    "quantize_1x128_128x1": _quantize_1x128_128x1,
}
_CPU_BF16_DECOMPOSITIONS = {  # the 128x1 quantizations stay ops there (below)
    "quantize_1x128": _quantize_1x128,
    "quantize_1x128_128x1": _quantize_1x128_fused_128x1_op,
}


def _cpu_miscompiles_128x1(val: torch.Tensor) -> bool:
    # Inductor's C++ backend (torch 2.13) miscompiles a kernel holding two or more 128x1
    # quantizations of bf16/fp16 inputs (the transposed-tile loop writes wrong FP8 values; the
    # scales are right), and the scheduler fuses such quantizations freely. On the CPU those stay
    # ops; fp32 inputs and the Triton backend are unaffected (tests/test_fusion.py checks both).
    return val.device.type == "cpu" and val.dtype != torch.float32


def _decomposition(node: Node):
    """The aten-level replacement of a quantize node, or None to keep the op."""
    name = op_name(node.target) if node.op == "call_function" else None
    if name not in _DECOMPOSITIONS:
        return None
    if not all(u.op == "call_function" and u.target is operator.getitem for u in node.users):
        return None
    val = node.args[0].meta.get("val") if isinstance(node.args[0], Node) else None
    # A K tail (never produced by the pass, whose sites need K % 128 == 0) keeps the op.
    if not (isinstance(val, torch.Tensor) and statically_known_true(val.shape[-1] % TILE == 0)):
        return None
    if _cpu_miscompiles_128x1(val):
        return _CPU_BF16_DECOMPOSITIONS.get(name)
    return _DECOMPOSITIONS[name]


def _trace(fn, *examples: torch.Tensor) -> torch.fx.GraphModule:
    from torch._inductor.decomposition import select_decomp_table

    return make_fx(fn, decomposition_table=select_decomp_table())(*examples)


def inline_traced(graph: Graph, node: Node, fn, fake_mode) -> None:
    """Replace `node` by the aten ops of fn(*its tensor args), traced with Inductor's decompositions
    on the args' fake values; its users (getitems for an op with several outputs) are rewired."""
    args = list(node.args)
    with fake_mode if fake_mode is not None else contextlib.nullcontext():
        traced = _trace(fn, *(a.meta["val"] for a in args))
    env: dict[Node, Node] = {}
    placeholders = iter(args)
    results = None
    with graph.inserting_before(node):
        for t in traced.graph.nodes:
            if t.op == "placeholder":
                env[t] = next(placeholders)
            elif t.op == "output":
                results = t.args[0]
            else:
                new = graph.node_copy(t, lambda a: env[a])
                for key in ("stack_trace", "nn_module_stack", "seq_nr", FP8_META_KEY):
                    if key in node.meta:
                        new.meta[key] = node.meta[key]
                env[t] = new
    if isinstance(results, (tuple, list)):
        for user in list(node.users):
            user.replace_all_uses_with(env[results[user.args[1]]])
            graph.erase_node(user)
    else:
        node.replace_all_uses_with(env[results])
    graph.erase_node(node)


def fuse_quantize_ops(graph: Graph) -> int:
    """Replace each activation/gradient quantize op in a partitioned graph by aten ops; returns
    how many were replaced."""
    nodes = [(n, fn) for n in graph.nodes if (fn := _decomposition(n)) is not None]
    if not nodes:
        return 0
    fake_mode = detect_fake_mode([n.args[0].meta["val"] for n, _ in nodes])
    for node, fn in nodes:
        inline_traced(graph, node, fn, fake_mode)
    graph.lint()
    return len(nodes)


def division_rounding_patch() -> dict:
    """Inductor config patch for correctly rounded FP32 division in Triton (renamed across torch
    versions: `emulate_divison_rounding` up to 2.11-ish, `eager_numerics.division_rounding` later)."""
    import torch._inductor.config as inductor_config

    if hasattr(inductor_config, "eager_numerics") and hasattr(inductor_config.eager_numerics, "division_rounding"):
        return {"eager_numerics.division_rounding": True}
    if hasattr(inductor_config, "emulate_divison_rounding"):
        return {"emulate_divison_rounding": True}
    return {}
