"""Triton quantization kernels (E4M3, fine-grained scales), bit-identical to `reference.py`; the
per-tile arithmetic (amax, scale, the correctly rounded FP8 cast) is tile_math.py's.

Kernels (all read the input through its strides, with no copy; tails are masked):
    quantize_1x128(x[..., K])          rows of any rank (leading dims folded when their strides
                                       allow, else up to two leading dims addressed by stride)
    quantize_128x1(x[M, K])            optionally also/only writing the FP8 copy transposed
    quantize_1x128_128x1(x[M, K])      one read from DRAM, both copies (the 128x1 pass re-reads the
                                       block from L2: see _quant_col_tiles_kernel)
    quantize_1x128_128x1_cat3(x0, x1, x2)  the same of three [B, T, H, D] parts side by side (a
                                       fused QKV gradient) without concatenating them (sm90 only)
    quantize_128x128(w[R, C])          optionally also writing the transposed FP8 copy, or only it
                                       (layout="transposed", the op quantize_128x128_transposed)
The transposed outputs are an addition to the contract: the Wgrad/Dgrad GEMM operands in
K-major storage, which the tensor cores want for FP8 (see triton_gemm.py). On sm90 the dual and
128x1 quantizations in the transposed layout (the ops' layout) run the Gluon kernel of
triton_quantize_gluon.py, with the same helpers (tile_math.py); the kernels here are their fallback and
what the Triton interpreter tests on the CPU. Every kernel is started through launch.FastLauncher.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .launch import FastLauncher
from .ops import cat3_input, cat3_rows_and_widths
from .reference import FP8_DTYPE, TILE, _cdiv, empty_mn_major, new_dual_outputs
from .tile_math import _amax, _nanmax, _scale_and_recip, _to_fp8

__all__ = [
    "quantize_1x128",
    "quantize_128x1",
    "quantize_1x128_128x1",
    "quantize_1x128_128x1_cat3",
    "quantize_128x128",
]


# --------------------------------------------------------------------------------------------
# 1x128 tiles along the last dim
# --------------------------------------------------------------------------------------------
@triton.jit
def _quant_1x128_kernel(
    x_ptr, q_ptr, s_ptr,
    R, D1, K,
    sx0, sx1, sxk,
    BLOCK_R: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    pid_r = tl.program_id(0)
    kb = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = kb * 128 + tl.arange(0, 128)
    r0 = rows // D1
    r1 = rows - r0 * D1
    row_off = r0.to(tl.int64) * sx0 + r1.to(tl.int64) * sx1
    rmask = rows < R
    if EVEN_K:
        mask = rmask[:, None]
    else:
        mask = rmask[:, None] & (cols < K)[None, :]
    x = tl.load(x_ptr + row_off[:, None] + cols[None, :].to(tl.int64) * sxk, mask=mask, other=0.0).to(tl.float32)
    scale, r, sf = _scale_and_recip(_amax(x, 1))
    q = _to_fp8(x, sf[:, None], r[:, None])
    out_off = rows.to(tl.int64)[:, None] * K + cols[None, :]
    tl.store(q_ptr + out_off, q, mask=mask)
    tl.store(s_ptr + kb.to(tl.int64) * R + rows, scale, mask=rmask)  # MN-major: [KB, R] storage


_launch_1x128 = FastLauncher(_quant_1x128_kernel)


def _fold_leading(x: torch.Tensor):
    """Fold the leading dims of x (all but the last) into at most two strided dims.

    Returns (D0, D1, s0, s1) with row r -> (r // D1) * s0 + (r % D1) * s1, or None if more than
    two dims remain after merging the ones whose strides allow it."""
    if x.dim() == 2:  # the common case, without the general loop (a host cost paid per call)
        return 1, x.shape[0], 0, x.stride(0)
    dims = [(s, st) for s, st in zip(x.shape[:-1], x.stride()[:-1]) if s != 1]
    merged: list[list[int]] = []
    for size, stride in dims:
        if merged and merged[-1][1] == stride * size:
            merged[-1][0] *= size
            merged[-1][1] = stride
        else:
            merged.append([size, stride])
    if len(merged) == 0:
        return 1, 1, 0, 0
    if len(merged) == 1:
        return 1, merged[0][0], 0, merged[0][1]
    if len(merged) == 2:
        return merged[0][0], merged[1][0], merged[0][1], merged[1][1]
    return None


_BLOCK_R_1x128 = int(os.environ.get("FP8PASS_Q1X128_BLOCK_R", "32"))
_WARPS_1x128 = int(os.environ.get("FP8PASS_Q1X128_WARPS", "4"))


def quantize_1x128(x: torch.Tensor, *, out=None) -> tuple[torch.Tensor, torch.Tensor]:
    """q[..., K] (contiguous), scale[..., ceil(K/128)] (MN-major: rows stride 1, see ops.py).

    out: (q, scale) to write instead of new tensors, in exactly these shapes and layouts (so in
    every function here: the buffers Inductor allocates for the ops' out variants, ops.py)."""
    if x.dim() == 0:
        raise ValueError("quantize_1x128 needs at least one dim")
    k = x.shape[-1]
    kb = _cdiv(k, TILE)
    if out is None:
        q = torch.empty(x.shape, dtype=FP8_DTYPE, device=x.device)
        s = empty_mn_major(x.shape[:-1], kb, device=x.device)
    else:
        q, s = out
    rows = x.numel() // k if k else 0
    if rows == 0 or k == 0:
        return q, s
    folded = _fold_leading(x)
    if folded is None:  # more than two non-mergeable leading dims: rare, pay a copy
        x = x.contiguous()
        folded = _fold_leading(x)
    d0, d1, s0, s1 = folded
    grid = (_cdiv(rows, _BLOCK_R_1x128), kb)
    _launch_1x128(
        grid, x, q, s, rows, d1, k, s0, s1, x.stride(-1),
        BLOCK_R=_BLOCK_R_1x128, EVEN_K=(k % TILE == 0), num_warps=_WARPS_1x128,
    )
    return q, s


# --------------------------------------------------------------------------------------------
# 128x1 tiles (128 rows, one column), alone or with the 1x128 tiles from the same read
# --------------------------------------------------------------------------------------------
@triton.jit
def _quant_col_tiles_kernel(
    x_ptr, qr_ptr, sr_ptr, qc_ptr, qt_ptr, sc_ptr,
    M, K,
    sxm, sxk,
    BLOCK_C: tl.constexpr,
    CHUNK: tl.constexpr,
    WRITE_ROW: tl.constexpr,
    WRITE_COL: tl.constexpr,
    WRITE_COL_T: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """The 128x1 tiles of a [128, BLOCK_C] block of x (with WRITE_ROW, BLOCK_C = 128, also its
    1x128 tiles), in two passes over CHUNK-row slices of the block:
      pass 1 reads each slice, writes its 1x128 tiles at once (a row is whole in a slice) and
             folds the slice into the running column amax;
      pass 2 reads the slices again, meant to hit L2 (the block was read a moment ago; not
             profiled), and writes the 128x1 copy (and/or its transpose).
    For the dual copy the default is one 128-row slice: the block is not kept live across both
    quantizations, which took the kernel from 245 to 174 registers per thread (SASS, Triton 3.6)
    and from 1534 to 1948 GB/s on the H200 (benchmarks/RESULTS_gemm.md); 32- and 16-row slices
    measured slower (a cross-warp amax reduction and barrier per slice). An L2 prefetch of a later
    program's block and evict_last/evict_first hints on the two passes measured no faster
    (benchmarks/RESULTS_gemm.md, session 5)."""
    mb = tl.program_id(0)
    pid_c = tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < K
    col_amax = tl.zeros([BLOCK_C], dtype=tl.float32)
    for c in tl.static_range(128 // CHUNK):
        rows = mb * 128 + c * CHUNK + tl.arange(0, CHUNK)
        rmask = rows < M
        if EVEN_K:
            mask = rmask[:, None]
        else:
            mask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * sxm + cols.to(tl.int64)[None, :] * sxk,
                    mask=mask, other=0.0).to(tl.float32)
        if WRITE_ROW:
            s_row, r_row, sf_row = _scale_and_recip(_amax(x, 1))
            q_row = _to_fp8(x, sf_row[:, None], r_row[:, None])
            tl.store(qr_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], q_row, mask=mask)
            tl.store(sr_ptr + pid_c.to(tl.int64) * M + rows, s_row, mask=rmask)  # [KB, M] storage
        col_amax = _nanmax(col_amax, _amax(x, 0))
    scale, r, sf = _scale_and_recip(col_amax)
    for c in tl.static_range(128 // CHUNK):
        rows = mb * 128 + c * CHUNK + tl.arange(0, CHUNK)
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * sxm + cols.to(tl.int64)[None, :] * sxk,
                    mask=mask, other=0.0).to(tl.float32)
        q = _to_fp8(x, sf[None, :], r[None, :])
        if WRITE_COL:  # q[M, K]
            tl.store(qc_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], q, mask=mask)
        if WRITE_COL_T:  # q.T stored contiguous: [K, M]
            tl.store(qt_ptr + cols.to(tl.int64)[None, :] * M + rows[:, None], q, mask=mask)
    # scale[MB, K] storage; the transposed copy's scale is its .T view (MN-major)
    tl.store(sc_ptr + mb.to(tl.int64) * K + cols, scale, mask=cmask)


_launch_col_tiles_kernel = FastLauncher(_quant_col_tiles_kernel)


# "whole" design of the 128x1 kernel: a 128 x BLOCK_C block held in registers and read once (for
# the dual kernel the same design, a whole 128x128 block in fp32 registers, measured 1534 GB/s
# against the two-pass kernel's 1948 on the H200 and was removed)
@triton.jit
def _quant_128x1_kernel(
    x_ptr, q_ptr, qt_ptr, s_ptr,
    M, K,
    sxm, sxk,
    BLOCK_C: tl.constexpr,
    WRITE_Q: tl.constexpr,
    WRITE_QT: tl.constexpr,
):
    mb = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = mb * 128 + tl.arange(0, 128)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < M
    cmask = cols < K
    mask = rmask[:, None] & cmask[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * sxm + cols.to(tl.int64)[None, :] * sxk,
                mask=mask, other=0.0).to(tl.float32)
    scale, r, sf = _scale_and_recip(_amax(x, 0))
    q = _to_fp8(x, sf[None, :], r[None, :])
    if WRITE_Q:
        tl.store(q_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], q, mask=mask)
    if WRITE_QT:  # transposed copy: qt[K, M]
        tl.store(qt_ptr + cols.to(tl.int64)[None, :] * M + rows[:, None], q, mask=mask)
    # scale[MB, K] storage; the transposed copy's scale is its .T view (MN-major)
    tl.store(s_ptr + mb.to(tl.int64) * K + cols, scale, mask=cmask)


