"""The dual quantizer (1x128 copy and transposed 128x1 copy from one read) in Gluon, for sm90,
and the transposed 128x1 copy alone (the same kernel without its 1x128 pass).

Same numerics as triton_quantize.py (its `_amax`, `_scale_and_recip` and `_to_fp8`, compiled
here as Gluon functions), so the outputs are bit-identical to kernels/reference.py. What Gluon
adds is the choice of register layouts, which plain Triton makes for itself:
  * the 1x128 pass holds 16 consecutive elements of a row per thread (16-byte loads and stores)
    and reduces each row over 8 lanes;
  * the 128x1 pass holds 16 consecutive rows of a column per thread, so each thread's share of
    the transposed copy is one 16-byte store, with no byte-wise transpose through shared memory;
  * between the two, the bf16 tile changes layout through shared memory (STS.128 in, ldmatrix
    .trans out), instead of a second read from L2 and a byte-wise transpose of the FP8 copy.
SASS (Triton 3.6, sm90, 8 warps): 21.5 instructions per element against the plain-Triton
two-pass kernel's 31.6, at 128 registers (capped with maxnreg so that two CTAs fit on an SM).
Holding 32 elements a thread cuts that to 18.0 but measured slower (see _ROW_SPT). Without the
1x128 pass (the 128x1 copy alone): 12.4 instructions per element against 18.8 for the
plain-Triton 128x1 kernel, and 79.6% of copy bandwidth against 74.4% (H200, 16384x4096).

For row-major inputs with 2-byte elements, the 128x1 copy alone and the SwiGLU kernels (one
16-warp CTA per SM) run `_pipelined_dual_kernel`: persistent programs walk their tiles while the
next ones are copied into a shared-memory ring by cp.async, so an SM's loads do not stop while a
tile is quantized and stored (see _PIPELINED and the settings below it for what was measured).

Not run by the Triton interpreter (Gluon has no interpreter mode): the CPU suite tests the plain
Triton kernels' numerics and compiles this one for sm90 (tests/test_kernel_compile.py);
tests/test_triton_gpu.py checks it bit for bit on the GPU.
"""

from __future__ import annotations

import os

import torch
import triton

from .launch import FastLauncher, sm_count
from .reference import TILE, _cdiv

try:  # Gluon is experimental: absent from older Triton, names move between releases
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    from . import tile_math as _tm

    # the plain-Triton helpers, compiled as Gluon functions (layout-agnostic tl ops only)
    _amax = gluon.jit(_tm._amax.fn)
    _scale_and_recip = gluon.jit(_tm._scale_and_recip.fn)
    _to_fp8 = gluon.jit(_tm._to_fp8.fn)
    _grouped_tile = gluon.jit(_tm._grouped_tile.fn)
    _cat3_tile_ptrs = gluon.jit(_tm._cat3_tile_ptrs.fn)
    _swiglu_tile_values = gluon.jit(_tm.swiglu_tile_values.fn)
    from triton.experimental.gluon.language.nvidia.ampere import async_copy

    # cp.async global -> shared: renamed after Triton 3.6 (the old name raises in 3.9)
    _async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
    _cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
    _GLUON_IMPORT_ERROR = None
except Exception as exc:  # pragma: no cover - depends on the installed Triton
    gluon = None
    _GLUON_IMPORT_ERROR = exc

__all__ = ["available", "quantize_dual_transposed", "quantize_dual_cat3_transposed", "quantize_128x1_transposed",
           "swiglu_dual_transposed"]

