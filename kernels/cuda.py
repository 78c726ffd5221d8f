"""CUDA kernels of the fp8pass ops, and the GEMM dispatcher.

`register()` makes the Triton kernels the CUDA implementations of `torch.ops.fp8pass.*`
(registered on the dispatcher's CUDA key of the custom ops of ops.py: the ops stay opaque nodes
with fake kernels, so torch.compile traces them without a graph break; the CPU path keeps the
torch reference). `import fp8pass.kernels` calls it when Triton imports and torch is a CUDA build.
Importing this module touches no GPU: devices are queried at the first call.

GEMM dispatch: per (M, N, K, scale pairing, out dtype, operand layouts, device), M and K by size
bucket (launch.size_bucket: sequence lengths that vary share a choice), the first call times each
candidate and caches the fastest (candidates within 20% of it are timed again in turns):
  * "triton"  - the plain-Triton kernel (triton_gemm.py), operands read as given;
  * "gluon"   - the Gluon sm90 kernels (triton_gemm_gluon.py: the warp-specialized persistent
                one and the older one, the faster of their configs), which need K-major operands:
                used directly when they are, else after K-major copies (their cost is timed);
  * "cublas"  - cuBLAS blockwise through torch's scaled_mm, with whatever layout copies it
                needs (A row-major, B column-major, MN-major scales), also timed;
  * "cublas_swapped" - for B in 128x1 tiles (Wgrad) only: cuBLAS on the transposed problem
                (B^T @ A^T), its result copied back, timed with the copy.
Candidates within 20% of the fastest are timed again in turns and compared by their median
time, and cuBLAS keeps the choice unless another is 5% faster (see pick_fastest). A candidate is
kept only if its result agrees with the Triton kernel's (calc_diff < 1e-4), so a misread scale
layout can never be picked. FP8PASS_GEMM_BACKEND=triton|gluon|cublas|cublas_swapped
(read at import) forces one.

Launch plans: the ops' CUDA kernels run their checks, the dispatcher or the quantizer's Python
wrapper at the first call per key (shapes, strides, dtypes, alignments) and keep what that call
did as a plan for the later calls with that key: the GEMM's chosen backend (for cuBLAS, torch's
op called directly), an out variant's kernel launches (launch.LaunchPlan, replayed with the new
call's tensors). FP8PASS_LAUNCH_PLANS=0 (read at import) turns them off.
"""

from __future__ import annotations

import functools
import os
import statistics
import threading

import torch

from . import launch, ops, triton_gemm, triton_gemm_gluon
from .reference import TILE, _cdiv

__all__ = ["register", "registered", "gemm_blockwise", "dispatch_choice", "cublas_gemm_blockwise",
           "calc_diff", "clear_cache"]

_REGISTERED = False
_LOCK = threading.Lock()


def registered() -> bool:
    return _REGISTERED


_CUDA_LIB = None  # the torch.library.Library holding the CUDA registrations (kept alive)