_launch_128x1 = FastLauncher(_quant_128x1_kernel)


# Launch parameters (H200 sweep in benchmarks/RESULTS_gemm.md). The 128x1 kernel alone: "whole"
# (_quant_128x1_kernel) or "two-pass" (_quant_col_tiles_kernel without the 1x128 copy); the dual
# kernel here is the two-pass one. On sm90 the transposed layouts with K % 128 == 0 (what the
# ops return) go to the Gluon kernels instead, 33-42% faster for the dual copy.
_Q128X1_IMPL = os.environ.get("FP8PASS_Q128X1_IMPL", "whole")
# the transposed layout with K % 128 == 0 on sm90: the Gluon kernel (triton_quantize_gluon.py)
_Q128X1_GLUON = os.environ.get("FP8PASS_Q128X1_GLUON", "1") == "1"
_BLOCK_C_128x1 = int(os.environ.get("FP8PASS_Q128X1_BLOCK_C", "64"))
_CHUNK_128x1 = int(os.environ.get("FP8PASS_Q128X1_CHUNK", "128"))
_WARPS_128x1 = int(os.environ.get("FP8PASS_Q128X1_WARPS", "4"))
_CHUNK_DUAL = int(os.environ.get("FP8PASS_QDUAL_CHUNK", "128"))  # H200: 1948 GB/s vs 1534 whole
_WARPS_DUAL = int(os.environ.get("FP8PASS_QDUAL_WARPS", "8"))
# "gluon": the Gluon kernel (triton_quantize_gluon.py) for the transposed layout on sm90 with
# K % 128 == 0; "triton": always the plain-Triton kernel below
_DUAL_IMPL = os.environ.get("FP8PASS_QDUAL_IMPL", "gluon")
_GLUON_QUANT: list = []