_WARPS = int(os.environ.get("FP8PASS_QDUAL_GLUON_WARPS", "8"))
# 128: two 8-warp CTAs per SM (65536 registers); ptxas needs no spills at this cap. 0: no cap
_MAXNREG = int(os.environ.get("FP8PASS_QDUAL_GLUON_MAXNREG", "128"))
# elements of a row (the load and the 1x128 pass) / rows of a column (the 128x1 pass) held by one
# thread, 16 or 32, for the dual kernel and for the 128x1 copy alone. H200 sweep at 16384x4096
# (benchmarks/RESULTS_gemm.md, session 6): dual 16/16 3273 GB/s, 32/16 3238, 16/32 3218, 32/32 3204
# (the fewest instructions, 18.0 per element against 21.5, but the slowest); 128x1 alone 32/16 3139,
# 32/32 3050
# The SwiGLU kernels hold two or three input tiles: at 8 warps they need ~174 registers or more
# without spilling (ptxas of Triton 3.9 for sm90), one CTA per SM; at 16 warps under 128, so one
# 16-warp CTA per SM fits the 128 cap. H200 (benchmarks/RESULTS.md, session 10): 16 warps 0.480 ms
# for the forward at 16384 x 14336 against 0.659 at 8 warps without a cap. fp32 inputs of the
# grad_a kernel: 8 warps and no cap (they spilled at 16 warps and 128 in the one-kernel backward).
_WARPS_SWIGLU = int(os.environ.get("FP8PASS_SWIGLU_GLUON_WARPS", "16"))
_MAXNREG_SWIGLU = int(os.environ.get("FP8PASS_SWIGLU_GLUON_MAXNREG", "128"))


def swiglu_launch_options(dtype: torch.dtype, mode: int) -> dict:
    """num_warps and the register cap of the SwiGLU kernel for these inputs and mode (0 forward)."""
    if mode == 1 and dtype == torch.float32:
        return {"num_warps": 8}
    return {"num_warps": _WARPS_SWIGLU, **({"maxnreg": _MAXNREG_SWIGLU} if _MAXNREG_SWIGLU else {})}
_ROW_SPT = int(os.environ.get("FP8PASS_QDUAL_GLUON_ROW_SPT", "16"))
_COL_SPT = int(os.environ.get("FP8PASS_QDUAL_GLUON_COL_SPT", "16"))
_ROW_SPT_128X1 = int(os.environ.get("FP8PASS_Q128X1_GLUON_ROW_SPT", "32"))
_COL_SPT_128X1 = int(os.environ.get("FP8PASS_Q128X1_GLUON_COL_SPT", "16"))


_AVAILABLE: dict = {}


def available(device: torch.device) -> bool:
    """On sm90 only: the layouts and register cap were chosen and measured on an H200."""
    if gluon is None or device.type != "cuda":
        return False
    ok = _AVAILABLE.get(device.index)
    if ok is None:
        ok = _AVAILABLE[device.index] = torch.cuda.get_device_capability(device)[0] == 9
    return ok