def register() -> bool:
    """Register the Triton kernels as the CUDA kernels of torch.ops.fp8pass.*; idempotent.

    Registered straight on the dispatcher's CUDA key, with the AutogradCUDA key a fallthrough,
    rather than through the custom ops' `register_kernel`: the custom-op path wraps every call in
    two Python layers (an autograd wrapper and an aliasing check), ~10 us of host time per call
    measured on a CPU core, and a compiled 1B-parameter step makes 576 of these calls (240 GEMMs,
    336 quantizations) while its default-mode FP8 step took 98 ms for 76 ms of kernels
    (benchmarks/RESULTS.md, session 4). The ops have no autograd formula: the pass emits them into
    graphs autograd has already differentiated, so on CUDA their outputs simply do not require
    grad. The CPU keeps the custom ops' reference kernels, wrappers and checks."""
    global _REGISTERED, _CUDA_LIB
    with _LOCK:
        if _REGISTERED:
            return True
        from . import triton_quantize as tq

        # each quantize op and its out variant (ops.py) run the same wrapper; the out variant
        # passes the buffers it is given (Inductor's) as `out`
        quantizers = {
            "quantize_1x128": tq.quantize_1x128,
            "quantize_128x1": functools.partial(tq.quantize_128x1, layout="transposed"),
            "quantize_1x128_128x1": functools.partial(tq.quantize_1x128_128x1, col_layout="transposed"),
            "quantize_128x128": tq.quantize_128x128,
            "quantize_128x128_transposed": functools.partial(tq.quantize_128x128, layout="transposed"),
        }

        from . import triton_swiglu as tsw

        impls = {"gemm_blockwise": gemm_op, "gemm_blockwise_grouped": grouped_gemm_op}
        for name, quantize in quantizers.items():
            impls[name], impls[ops.OUT_VARIANTS[name]] = op_impls(name, quantize)
        name = "quantize_1x128_128x1_cat3"
        impls[name], impls[ops.OUT_VARIANTS[name]] = op_impls(name, tq.quantize_1x128_128x1_cat3,
                                                              ops.cat3_rows_and_widths, 3)
        for name, n_inputs in (("swiglu_quantize_1x128_128x1", 2), ("swiglu_quantize_1x128", 2),
                               ("swiglu_quantize_128x1", 2),
                               ("swiglu_grad_a_quantize_1x128_128x1", 3), ("swiglu_grad_b_quantize_1x128_128x1", 2)):
            impls[name], impls[ops.OUT_VARIANTS[name]] = op_impls(name, getattr(tsw, name), ops._check_swiglu_2d,
                                                                  n_inputs)
        lib = torch.library.Library("fp8pass", "IMPL")
        for name, fn in impls.items():
            lib.impl(name, fn, "CUDA")
            lib.impl(name, torch.library.fallthrough_kernel, "AutogradCUDA")
        _CUDA_LIB = lib
        _REGISTERED = True
        return True


# FP8PASS_LAUNCH_PLANS=0 (read at import): every call takes the full path (for A/B measurements)
_PLANS = os.environ.get("FP8PASS_LAUNCH_PLANS", "1") != "0"


def gemm_op(a, a_scale, b, b_scale, out_dtype):
    """The CUDA kernel of `fp8pass.gemm_blockwise`: the operand checks and the dispatcher at the
    first call per key (the operands' and scales' shapes, strides and dtypes, the out dtype, the
    device), then the dispatcher's choice as a plan (`gemm_plan`) without either."""
    key = (a.shape, a.stride(), b.shape, b.stride(), a_scale.shape, a_scale.stride(), b_scale.shape,
           b_scale.stride(), a.dtype, b.dtype, out_dtype, a.device)
    plan = _gemm_plans.get(key)
    if plan is not None:
        return plan(a, a_scale, b, b_scale)
    ops.check_gemm_operands(a, a_scale, b, b_scale)
    out = gemm_blockwise(a, a_scale, b, b_scale, out_dtype)
    plan = gemm_plan(a, a_scale, b, b_scale, out_dtype) if _PLANS else None
    if plan is not None:
        _gemm_plans[key] = plan
    return out


def grouped_gemm_op(a, a_scale, b, b_scale, offs, out_dtype):
    """The CUDA kernel of `fp8pass.gemm_blockwise_grouped` (MoE experts): on sm90 the faster of the
    plain-Triton and the warp-specialized Gluon grouped kernels, elsewhere the former
    (triton_gemm_grouped; no cuBLAS path is wired up for grouped GEMMs)."""
    ops.check_grouped_gemm_operands(a, a_scale, b, b_scale, offs)
    from . import triton_gemm_grouped

    return triton_gemm_grouped.gemm_blockwise_grouped(a, a_scale, b, b_scale, offs, out_dtype)