def _gluon_quantize(device: torch.device):
    """triton_quantize_gluon (imported at first use: it imports this module) if its kernels run on
    `device`, else None."""
    if not _GLUON_QUANT:
        from . import triton_quantize_gluon
        _GLUON_QUANT.append(triton_quantize_gluon if triton_quantize_gluon.gluon is not None else None)
    module = _GLUON_QUANT[0]
    return module if module is not None and module.available(device) else None


def _launch_col_tiles(x, q_row, s_row, q_col, q_t, s_col, *, block_c, chunk, warps):
    """Run _quant_col_tiles_kernel: q_row/s_row (or None) the 1x128 copy, q_col and/or q_t the
    128x1 copy and its transpose, s_col the 128x1 scales' [MB, K] storage."""
    m, k = x.shape
    if not (m and k):
        return
    some_q = next(t for t in (q_row, q_col, q_t) if t is not None)
    grid = (_cdiv(m, TILE), _cdiv(k, block_c))
    _launch_col_tiles_kernel(
        grid, x, some_q if q_row is None else q_row, s_col if s_row is None else s_row,
        some_q if q_col is None else q_col, some_q if q_t is None else q_t, s_col,
        m, k, x.stride(0), x.stride(1),
        BLOCK_C=block_c, CHUNK=chunk, WRITE_ROW=q_row is not None, WRITE_COL=q_col is not None,
        WRITE_COL_T=q_t is not None, EVEN_K=(k % block_c == 0), num_warps=warps,
    )


