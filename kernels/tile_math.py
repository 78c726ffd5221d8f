"""Per-tile arithmetic and addressing shared by the quantization kernels: the plain-Triton ones
(triton_quantize.py, triton_swiglu.py) call these as they are, and the sm90 Gluon kernels
(triton_quantize_gluon.py) compile the same functions as Gluon functions (layout-agnostic tl ops
only), so both paths compute the same bits, and the Triton interpreter tests on the CPU check
the helpers the GPU kernels run (tests/triton_interp_checks.py).

Numerics, per tile (see reference.py):
    amax  = max |x| in fp32, NaN if any element of the tile is NaN
    scale = clamp_min(amax, AMAX_EPS) / 448           (IEEE division, round to nearest)
    q     = fp8e4nv(clamp(x / scale, -448, 448))       (IEEE division, RNE cast, NaN kept)

Three details make this bit-identical rather than close:
  * fp32 `/` in Triton lowers to an approximate division on NVIDIA. The scale and x / scale use
    the reciprocal and an FMA correction (see `_scale_and_recip`, `_to_fp8`), which is the
    correctly rounded quotient, as torch's division is.
  * `tl.max` may drop NaN (PTX max.f32 returns the other operand): amax is reduced with a
    NaN-propagating maximum instead. (An integer max of the magnitude bits, NaN-propagating by
    construction and without widening bf16, measured slower for the dual kernel on the H200.)
  * The clamp to +-448 is the saturating cast itself on the GPU (see `_INTERPRET`).

The names keep their leading underscore: they are the kernels package's own, not an API.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .reference import AMAX_EPS, FP8_MAX

_EPS = tl.constexpr(AMAX_EPS)
_FMAX = tl.constexpr(FP8_MAX)
_INF = tl.constexpr(float("inf"))
_R448 = tl.constexpr(float(torch.tensor(1.0 / FP8_MAX, dtype=torch.float32)))  # RN_fp32(1/448)
# Under the interpreter the float -> e4m3 cast neither saturates nor keeps NaN, so the clamp of
# the reference is spelled out there; on the GPU the cast is cvt.rn.satfinite.e4m3x2.f32, which
# rounds to nearest even, saturates finite values and +-inf to +-448 and keeps NaN: exactly
# clamp-then-cast, for one instruction per two elements. (Also, `tl.reduce` with a Python
# combine function is slow in the interpreter, so amax is spelled differently there.)
_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _grouped_tile(t, n_mb, n_kb, GROUP_M: tl.constexpr):
    """(mb, kb) of the t-th program of a 1-D grid over an n_mb x n_kb grid of tiles: GROUP_M rows of
    tiles at a time, down the rows within a group (GROUP_M = 1: along each row of tiles, K fastest).
    Used by the Gluon dual quantizer (compiled there as a Gluon function); checked under the
    interpreter (tests/triton_interp_checks.py)."""
    per_group = GROUP_M * n_kb
    first_mb = (t // per_group) * GROUP_M
    rows = tl.minimum(n_mb - first_mb, GROUP_M)
    r = t % per_group
    return first_mb + r % rows, r // rows


@triton.jit
def _cat3_tile_ptrs(x0_ptr, x1_ptr, x2_ptr, rows, j, kb, KB1, KB2, T, D,
                    s0b, s0t, s0h, s0d, s1b, s1t, s1h, s1d, s2b, s2t, s2h, s2d, HEAD_COLS: tl.constexpr):
    """Pointers to the elements of tile column kb of three [B, T, H_i, D] tensors (any strides) seen
    side by side as one [B*T, sum of H_i*D] matrix: part 0 holds the tile columns below KB1, part 1
    those below KB2, part 2 the rest (a tile never straddles two parts). rows: the tile's row
    indices; j: arange(0, 128), its columns. HEAD_COLS = 128 if D % 128 == 0, else D (a divisor of
    128): runs of HEAD_COLS columns are contiguous in a head, which the compiler can see (j //
    HEAD_COLS, j % HEAD_COLS by a constant), so the loads stay vectorized. Used by the Gluon dual
    quantizer of a fused QKV gradient (compiled there as a Gluon function); checked under the
    interpreter (tests/triton_interp_checks.py)."""
    in1 = kb >= KB1
    in2 = kb >= KB2
    ptr = tl.where(in2, x2_ptr, tl.where(in1, x1_ptr, x0_ptr))
    c0 = (kb - tl.where(in2, KB2, tl.where(in1, KB1, 0))) * 128  # the tile's first column in its part
    sb = tl.where(in2, s2b, tl.where(in1, s1b, s0b)).to(tl.int64)
    st = tl.where(in2, s2t, tl.where(in1, s1t, s0t)).to(tl.int64)
    sh = tl.where(in2, s2h, tl.where(in1, s1h, s0h)).to(tl.int64)
    sd = tl.where(in2, s2d, tl.where(in1, s1d, s0d)).to(tl.int64)
    h0 = c0 // D
    head = h0 + j // HEAD_COLS
    elem = (c0 - h0 * D) + j % HEAD_COLS
    b = rows // T
    row_off = b.to(tl.int64) * sb + (rows - b * T).to(tl.int64) * st
    col_off = head.to(tl.int64) * sh + elem.to(tl.int64) * sd
    return ptr + row_off[:, None] + col_off[None, :]


@triton.jit
def _nanmax(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _amax(x, axis: tl.constexpr):
    """max |x| along axis; NaN if any element is NaN (PTX max.NaN.f32 on the GPU)."""
    if _INTERPRET:
        m = tl.max(tl.abs(x), axis=axis)
        has_nan = tl.max((x != x).to(tl.float32), axis=axis)
        return tl.where(has_nan > 0, has_nan * 0.0 + tl.sum(tl.where(x != x, x, 0.0), axis=axis), m)
    else:
        return tl.reduce(tl.abs(x), axis, _nanmax)


@triton.jit
def _scale_and_recip(amax):
    """scale = clamp_min(amax, eps) / 448 correctly rounded (NaN stays NaN), 1/scale correctly
    rounded (one Newton step on top of div_rn guards against a last-bit error), and the scale
    as the division correction in _to_fp8 uses it."""
    amax_c = tl.where(amax != amax, amax, tl.maximum(amax, _EPS))
    # amax_c / 448 correctly rounded, by the same reciprocal-and-FMA correction as _to_fp8
    # (R448 = RN(1/448)), instead of a div.rn sequence per tile and thread
    s0 = amax_c * _R448
    scale = tl.fma(tl.fma(-s0, _FMAX, amax_c), _R448, s0)
    scale = tl.where(amax_c == _INF, amax_c, scale)  # inf / 448 = inf (the correction gives NaN)
    # An infinite scale (a tile holding +-inf) gives r = 0 and x / inf = x * 0 exactly (0, or
    # NaN for an infinite x); the correction terms must then vanish instead of making inf * 0.
    s_fma = tl.where(scale == _INF, 0.0, scale)
    r = tl.math.div_rn(1.0, scale)
    r = tl.fma(r, tl.fma(-s_fma, r, 1.0), r)
    return scale, r, s_fma


@triton.jit
def _to_fp8(x, scale, r):
    """fp8(clamp(x / scale, -448, 448)) with x / scale correctly rounded, computed as
    q0 = x * r, e = q0 * scale - x, q = q0 - r * e with FMAs (Markstein: with r = RN(1/scale) and
    q0 within an ulp, the residual is exact and q is the correctly rounded quotient): three
    FMA-pipe instructions instead of a div.rn sequence.
    The residual is taken as q0 * scale - x (not x - q0 * scale) so that a zero quotient keeps
    the sign of x in plain IEEE arithmetic: for x = -0, e = -0 * s + 0 = +0 and q = -r * +0 + -0
    = -0; for a finite x in a tile whose scale is inf (r = 0), q = -0 * -x + (x * 0), the sign of
    x. The other order lost it (+0 + -0 = +0) and needed a bit fix-up per element; the negations
    here fold into the FMA operands (SASS: FMUL + 2 FFMA per element, no LOP3)."""
    q0 = x * r
    # `* -1.0`, not unary minus: Triton spells -x as 0 - x, which ptxas cannot fold into the
    # FMA's operand (it differs from a negation at +0) and emits as an FADD per element
    e = tl.fma(q0, scale, x * -1.0)
    q = tl.fma(r * -1.0, e, q0)
    if _INTERPRET:
        c = tl.minimum(tl.maximum(q, -_FMAX), _FMAX)
        q = tl.where(q != q, q, c)
    return q.to(tl.float8e4nv)


# --------------------------------------------------------------------------------------------
# SwiGLU: the values the fused SwiGLU quantizers quantize (triton_swiglu.py)
# --------------------------------------------------------------------------------------------
FORWARD, GRAD_A, GRAD_B = 0, 1, 2  # the fused ops' modes: silu(a) * b, its gradient of a, of b


@triton.jit
def _round(x, dtype: tl.constexpr):
    """fp32 x rounded to dtype, to nearest even. (The interpreter truncates to bf16; the GPU's
    cvt.rn rounds to nearest even, as torch does, so under the interpreter that is spelled out.)"""
    if _INTERPRET:
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            x = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    return x.to(dtype)


@triton.jit
def swiglu_values(a, b):
    """silu(a) * b of two tiles, in their dtype: silu rounded to it, then the product."""
    a32 = a.to(tl.float32)
    silu = _round(a32 / (1.0 + tl.exp(a32 * -1.0)), a.dtype)
    return _round(silu.to(tl.float32) * b.to(tl.float32), a.dtype)


@triton.jit
def swiglu_grad_a_values(g, a, b):
    """grad_a of silu(a) * b for its output's gradient g: g * b * sigmoid(a) * (1 + a * (1 - sigmoid(a)))."""
    a32 = a.to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(a32 * -1.0))
    return _round(g.to(tl.float32) * b.to(tl.float32) * sig * (1.0 + a32 * (1.0 - sig)), a.dtype)


@triton.jit
def swiglu_tile_values(g, a, b, MODE: tl.constexpr):
    """The tile a fused op quantizes: silu(a) * b (MODE 0), its gradient of a (1) or of b (2):
    g * silu(a), silu rounded as in forward, is swiglu_values(a, g)."""
    if MODE == 0:
        return swiglu_values(a, b)
    elif MODE == 1:
        return swiglu_grad_a_values(g, a, b)
    else:
        return swiglu_values(a, g)