def op_impls(name: str, kernel, check=ops._check_float_input, n_inputs: int = 1):
    """The op's CUDA kernel and its out variant's: the op's input checks, then `kernel`,
    given the out variant's buffers (Inductor's) as `out`. The out variant's first call
    per key (the inputs' shapes, strides, dtypes and alignments; the outputs' alignments)
    records its launches, and later calls with that key replay them (launch.LaunchPlan):
    the checks and the wrapper's arithmetic are the same for the same key."""
    plans: dict = {}

    def functional(*inputs):
        check(name, *inputs)
        return kernel(*inputs)

    def out_variant(*args):
        if not _PLANS:
            check(name, *args[:n_inputs])
            kernel(*args[:n_inputs], out=args[n_inputs:])
            return
        key = _out_variant_key(args, n_inputs)
        plan = plans.get(key)
        if plan is not None and plan(args):
            return
        check(name, *args[:n_inputs])
        if plan is not None:  # recorded before; not to be replayed now (see LaunchPlan)
            kernel(*args[:n_inputs], out=args[n_inputs:])
            return
        with launch.recording() as record:
            kernel(*args[:n_inputs], out=args[n_inputs:])
        plans[key] = launch.plan_from(record, args) or _no_plan

    return functional, out_variant


def _out_variant_key(args, n_inputs: int) -> tuple:
    """What an out variant's wrapper decides from: the current device, each input's shape,
    strides, dtype and 16-byte alignment, and each output buffer's alignment (the wrapper takes
    the buffers' shapes and layouts as the op's contract says and only passes their addresses)."""
    key = [torch._C._cuda_getDevice()]
    for i, t in enumerate(args):
        key.append((t.shape, t.stride(), t.dtype, t.data_ptr() & 15) if i < n_inputs else t.data_ptr() & 15)
    return tuple(key)


def _no_plan(args) -> bool:
    return False


# --------------------------------------------------------------------------------------------
# numerics helper (the DeepGEMM gate)
# --------------------------------------------------------------------------------------------
def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """1 - 2*sum(x*y) / sum(x*x + y*y), in float64 (DeepGEMM's accuracy measure)."""
    x, y = x.double(), y.double()
    denom = (x * x + y * y).sum()
    if denom == 0:
        return 0.0
    return float(1 - 2 * (x * y).sum() / denom)


# --------------------------------------------------------------------------------------------
# cuBLAS blockwise
# --------------------------------------------------------------------------------------------
def _mn_major(scale: torch.Tensor) -> torch.Tensor:
    """[R, C] scale with strides (1, R): 'outer-dim-major' as cuBLAS blockwise wants it."""
    if scale.stride(0) == 1 and (scale.shape[1] <= 1 or scale.stride(1) == scale.shape[0]):
        return scale
    return scale.t().contiguous().t()


_CUBLAS_B1x128_VARIANT: list = []  # which 128x1 b_scale layout this torch accepted
# the layouts of B's 128x1 scale [KB, N] tried for cuBLAS's 1x128 scale of B^T, in this order
_B1x128_LAYOUTS = (lambda s: _mn_major(s.t()), lambda s: s.t().contiguous(), lambda s: s.contiguous())


def scaled_mm(a, b, scale_a, recipe_a, scale_b, recipe_b, out_dtype):
    """F.scaled_mm(a, b, scale_a, recipe_a, scale_b, recipe_b, output_dtype=out_dtype), calling the
    op under it, torch._scaled_mm_v2, directly where present: F.scaled_mm rebuilds its argument
    lists in Python at every call, ~23 us of the ~127 us of host time a cuBLAS GEMM call took in a
    cProfile of the 1B step (240 calls a step; benchmarks/RESULTS.md, session 8)."""
    op = getattr(torch, "_scaled_mm_v2", None)
    if op is None:
        return torch.nn.functional.scaled_mm(a, b, scale_a, recipe_a, scale_b, recipe_b, output_dtype=out_dtype)
    return op(a, b, [scale_a], [recipe_a.value], [], [scale_b], [recipe_b.value], [], None, out_dtype, (), False)