def quantize_128x1(x: torch.Tensor, *, layout: str = "normal", out=None):
    """128x1 tiles of a 2-D x[M, K].

    layout="normal":     (q[M, K], scale[ceil(M/128), K])  -- the contract, both contiguous
    layout="transposed": (qt[K, M], scale_t[K, ceil(M/128)]) -- q.T stored contiguous; scale.T as
                         a view (MN-major: the 1x128 scale layout of x.T, see ops.py)
    layout="both":       (q, scale, qt, scale_t), scale_t = scale.T (one storage)
    out (layout="transposed" only): (qt, scale_t) to write instead of new tensors.
    """
    if x.dim() != 2:
        raise ValueError(f"quantize_128x1 expects a 2-D tensor, got shape {tuple(x.shape)}")
    if layout not in ("normal", "transposed", "both"):
        raise ValueError(f"unknown layout {layout!r}")
    m, k = x.shape
    mb = _cdiv(m, TILE)
    want_q = layout in ("normal", "both")
    want_qt = layout in ("transposed", "both")
    dev = x.device
    if out is not None and layout != "transposed":
        raise ValueError("quantize_128x1: out= is only taken with layout='transposed'")
    q = torch.empty((m, k), dtype=FP8_DTYPE, device=dev) if want_q else None
    if out is None:
        qt = torch.empty((k, m), dtype=FP8_DTYPE, device=dev) if want_qt else None
        s_t = empty_mn_major((k,), mb, device=dev)  # the same layout as the op's fake kernel
    else:
        qt, s_t = out
    s = s_t.t()  # [MB, K] storage, contiguous
    if layout == "transposed" and k % TILE == 0 and _Q128X1_GLUON:
        gluon_quant = _gluon_quantize(dev)
        if gluon_quant is not None:
            gluon_quant.quantize_128x1_transposed(x, qt, s_t)
            return qt, s_t
    if _Q128X1_IMPL == "whole":
        if m and k:
            _launch_128x1(
                (mb, _cdiv(k, _BLOCK_C_128x1)), x, q if want_q else qt, qt if want_qt else q, s,
                m, k, x.stride(0), x.stride(1),
                BLOCK_C=_BLOCK_C_128x1, WRITE_Q=want_q, WRITE_QT=want_qt, num_warps=_WARPS_128x1,
            )
    else:
        _launch_col_tiles(x, None, None, q, qt, s, block_c=_BLOCK_C_128x1, chunk=_CHUNK_128x1,
                          warps=_WARPS_128x1)
    if layout == "normal":
        return q, s
    if layout == "transposed":
        return qt, s_t
    return q, s, qt, s_t