if gluon is not None:

    @triton.constexpr_function
    def _row_layout(spt, num_warps):
        """A 128x128 tile's row layout: spt consecutive elements of a row per thread, a warp per
        32 * spt / 128 rows (the 1x128 pass reduces along rows inside a warp)."""
        return gl.BlockedLayout([1, spt], [32 * spt // 128, 128 // spt], [num_warps, 1], [1, 0])

    @triton.constexpr_function
    def _col_layout(spt, num_warps):
        """The column layout of the same tile: spt consecutive rows of a column per thread (the
        128x1 pass reduces along columns, and stores the transposed copy contiguously)."""
        return gl.BlockedLayout([spt, 1], [128 // spt, 32 * spt // 128], [1, num_warps], [0, 1])

    @gluon.jit
    def _quantize_tile_row(x, mb, kb, M, K, qr_ptr, sr_ptr, ROW: gl.constexpr):
        """The 1x128 copy of x, the 128x128 tile (mb, kb) of an [M, K] tensor in layout ROW (rows
        past M hold zeros): q_row[M, K] with its scales s_row ([KB, M] storage)."""
        rows = mb * 128 + gl.arange(0, 128, layout=gl.SliceLayout(1, ROW))
        cols = kb * 128 + gl.arange(0, 128, layout=gl.SliceLayout(0, ROW))
        rmask = rows < M
        xf = x.to(gl.float32)
        s_row, r_row, sf_row = _scale_and_recip(_amax(xf, 1))
        q_row = _to_fp8(xf, sf_row[:, None], r_row[:, None])
        gl.store(qr_ptr + rows.to(gl.int64)[:, None] * K + cols[None, :], q_row, mask=rmask[:, None])
        gl.store(sr_ptr + kb.to(gl.int64) * M + rows, s_row, mask=rmask)

    @gluon.jit
    def _quantize_tile_col(xc, mb, kb, M, K, qt_ptr, sc_ptr, COL: gl.constexpr):
        """The 128x1 copy of the same tile, held in layout COL: q_col_t[K, M] (transposed) with
        its scales ([MB, K] storage)."""
        xc = xc.to(gl.float32)
        rows_c = mb * 128 + gl.arange(0, 128, layout=gl.SliceLayout(1, COL))
        cols_c = kb * 128 + gl.arange(0, 128, layout=gl.SliceLayout(0, COL))
        rmask_c = rows_c < M
        s_col, r_col, sf_col = _scale_and_recip(_amax(xc, 0))
        q_col = _to_fp8(xc, sf_col[None, :], r_col[None, :])
        gl.store(qt_ptr + cols_c.to(gl.int64)[None, :] * M + rows_c[:, None], q_col, mask=rmask_c[:, None])
        gl.store(sc_ptr + mb.to(gl.int64) * K + cols_c, s_col)

    @gluon.jit
    def _quantize_tile_dual(x, mb, kb, M, K, qr_ptr, sr_ptr, qt_ptr, sc_ptr,
                            WRITE_ROW: gl.constexpr, ROW: gl.constexpr, COL: gl.constexpr,
                            WRITE_COL: gl.constexpr):
        """The dual quantization of x, the 128x128 tile (mb, kb) of an [M, K] tensor in layout ROW
        (rows past M hold zeros): its 1x128 copy if WRITE_ROW, its 128x1 copy if WRITE_COL, the
        tile moved to the column layout through shared memory (in the input's dtype)."""
        if WRITE_ROW:
            _quantize_tile_row(x, mb, kb, M, K, qr_ptr, sr_ptr, ROW)
        if WRITE_COL:
            _quantize_tile_col(gl.convert_layout(x, COL), mb, kb, M, K, qt_ptr, sc_ptr, COL)

    @gluon.jit
    def _load_tile(ptr, mb, kb, M, sm, sk, ROW: gl.constexpr):
        rows = mb * 128 + gl.arange(0, 128, layout=gl.SliceLayout(1, ROW))
        cols = kb * 128 + gl.arange(0, 128, layout=gl.SliceLayout(0, ROW))
        return gl.load(ptr + rows.to(gl.int64)[:, None] * sm + cols.to(gl.int64)[None, :] * sk,
                       mask=(rows < M)[:, None], other=0.0)

    @gluon.jit
    def _quant_dual_kernel(
        x_ptr, qr_ptr, sr_ptr, qt_ptr, sc_ptr,
        M, K, sxm, sxk,
        WRITE_ROW: gl.constexpr,
        ROW_SPT: gl.constexpr,
        COL_SPT: gl.constexpr,
        num_warps: gl.constexpr,
        GROUP_M: gl.constexpr = 0,
    ):
        """One 128x128 tile of x[M, K] (K % 128 == 0; rows past M masked) per program: its dual
        quantization (only the 128x1 copy without WRITE_ROW), see _quantize_tile_dual. GROUP_M 0:
        a 2-D grid (M's tiles, K's), down M first; else a 1-D grid in _grouped_tile's order."""
        ROW: gl.constexpr = _row_layout(ROW_SPT, num_warps)
        COL: gl.constexpr = _col_layout(COL_SPT, num_warps)
        if GROUP_M == 0:
            mb = gl.program_id(0)
            kb = gl.program_id(1)
        else:
            mb, kb = _grouped_tile(gl.program_id(0), gl.cdiv(M, 128), K // 128, GROUP_M)
        x = _load_tile(x_ptr, mb, kb, M, sxm, sxk, ROW)
        _quantize_tile_dual(x, mb, kb, M, K, qr_ptr, sr_ptr, qt_ptr, sc_ptr, WRITE_ROW, ROW, COL, True)

    @gluon.jit
    def _quant_dual_cat3_kernel(
        x0_ptr, x1_ptr, x2_ptr, qr_ptr, sr_ptr, qt_ptr, sc_ptr,
        M, K, T, KB1, KB2, D,
        s0b, s0t, s0h, s0d, s1b, s1t, s1h, s1d, s2b, s2t, s2h, s2d,
        HEAD_COLS: gl.constexpr,
        ROW_SPT: gl.constexpr,
        COL_SPT: gl.constexpr,
        num_warps: gl.constexpr,
        GROUP_M: gl.constexpr,
    ):
        """_quant_dual_kernel (1-D grid) of three [B, T, H_i, D] parts seen as one [B*T, K] matrix
        (tile_math._cat3_tile_ptrs): each tile read in place from the part holding it."""
        ROW: gl.constexpr = _row_layout(ROW_SPT, num_warps)
        COL: gl.constexpr = _col_layout(COL_SPT, num_warps)
        mb, kb = _grouped_tile(gl.program_id(0), gl.cdiv(M, 128), K // 128, GROUP_M)
        rows = mb * 128 + gl.arange(0, 128, layout=gl.SliceLayout(1, ROW))
        j = gl.arange(0, 128, layout=gl.SliceLayout(0, ROW))
        ptrs = _cat3_tile_ptrs(x0_ptr, x1_ptr, x2_ptr, rows, j, kb, KB1, KB2, T, D,
                               s0b, s0t, s0h, s0d, s1b, s1t, s1h, s1d, s2b, s2t, s2h, s2d, HEAD_COLS)
        x = gl.load(ptrs, mask=(rows < M)[:, None], other=0.0)
        _quantize_tile_dual(x, mb, kb, M, K, qr_ptr, sr_ptr, qt_ptr, sc_ptr, True, ROW, COL, True)

    @gluon.jit
    def _swiglu_dual_kernel(
        g_ptr, a_ptr, b_ptr,
        qr_ptr, sr_ptr, qt_ptr, sc_ptr,
        M, K, sgm, sgk, sam, sak, sbm, sbk,
        MODE: gl.constexpr,
        WRITE_ROW: gl.constexpr,
        WRITE_COL: gl.constexpr,
        ROW_SPT: gl.constexpr,
        COL_SPT: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        """triton_swiglu._swiglu_dual_kernel in these layouts: the dual quantization of silu(a) * b
        (MODE 0) or of its gradient of a (1) or of b (2), computed per tile (one copy of it without
        WRITE_ROW or WRITE_COL)."""
        ROW: gl.constexpr = _row_layout(ROW_SPT, num_warps)
        COL: gl.constexpr = _col_layout(COL_SPT, num_warps)
        mb = gl.program_id(0)
        kb = gl.program_id(1)
        a = _load_tile(a_ptr, mb, kb, M, sam, sak, ROW)
        g = a
        b = a
        if MODE != 0:
            g = _load_tile(g_ptr, mb, kb, M, sgm, sgk, ROW)
        if MODE != 2:
            b = _load_tile(b_ptr, mb, kb, M, sbm, sbk, ROW)
        x = _swiglu_tile_values(g, a, b, MODE)
        _quantize_tile_dual(x, mb, kb, M, K, qr_ptr, sr_ptr, qt_ptr, sc_ptr, WRITE_ROW, ROW, COL, WRITE_COL)

    @gluon.jit
    def _stage_tile(smem, ptr, t, n_kb, n_tiles, M, sm, LOAD: gl.constexpr):
        """Start copying tile t (of n_tiles, n_kb per row of tiles) of a row-major [M, K] tensor
        into smem by cp.async; rows past M, and a t past the last tile, are zero-filled."""
        mb = t // n_kb
        kb = t - mb * n_kb
        rows = mb * 128 + gl.arange(0, 128, layout=gl.SliceLayout(1, LOAD))
        cols = kb * 128 + gl.arange(0, 128, layout=gl.SliceLayout(0, LOAD))
        mask = (rows < M)[:, None] & (t < n_tiles)
        _async_load(smem, ptr + rows.to(gl.int64)[:, None] * sm + cols[None, :], mask=mask)

    @gluon.jit
    def _stage_inputs(g_ptr, a_ptr, b_ptr, g_bufs, a_bufs, b_bufs, s, t, n_kb, n_tiles, M, sgm, sam, sbm,
                      MODE: gl.constexpr, LOAD: gl.constexpr):
        """Start the copies of tile t of every input MODE reads into stage s, as one cp.async group."""
        _stage_tile(a_bufs.index(s), a_ptr, t, n_kb, n_tiles, M, sam, LOAD)
        if MODE == 1 or MODE == 2:
            _stage_tile(g_bufs.index(s), g_ptr, t, n_kb, n_tiles, M, sgm, LOAD)
        if MODE == 0 or MODE == 1:
            _stage_tile(b_bufs.index(s), b_ptr, t, n_kb, n_tiles, M, sbm, LOAD)
        async_copy.commit_group()

    @gluon.jit
    def _pipelined_dual_kernel(
        g_ptr, a_ptr, b_ptr,
        qr_ptr, sr_ptr, qt_ptr, sc_ptr,
        M, K, sgm, sam, sbm,
        MODE: gl.constexpr,
        WRITE_ROW: gl.constexpr,
        WRITE_COL: gl.constexpr,
        ROW_SPT: gl.constexpr,
        COL_SPT: gl.constexpr,
        NUM_STAGES: gl.constexpr,
        num_warps: gl.constexpr,
        COL_FROM_SMEM: gl.constexpr = False,
        SMEM_VEC: gl.constexpr = 8,
        SMEM_PER_PHASE: gl.constexpr = 1,
        SMEM_MAX_PHASE: gl.constexpr = 16,
    ):
        """_quant_dual_kernel (MODE -1: the tile of a) and _swiglu_dual_kernel (MODE 0-2) for
        row-major inputs, persistent and software-pipelined: each program walks the tiles
        pid, pid + nprog, ... while the next NUM_STAGES - 1 tiles' inputs are already on their way
        into shared memory by cp.async, so the SM's loads do not stop while a tile is quantized
        and stored (the one-tile-per-program kernels load, then compute, then store)."""
        ROW: gl.constexpr = _row_layout(ROW_SPT, num_warps)
        COL: gl.constexpr = _col_layout(COL_SPT, num_warps)
        SMEM: gl.constexpr = gl.SwizzledSharedLayout(SMEM_VEC, SMEM_PER_PHASE, SMEM_MAX_PHASE, order=[1, 0])
        n_kb = K // 128
        n_tiles = gl.cdiv(M, 128) * n_kb
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        dtype: gl.constexpr = a_ptr.dtype.element_ty
        a_bufs = gl.allocate_shared_memory(dtype, [NUM_STAGES, 128, 128], SMEM)
        g_bufs = a_bufs
        b_bufs = a_bufs
        if MODE == 1 or MODE == 2:
            g_bufs = gl.allocate_shared_memory(dtype, [NUM_STAGES, 128, 128], SMEM)
        if MODE == 0 or MODE == 1:
            b_bufs = gl.allocate_shared_memory(dtype, [NUM_STAGES, 128, 128], SMEM)
        for s0 in gl.static_range(NUM_STAGES - 1):
            _stage_inputs(g_ptr, a_ptr, b_ptr, g_bufs, a_bufs, b_bufs, s0, pid + s0 * nprog, n_kb, n_tiles, M,
                          sgm, sam, sbm, MODE, ROW)
        i = 0
        for t in range(pid, n_tiles, nprog):
            # every thread is done with the stage read in the previous iteration: refill it with
            # the tile NUM_STAGES - 1 ahead, then wait for this tile's group (the newer ones stay
            # in flight) and make every thread's copies visible to all
            _cta_barrier()
            _stage_inputs(g_ptr, a_ptr, b_ptr, g_bufs, a_bufs, b_bufs, (i + NUM_STAGES - 1) % NUM_STAGES,
                          t + (NUM_STAGES - 1) * nprog, n_kb, n_tiles, M, sgm, sam, sbm, MODE, ROW)
            async_copy.wait_group(NUM_STAGES - 1)
            _cta_barrier()
            s = i % NUM_STAGES
            mb = t // n_kb
            kb = t - mb * n_kb
            a = a_bufs.index(s).load(ROW)
            if MODE == -1 and COL_FROM_SMEM:  # the column layout read from the stage itself, no conversion
                if WRITE_ROW:
                    _quantize_tile_row(a, mb, kb, M, K, qr_ptr, sr_ptr, ROW)
                _quantize_tile_col(a_bufs.index(s).load(COL), mb, kb, M, K, qt_ptr, sc_ptr, COL)
            else:
                x = a
                if MODE != -1:
                    g = a
                    b = a
                    if MODE == 1 or MODE == 2:
                        g = g_bufs.index(s).load(ROW)
                    if MODE == 0 or MODE == 1:
                        b = b_bufs.index(s).load(ROW)
                    x = _swiglu_tile_values(g, a, b, MODE)
                _quantize_tile_dual(x, mb, kb, M, K, qr_ptr, sr_ptr, qt_ptr, sc_ptr, WRITE_ROW, ROW, COL, WRITE_COL)
            i += 1
        async_copy.wait_group(0)

    _launch_dual = FastLauncher(_quant_dual_kernel)
    _launch_dual_cat3 = FastLauncher(_quant_dual_cat3_kernel)
    _launch_swiglu_dual = FastLauncher(_swiglu_dual_kernel)
    _launch_pipelined = FastLauncher(_pipelined_dual_kernel)


# The persistent, software-pipelined form (_pipelined_dual_kernel) for row-major inputs: "0" keeps
# the one-tile-per-program kernels everywhere (for comparisons).
_PIPELINED = os.environ.get("FP8PASS_QUANT_PIPELINED", "1") != "0"
# stages of its shared-memory ring (NUM_STAGES - 1 tiles in flight while one is quantized), and
# programs per SM: the dual quantizer at 8 warps, and the SwiGLU kernels at 16
_PIPE_STAGES = int(os.environ.get("FP8PASS_QPIPE_STAGES", "2"))
_PIPE_CTAS = int(os.environ.get("FP8PASS_QPIPE_CTAS", "2"))
_PIPE_STAGES_SWIGLU = int(os.environ.get("FP8PASS_QPIPE_STAGES_SWIGLU", "2"))
_SMEM_BYTES = 232448  # sm90's largest shared-memory allocation for one CTA (227 KiB)
# Where it pays (H200, benchmarks/RESULTS.md, session 14, 16384x4096 unless said): the SwiGLU kernels
# (one 16-warp CTA per SM) took 11-17% less time in every mode at 8192x5632 and 16384x14336; the
# 128x1 copy alone 3285 GB/s against 3028-3159 one tile per program (at 16 elements a thread in both
# passes; 2992 at 32/16). Not the dual quantizer, whose two 8-warp CTAs per SM already overlap one
# another's loads: 3152-3173 GB/s against 3262-3282 one tile per program (16 warps, 3 stages:
# 3234-3244), so it keeps one tile per program.
_PIPELINE_DUAL = os.environ.get("FP8PASS_QPIPE_DUAL", "0") == "1"
_PIPE_WARPS = int(os.environ.get("FP8PASS_QPIPE_WARPS", "8"))  # of the dual / 128x1 quantizer's pipelined form
# The stage's swizzle (vec, per_phase, max_phase: 16-byte chunks XOR-permuted by row). The dual /
# 128x1 quantizer may read its column pass straight from the stage (no layout conversion through a
# second buffer): each thread then reads 16 rows 16 apart, which _PIPE_SWIZZLE_COL spreads over the
# banks (phase = row // 16). H200, 16384x4096 (session 14): 128x1 alone 3427 GB/s against 3303 with
# the conversion (2047 with the row-wise swizzle); the dual 3273 against 3277, so only the 128x1
# copy alone reads from the stage by default.
_PIPE_SWIZZLE = (8, 1, 16)
_PIPE_SWIZZLE_COL = (8, 16, 8)
_PIPE_COL_FROM_SMEM = os.environ.get("FP8PASS_QPIPE_COL_FROM_SMEM", "1") == "1"
# The one-tile-per-program kernel's tile order: 0, a 2-D grid down M first (each wave of CTAs reads
# a 256-byte piece of each of many rows); n > 0, a 1-D grid taking n rows of tiles at a time (1: each
# row of tiles along K, so a wave reads whole rows). H100 (benchmarks/RESULTS.md, session 15), the dual
# quantizer at 16384x4096 / 16384x14336 / 32768x8192: 1, 93.6-95.7% of copy bandwidth; 4, 93.2-94.6%;
# 16, 92.0-93.4%; the 2-D grid 90.8-92.6%. Not measured on an H200 (84.1-84.5% there with the 2-D grid).
_DUAL_GROUP_M = int(os.environ.get("FP8PASS_QDUAL_GROUP_M", "1"))
_ROW_SPT_PIPE_128X1 = int(os.environ.get("FP8PASS_QPIPE_128X1_ROW_SPT", "16"))
_COL_SPT_PIPE_128X1 = int(os.environ.get("FP8PASS_QPIPE_128X1_COL_SPT", "16"))


def _pipelinable(*inputs: torch.Tensor) -> bool:
    """Inputs the pipelined kernel copies by 16-byte cp.async: rows contiguous, row stride and
    base 16-byte aligned, 2-byte elements (the ones measured; three fp32 SwiGLU tiles a stage
    would not fit twice in shared memory)."""
    return _PIPELINED and all(
        t.stride(1) == 1 and t.element_size() == 2 and (t.stride(0) * 2) % 16 == 0 and t.data_ptr() % 16 == 0
        for t in inputs)


def pipelined_stages(mode: int, write_col: bool, stages: int) -> int:
    """stages, or fewer where that many 2-byte input tiles (one per input of the mode), plus the
    layout conversion's 32 KiB when the 128x1 copy is made, exceed sm90's shared memory per CTA."""
    n_inputs = 1 if mode == -1 else (3 if mode == 1 else 2)
    room = _SMEM_BYTES - 1024 - (TILE * TILE * 2 if write_col else 0)
    return max(1, min(stages, room // (n_inputs * TILE * TILE * 2)))


def _launch_pipelined_kernel(mode, g, a, b, outs, write_row, write_col, stages, ctas_per_sm, options,
                             row_spt=_ROW_SPT, col_spt=_COL_SPT) -> None:
    m, k = a.shape
    col_from_smem = mode == -1 and not write_row and _PIPE_COL_FROM_SMEM
    stages = pipelined_stages(mode, write_col and not col_from_smem, stages)
    swizzle = _PIPE_SWIZZLE_COL if col_from_smem else _PIPE_SWIZZLE
    tiles = _cdiv(m, TILE) * (k // TILE)
    grid = (min(tiles, ctas_per_sm * sm_count(a.device)),)
    _launch_pipelined(grid, g, a, b, *outs, m, k, g.stride(0), a.stride(0), b.stride(0),
                      MODE=mode, WRITE_ROW=write_row, WRITE_COL=write_col, ROW_SPT=row_spt, COL_SPT=col_spt,
                      NUM_STAGES=stages, COL_FROM_SMEM=col_from_smem, SMEM_VEC=swizzle[0],
                      SMEM_PER_PHASE=swizzle[1], SMEM_MAX_PHASE=swizzle[2], **options)


def _launch(x, q_row, s_row, q_col_t, s_col_t, write_row: bool, row_spt: int, col_spt: int) -> None:
    m, k = x.shape
    if k % TILE:
        raise ValueError(f"the Gluon quantizer needs K % 128 == 0, got x of shape {tuple(x.shape)}")
    if m == 0 or k == 0:
        return
    if (_PIPELINE_DUAL or not write_row) and _pipelinable(x):
        opts = {"num_warps": _PIPE_WARPS, **({"maxnreg": _MAXNREG} if _MAXNREG else {})}
        spt = (row_spt, col_spt) if write_row else (_ROW_SPT_PIPE_128X1, _COL_SPT_PIPE_128X1)
        _launch_pipelined_kernel(-1, x, x, x, (q_row, s_row, q_col_t, s_col_t), write_row, True, _PIPE_STAGES,
                                 _PIPE_CTAS, opts, *spt)
        return
    grid = ((m + TILE - 1) // TILE, k // TILE)
    opts = {"maxnreg": _MAXNREG} if _MAXNREG else {}
    if _DUAL_GROUP_M:
        grid, opts = (grid[0] * grid[1],), {**opts, "GROUP_M": _DUAL_GROUP_M}
    _launch_dual(grid, x, q_row, s_row, q_col_t, s_col_t, m, k, x.stride(0), x.stride(1),
                 WRITE_ROW=write_row, ROW_SPT=row_spt, COL_SPT=col_spt, num_warps=_WARPS, **opts)


def quantize_dual_transposed(x: torch.Tensor, q_row, s_row, q_col_t, s_col_t) -> None:
    """Fill the outputs of triton_quantize.quantize_1x128_128x1(x, col_layout="transposed")
    (allocated by the caller, in the op's layouts) for a 2-D x whose K is a multiple of 128."""
    _launch(x, q_row, s_row, q_col_t, s_col_t, True, _ROW_SPT, _COL_SPT)


def cat3_supported(x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> bool:
    """Parts quantize_dual_cat3_transposed takes: 2-byte, one head dim D that is a multiple or a
    divisor of 128, each part's H * D a multiple of 128."""
    d = x0.shape[3]
    return (x0.element_size() == 2 and d > 0 and x1.shape[3] == x2.shape[3] == d
            and (d % TILE == 0 or TILE % d == 0) and all(p.shape[2] * d % TILE == 0 for p in (x0, x1, x2)))


def quantize_dual_cat3_transposed(x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, q_row, s_row, q_col_t,
                                  s_col_t) -> None:
    """quantize_dual_transposed of three [B, T, H_i, D] parts side by side ([B*T, sum of H_i*D]),
    each read in place through its strides (cat3_supported says which parts)."""
    if not cat3_supported(x0, x1, x2):
        raise ValueError(f"the Gluon cat3 quantizer needs 2-byte parts of one head dim (a multiple or divisor of "
                         f"128) and widths multiple of 128, got {[(tuple(p.shape), p.dtype) for p in (x0, x1, x2)]}")
    b, t, _, d = x0.shape
    widths = [p.shape[2] * d for p in (x0, x1, x2)]
    m, k = b * t, sum(widths)
    if m == 0:
        return
    group_m = max(_DUAL_GROUP_M, 1)  # a 1-D grid in _grouped_tile's order
    opts = {"maxnreg": _MAXNREG} if _MAXNREG else {}
    _launch_dual_cat3((_cdiv(m, TILE) * (k // TILE),), x0, x1, x2, q_row, s_row, q_col_t, s_col_t, m, k,
                      t, widths[0] // TILE, (widths[0] + widths[1]) // TILE, d,
                      *x0.stride(), *x1.stride(), *x2.stride(),
                      HEAD_COLS=TILE if d % TILE == 0 else d, ROW_SPT=_ROW_SPT, COL_SPT=_COL_SPT, num_warps=_WARPS,
                      GROUP_M=group_m, **opts)


def quantize_128x1_transposed(x: torch.Tensor, q_t, s_t) -> None:
    """Fill the outputs of triton_quantize.quantize_128x1(x, layout="transposed") (allocated by
    the caller) for a 2-D x whose K is a multiple of 128: the same kernel without its 1x128 pass."""
    _launch(x, q_t, s_t, q_t, s_t, False, _ROW_SPT_128X1, _COL_SPT_128X1)


def swiglu_dual_transposed(mode: int, grad, a, b, outs: tuple, write_row: bool = True, write_col: bool = True) -> None:
    """Fill the four outputs of a triton_swiglu op (allocated by the caller, in quantize_1x128_128x1's
    layouts) for its mode (tile_math.FORWARD, GRAD_A, GRAD_B), or without write_row the last
    two only, without write_col the first two; the inputs a mode does not read may be any tensor
    of a's shape."""
    m, k = a.shape
    if k % TILE:
        raise ValueError(f"the Gluon quantizer needs K % 128 == 0, got inputs of shape {tuple(a.shape)}")
    if m == 0:
        return
    if _pipelinable(*{0: (a, b), 1: (grad, a, b), 2: (grad, a)}[mode]):
        _launch_pipelined_kernel(mode, grad, a, b, outs, write_row, write_col, _PIPE_STAGES_SWIGLU, 1,
                                 swiglu_launch_options(a.dtype, mode))
        return
    _launch_swiglu_dual(((m + TILE - 1) // TILE, k // TILE), grad, a, b, *outs, m, k,
                        grad.stride(0), grad.stride(1), a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                        MODE=mode, WRITE_ROW=write_row, WRITE_COL=write_col, ROW_SPT=_ROW_SPT, COL_SPT=_COL_SPT,
                        **swiglu_launch_options(a.dtype, mode))