def cublas_gemm_blockwise(a, a_scale, b, b_scale, out_dtype):
    """cuBLAS blockwise FP8 through torch (F.scaled_mm where present, else torch._scaled_mm).

    A must be row-major and B column-major; the 1x128 scale of A is passed MN-major ([M, KB]
    with strides (1, M)); B's 128x128 block scale as [KB, NB] with strides (1, KB); B's 128x1
    scale as cuBLAS's 1x128 scale of B^T, [N, KB] (torch 2.11 wants that shape). Copies are
    made where the given layouts differ (the dispatcher times them)."""
    n = b.shape[1]
    b_block = b_scale.shape[1] != n
    if a.stride(1) != 1:
        a = a.contiguous()
    if b.stride(0) != 1:
        b = b.t().contiguous().t()
    sa = _mn_major(a_scale)
    F = torch.nn.functional
    if not (hasattr(F, "scaled_mm") and hasattr(F, "ScalingType")):
        return torch._scaled_mm(a, b, sa, _mn_major(b_scale) if b_block else b_scale.contiguous(),
                                out_dtype=out_dtype)
    st = F.ScalingType
    if b_block:
        return scaled_mm(a, b, sa, st.BlockWise1x128, _mn_major(b_scale), st.BlockWise128x128, out_dtype)
    order = _CUBLAS_B1x128_VARIANT or list(range(len(_B1x128_LAYOUTS)))
    err = None
    for i in order:
        try:
            out = scaled_mm(a, b, sa, st.BlockWise1x128, _B1x128_LAYOUTS[i](b_scale), st.BlockWise1x128, out_dtype)
        except (ValueError, RuntimeError) as exc:
            err = exc
            continue
        if not _CUBLAS_B1x128_VARIANT:
            _CUBLAS_B1x128_VARIANT.append(i)
        return out
    raise err


def cublas_gemm_blockwise_swapped(a, a_scale, b, b_scale, out_dtype):
    """A @ B for two 1x128-scaled operands (B in 128x1 tiles: Wgrad) computed as (B^T @ A^T)^T
    through cuBLAS, then copied back to row-major [M, N] (2*M*N elements of extra traffic).
    cuBLAS picks its kernel by the problem's shape, and for this pairing it runs ~20% below its
    Fprop speed on an H200 (benchmarks/RESULTS.md): the transposed problem is one more candidate
    for the dispatcher to time. The same products per K block, so the same numerics up to the
    order of the FP32 sums."""
    if not swapped_supported(a):
        raise ValueError(f"cublas_gemm_blockwise_swapped: M={a.shape[0]} must be a multiple of 16 (it becomes "
                         "cuBLAS's N); use cublas_gemm_blockwise or the Triton GEMM for this shape")
    return cublas_gemm_blockwise(*swapped_operands(a, a_scale, b, b_scale), out_dtype).t().contiguous()


def swapped_supported(a) -> bool:
    """cuBLAS FP8 needs the output's inner dim a multiple of 16: in the swapped problem that is M."""
    return a.shape[0] % 16 == 0


def swapped_operands(a, a_scale, b, b_scale):
    """The operands of B^T @ A^T = (A @ B)^T: B^T [N, K] in 1x128 tiles with its scale [N, KB], and
    A^T [K, M] in 128x1 tiles with its scale [KB, M]."""
    return b.t(), b_scale.t(), a.t(), a_scale.t()


# --------------------------------------------------------------------------------------------
# dispatcher
# --------------------------------------------------------------------------------------------
_choice: dict = {}
_choice_info: dict = {}


def clear_cache() -> None:
    _choice.clear()
    _choice_info.clear()
    _gemm_plans.clear()


def _key(a, a_scale, b, b_scale, out_dtype):
    """The choice's cache key: M and K (one of them the token count: Fprop/Dgrad's M, Wgrad's K)
    by size bucket (launch.size_bucket), N, the pairing, out dtype, layouts and device."""
    m, k = a.shape
    n = b.shape[1]
    return (launch.size_bucket(m), n, launch.size_bucket(k), b_scale.shape[1] != n, out_dtype, a.stride(1) == 1,
            b.stride(0) == 1, a_scale.stride(0) == 1, b_scale.stride(0) == 1, a.device.index)


def _cached_choice(a, a_scale, b, b_scale, out_dtype) -> tuple:
    """(key, the cached backend or None). A backend chosen for another size of the same bucket that
    cannot take these operands (the Gluon kernels' K-major copies need 16-byte rows; the swapped
    cuBLAS problem its own alignment) does not count: these sizes get their own key and choice."""
    key = _key(a, a_scale, b, b_scale, out_dtype)
    name = _choice.get(key)
    if name is not None and name not in _candidates(a, b, b_scale):
        key = (*key, tuple(a.shape), tuple(b.shape))
        name = _choice.get(key)
    return key, name