def quantize_1x128_128x1(x: torch.Tensor, *, col_layout: str = "normal", out=None):
    """(q_row[M, K], s_row[M, KB], q_col, s_col) from one read of a 2-D x; s_row is MN-major.

    col_layout="normal": q_col[M, K], s_col[MB, K] (the contract, contiguous);
    col_layout="transposed": q_col is q_col.T stored contiguous [K, M], s_col is s_col.T [K, MB]
    as a view (MN-major, see ops.py).
    out (col_layout="transposed" only): (q_row, s_row, q_col, s_col) to write instead."""
    if x.dim() != 2:
        raise ValueError(f"quantize_1x128_128x1 expects a 2-D tensor, got shape {tuple(x.shape)}")
    if col_layout not in ("normal", "transposed"):
        raise ValueError(f"unknown col_layout {col_layout!r}")
    m, k = x.shape
    kb, mb = _cdiv(k, TILE), _cdiv(m, TILE)
    dev = x.device
    trans = col_layout == "transposed"
    if out is None:
        q_row = torch.empty((m, k), dtype=FP8_DTYPE, device=dev)
        s_row = empty_mn_major((m,), kb, device=dev)
        q_col = torch.empty((k, m) if trans else (m, k), dtype=FP8_DTYPE, device=dev)
        s_col_t = empty_mn_major((k,), mb, device=dev)  # the same layout as the op's fake kernel
    elif not trans:
        raise ValueError("quantize_1x128_128x1: out= is only taken with col_layout='transposed'")
    else:
        q_row, s_row, q_col, s_col_t = out
    if trans and k % TILE == 0 and _DUAL_IMPL != "triton":
        gluon_quant = _gluon_quantize(dev)
        if gluon_quant is not None:
            gluon_quant.quantize_dual_transposed(x, q_row, s_row, q_col, s_col_t)
            return q_row, s_row, q_col, s_col_t
    _launch_col_tiles(x, q_row, s_row, None if trans else q_col, q_col if trans else None, s_col_t.t(),
                      block_c=TILE, chunk=_CHUNK_DUAL, warps=_WARPS_DUAL)
    return q_row, s_row, q_col, s_col_t if trans else s_col_t.t()


def quantize_1x128_128x1_cat3(x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, *, out=None):
    """quantize_1x128_128x1(cat3_input(x0, x1, x2), col_layout="transposed") (see ops.py): on sm90,
    for 2-byte parts of one head dim D (a multiple or a divisor of 128) whose widths are multiples
    of 128, one Gluon kernel reads the three parts in place; otherwise the parts are concatenated
    into a temporary first (the same numbers)."""
    m, widths = cat3_rows_and_widths("quantize_1x128_128x1_cat3", x0, x1, x2)
    k = sum(widths)
    if out is None:
        out = new_dual_outputs(m, k, x0.device)
    gluon_quant = _gluon_quantize(x0.device) if _DUAL_IMPL != "triton" else None
    if gluon_quant is not None and gluon_quant.cat3_supported(x0, x1, x2):
        gluon_quant.quantize_dual_cat3_transposed(x0, x1, x2, *out)
        return out
    return quantize_1x128_128x1(cat3_input(x0, x1, x2), col_layout="transposed", out=out)


# --------------------------------------------------------------------------------------------
# 128x128 blocks
# --------------------------------------------------------------------------------------------
@triton.jit
def _quant_128x128_kernel(
    x_ptr, q_ptr, qt_ptr, s_ptr,
    R, C,
    ssr, ssc,
    sxr, sxc,
    sxg, ssg,  # a stack of matrices (grid axis 2): x's and s's strides between them (q's: R * C)
    WRITE_Q: tl.constexpr,
    WRITE_QT: tl.constexpr,
):
    """One 128x128 block of x[R, C]: its scale at s[rb * ssr + cb * ssc], and the FP8 block as q
    (row-major [R, C], WRITE_Q) and/or q.T (row-major [C, R], WRITE_QT; 128x128 blocks are the
    same blocks of the transpose, so one scale serves both). Grid axis 2 walks a stack of such
    matrices (MoE experts), each with its own q/q.T and scales."""
    rb = tl.program_id(0)
    cb = tl.program_id(1)
    g = tl.program_id(2).to(tl.int64)
    x_ptr += g * sxg
    q_ptr += g * R * C
    qt_ptr += g * R * C
    s_ptr += g * ssg
    rows = rb * 128 + tl.arange(0, 128)
    cols = cb * 128 + tl.arange(0, 128)
    mask = (rows < R)[:, None] & (cols < C)[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * sxr + cols.to(tl.int64)[None, :] * sxc,
                mask=mask, other=0.0).to(tl.float32)
    scale, r, sf = _scale_and_recip(_amax(_amax(x, 1), 0))
    q = _to_fp8(x, sf, r)
    if WRITE_Q:
        tl.store(q_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], q, mask=mask)
    if WRITE_QT:
        tl.store(qt_ptr + cols.to(tl.int64)[None, :] * R + rows[:, None], q, mask=mask)
    tl.store(s_ptr + rb * ssr + cb * ssc, scale)