def _k_major_copies(a, b):
    if a.stride(1) != 1:
        a = a.contiguous()
    if b.stride(0) != 1:
        b = b.t().contiguous().t()
    return a, b


def _run(name, a, a_scale, b, b_scale, out_dtype):
    if name == "triton":
        return triton_gemm.gemm_blockwise(a, a_scale, b, b_scale, out_dtype)
    if name == "gluon":
        a2, b2 = _k_major_copies(a, b)
        return triton_gemm_gluon.gemm_blockwise(a2, a_scale, b2, b_scale, out_dtype)
    if name == "cublas":
        return cublas_gemm_blockwise(a, a_scale, b, b_scale, out_dtype)
    if name == "cublas_swapped":
        return cublas_gemm_blockwise_swapped(a, a_scale, b, b_scale, out_dtype)
    raise ValueError(f"unknown GEMM backend {name!r}")


def _candidates(a, b, b_scale):
    names = ["triton"]
    a2_ok = (a.shape[1] * a.element_size()) % 16 == 0  # K-major copy rows must be 16-byte aligned
    if triton_gemm_gluon.available() and a2_ok and (b.shape[1] > 0):
        names.append("gluon")
    names.append("cublas")
    # B in 128x1 tiles (Wgrad): the transposed problem too, where cuBLAS takes its N (our M)
    if b_scale.shape[1] == b.shape[1] and swapped_supported(a):
        names.append("cublas_swapped")
    return names


def dispatch_choice(a, a_scale, b, b_scale, out_dtype):
    """The cached backend for these operands, or None if not yet measured."""
    return _cached_choice(a, a_scale, b, b_scale, out_dtype)[1]


# Candidates timed within this fraction of the fastest are timed again, in turns, and judged by
# the median of their timings: a single timing per candidate let a run pick the Triton GEMM over
# cuBLAS for one 1B shape (session 6, 1.56 ms a step lost) when the two were close, and in session
# 11 one timing of the warp-specialized Gluon kernel came out 14% ahead of cuBLAS where every
# rotated-operand benchmark of the same shape had it 6% behind (the Linear step measured 6.257 ms
# with it on Fprop, 5.967 ms in a later run without).
_CLOSE = 0.20
_RETIMES = 4
# Another backend replaces cuBLAS only if its median GPU time is at least this much lower: the
# timings see the GPU only, while a Triton/Gluon launch (Python-side descriptors and launcher)
# costs more host time than cuBLAS's and the 1B step is host-bound (57-78 ms of host time a step).
# In session 11 the warp-specialized kernel won two 1B shapes by 1.5% and 3.4% of GPU time; that
# step ran at 80.16 ms, but runs with cuBLAS everywhere took 75.78 and 92.04 ms on another machine,
# so the step's own spread hides the effect either way: the margin is a tie-break, not a measured cost.
_MARGIN = 0.05


def pick_fastest(timed: dict, retime) -> str:
    """The fastest of {name: ms}; names within _CLOSE of it get _RETIMES more timings each
    (`retime(name) -> ms`), alternating, and are compared by the median of all their timings (one
    outlier, fast or slow, does not decide). cuBLAS, the baseline the dispatcher must never fall
    below, keeps the choice unless another is faster by more than _MARGIN."""
    best = min(timed, key=timed.get)
    close = [n for n in timed if timed[n] <= timed[best] * (1 + _CLOSE)]
    if len(close) > 1:
        samples = {n: [timed[n]] for n in close}
        for _ in range(_RETIMES):
            for name in close:
                samples[name].append(retime(name))
        for name in close:
            timed[name] = statistics.median(samples[name])
    best = min(close, key=lambda n: (timed[n], n != "cublas"))
    if "cublas" in close and timed[best] > timed["cublas"] * (1 - _MARGIN):
        return "cublas"
    return best