_launch_128x128 = FastLauncher(_quant_128x128_kernel)


_WARPS_128x128 = int(os.environ.get("FP8PASS_Q128X128_WARPS", "4"))  # H200 sweep: 4 best


def quantize_128x128(w: torch.Tensor, *, layout: str = "row", with_transposed: bool = False, out=None):
    """(q[R, C], scale[ceil(R/128), ceil(C/128)]); with_transposed=True adds q.T stored
    contiguous ([C, R]) as a third output (its scale is scale.T).

    layout="transposed": only the transposed copy, (q.T, scale.T), both contiguous: Dgrad's
    B operand W[N, K] K-major with its scale MN-major, as cuBLAS reads them (no copy of either).
    out (without with_transposed): the two outputs, (q, scale) or (q.T, scale.T), to write instead.

    A 3-D stack w[G, R, C] (MoE experts), matrix by matrix in one launch: (q[G, R, C], scale[G,
    ceil(R/128), ceil(C/128)]), or with layout="transposed" each matrix's transpose (q[G, C, R],
    scale[G, ceil(C/128), ceil(R/128)]), the grouped Dgrad's K-major weights."""
    if w.dim() == 3:
        return _quantize_128x128_stack(w, layout, with_transposed, out)
    if w.dim() != 2:
        raise ValueError(f"quantize_128x128 expects a 2-D tensor, got shape {tuple(w.shape)}")
    if layout not in ("row", "transposed"):
        raise ValueError(f"quantize_128x128: layout must be 'row' or 'transposed', got {layout!r}")
    r, c = w.shape
    rb, cb = _cdiv(r, TILE), _cdiv(c, TILE)
    write_q, write_qt = layout == "row", layout == "transposed" or with_transposed
    if out is not None and with_transposed:
        raise ValueError("quantize_128x128: out= is not taken with with_transposed=True")
    if out is None:
        q = torch.empty((r, c), dtype=FP8_DTYPE, device=w.device) if write_q else None
        qt = torch.empty((c, r), dtype=FP8_DTYPE, device=w.device) if write_qt else None
        s = torch.empty((rb, cb) if write_q else (cb, rb), dtype=torch.float32, device=w.device)
    elif write_q:
        (q, s), qt = out, None
    else:
        q, (qt, s) = None, out
    ssr, ssc = (cb, 1) if write_q else (1, rb)
    if r and c:
        _launch_128x128(
            (rb, cb), w, q if write_q else qt, qt if write_qt else q, s, r, c, ssr, ssc, w.stride(0), w.stride(1),
            0, 0, WRITE_Q=write_q, WRITE_QT=write_qt, num_warps=_WARPS_128x128,
        )
    if not write_q:
        return qt, s
    if with_transposed:
        return q, s, qt
    return q, s


def _quantize_128x128_stack(w: torch.Tensor, layout: str, with_transposed: bool, out) -> tuple:
    """A stack w[G, R, C], matrix by matrix in one launch (grid axis 2): layout "row" (q[G, R, C],
    scale[G, rb, cb]) or "transposed" (each matrix's transpose, q[G, C, R], scale[G, cb, rb])."""
    if layout not in ("row", "transposed") or with_transposed:
        raise ValueError("quantize_128x128: a 3-D stack of weights is quantized in the row or the transposed "
                         "layout, not both at once")
    g, r, c = w.shape
    rb, cb = _cdiv(r, TILE), _cdiv(c, TILE)
    write_q = layout == "row"
    if out is None:
        q = torch.empty((g, r, c) if write_q else (g, c, r), dtype=FP8_DTYPE, device=w.device)
        s = torch.empty((g, rb, cb) if write_q else (g, cb, rb), dtype=torch.float32, device=w.device)
    else:
        q, s = out
    if not q.is_contiguous() or not s.is_contiguous():
        raise ValueError("quantize_128x128: a stack's outputs must be contiguous")
    ssr, ssc = (cb, 1) if write_q else (1, rb)
    if g and r and c:
        _launch_128x128(
            (rb, cb, g), w, q, q, s, r, c, ssr, ssc, w.stride(1), w.stride(2), w.stride(0), rb * cb,
            WRITE_Q=write_q, WRITE_QT=not write_q, num_warps=_WARPS_128x128,
        )
    return q, s