def _measure(a, a_scale, b, b_scale, out_dtype, key):
    import triton.testing

    def time_ms(name):
        return triton.testing.do_bench(lambda: _run(name, a, a_scale, b, b_scale, out_dtype),
                                       warmup=10, rep=40, return_mode="median")

    ref = _run("triton", a, a_scale, b, b_scale, out_dtype)
    results = {}
    for name in _candidates(a, b, b_scale):
        try:
            out = _run(name, a, a_scale, b, b_scale, out_dtype)
            if name != "triton":
                diff = calc_diff(out.float(), ref.float())
                if not (diff < 1e-4):
                    results[name] = f"rejected: calc_diff {diff:.3g} vs the Triton kernel"
                    continue
            results[name] = time_ms(name)
        except Exception as exc:  # a backend that cannot take these operands is skipped
            results[name] = f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    timed = {k: v for k, v in results.items() if isinstance(v, float)}
    best = pick_fastest(timed, time_ms) if timed else "triton"
    results.update(timed)
    _choice[key] = best
    _choice_info[key] = results
    return best


_FORCED = os.environ.get("FP8PASS_GEMM_BACKEND", "auto")


def gemm_blockwise(a, a_scale, b, b_scale, out_dtype):
    if _FORCED != "auto":
        return _run(_FORCED, a, a_scale, b, b_scale, out_dtype)
    key, name = _cached_choice(a, a_scale, b, b_scale, out_dtype)
    if name is None:
        if torch.cuda.is_current_stream_capturing():
            cfg = triton_gemm.GEMM_CONFIGS[0]
            return triton_gemm.gemm_blockwise(a, a_scale, b, b_scale, out_dtype,
                                              config={**cfg.kwargs, "num_warps": cfg.num_warps,
                                                      "num_stages": cfg.num_stages})
        name = _measure(a, a_scale, b, b_scale, out_dtype, key)
    return _run(name, a, a_scale, b, b_scale, out_dtype)


# (shapes, strides, dtypes of the operands and scales, out dtype, device) -> a callable running the
# dispatcher's choice for them without its checks and key (`gemm_op`)
_gemm_plans: dict = {}


def gemm_plan(a, a_scale, b, b_scale, out_dtype):
    """The dispatcher's choice for these operands as a callable `plan(a, a_scale, b, b_scale)`
    for later calls with the same shapes, strides and dtypes (None until a choice is cached).
    cuBLAS with operands already in its layouts calls torch's op directly. The checks, the
    dispatcher's key and the layout checks of cublas_gemm_blockwise took ~6 us of Python a call
    on the dev machine's CPU (2.2 us with the plan, torch's op stubbed out); on the H200 machine's
    host a GEMM through the registered op took 56.0 us with the plan, where torch._scaled_mm_v2
    alone took 45.5 (benchmarks/RESULTS.md, session 13)."""
    name = _FORCED if _FORCED != "auto" else _cached_choice(a, a_scale, b, b_scale, out_dtype)[1]
    if name is None:
        return None
    op = getattr(torch, "_scaled_mm_v2", None)
    F = torch.nn.functional
    b_block = b_scale.shape[1] != b.shape[1]
    direct = (name == "cublas" and op is not None and hasattr(F, "ScalingType") and a.stride(1) == 1
              and b.stride(0) == 1 and _mn_major(a_scale) is a_scale
              and (not b_block or _mn_major(b_scale) is b_scale) and (b_block or _CUBLAS_B1x128_VARIANT))
    if not direct:
        return lambda a, a_scale, b, b_scale: _run(name, a, a_scale, b, b_scale, out_dtype)
    st = F.ScalingType
    recipe_a = [st.BlockWise1x128.value]
    recipe_b = [(st.BlockWise128x128 if b_block else st.BlockWise1x128).value]
    if b_block:
        return lambda a, a_scale, b, b_scale: op(a, b, [a_scale], recipe_a, [], [b_scale], recipe_b, [], None,
                                                 out_dtype, (), False)
    b_scale_layout = _B1x128_LAYOUTS[_CUBLAS_B1x128_VARIANT[0]]
    return lambda a, a_scale, b, b_scale: op(a, b, [a_scale], recipe_a, [], [b_scale_layout(b_scale)], recipe_b, [],
                                             None, out_dtype, (), False)


def dispatch_report() -> dict:
    """{key: {backend: ms or reason}} for every measured key (for benchmarks and explain())."""
    return {k: dict(v) for k, v in _choice_info.items()}
