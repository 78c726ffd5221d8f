"""Blockwise-scaled FP8 GEMMs in Gluon for sm90 (Hopper): the MMA of the next K block stays in
flight while the previous block's partial product is scaled into the fp32 accumulator.

Same numerics and argument contract as `triton_gemm.gemm_blockwise` (see reference.py), but
the operands must be K-major in memory (A[M, K] with stride(1) == 1, B[K, N] with
stride(0) == 1, i.e. B.T row-major: the Fprop layout, or Dgrad/Wgrad on transposed FP8
copies) with 16-byte aligned row strides, because FP8 wgmma reads both operands K-major from
shared memory and TMA needs aligned strides. Tails in M, N and K come zero-filled from TMA.

Two kernels, both timed by `gemm_blockwise`'s autotuning (GLUON_CONFIGS, WS_CONFIGS):

`_gluon_gemm_kernel` (one BLOCK_M x BLOCK_N tile per CTA, 2 warpgroups for BLOCK_M = 128):
    TMA ring of NUM_STAGES (A, B) stages, one mbarrier each, all filled before the loop;
    iteration k:  wait stage k  ->  issue wgmma(k) async into a fresh partial (use_acc=False)
                  wgmma_wait(1)  -> partial k-1 done (k is still running on the tensor cores)
                  CTA barrier    -> every warpgroup is done with stage k-1: refill it by TMA
                  acc += partial(k-1) * sa(k-1) * sb(k-1)   (on the CUDA cores, overlapped)
    The scales for block k are loaded one iteration ahead, so their latency is hidden too.

`_gluon_gemm_ws_kernel` (persistent, warp-specialized, the faster one at large shapes): a
producer warpgroup keeps the stage ring filled by TMA across the CTA's tiles; two consumer
warpgroups each own half of the 128x128 tile and release a stage through its `empty` mbarrier
instead of a CTA barrier, promote as above (or serially: "ws"), and store through shared memory
by TMA while the next tile's K loop starts. setmaxnreg gives the consumers 240 registers each.
A 192x128 tile (WS_CONFIGS_192) has three consumers of 64 rows at 160 registers, serial only.

Import is harmless without a GPU; `available()` says whether Gluon is usable here.
"""

from __future__ import annotations

import functools
import os

import torch
import triton

from .launch import COMPILE_OPTIONS, size_bucket, sm_count
from .reference import TILE, _cdiv

try:  # Gluon is experimental: absent from older Triton, names move between releases
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
    _cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
    _GLUON_IMPORT_ERROR = None
except Exception as exc:  # pragma: no cover - depends on the installed Triton
    gluon = None
    _GLUON_IMPORT_ERROR = exc

__all__ = ["available", "supports", "gemm_blockwise", "GLUON_CONFIGS", "WS_CONFIGS", "grouped_supports",
           "gemm_blockwise_grouped", "GROUPED_WS_CONFIGS", "GROUPED_K_WS_CONFIGS"]


def available() -> bool:
    if gluon is None or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability()[0] == 9


def _k_major(a: torch.Tensor, b: torch.Tensor) -> bool:
    """A [M, K] and B [K, N] both K-major, as TMA reads them (B through its transpose)."""
    return _tma_compatible(a) and _tma_compatible(b.t())


def _tma_compatible(t: torch.Tensor) -> bool:
    """A 2-D tensor a TMA descriptor can address: rows contiguous, row stride and base 16-byte aligned."""
    return t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0


def supports(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Operands this kernel can take as they are (no copy)."""
    return available() and a.is_cuda and _k_major(a, b) and a.shape[1] > 0


if gluon is not None:

    @gluon.jit
    def _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M: gl.constexpr):
        """Grouped order (GROUP_M row blocks share their B column blocks in L2)."""
        num_pid_in_group = GROUP_M * num_pid_n
        group_id = tile_id // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = gl.minimum(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((tile_id % num_pid_in_group) % group_size_m)
        pid_n = (tile_id % num_pid_in_group) // group_size_m
        return pid_m, pid_n

    @gluon.jit
    def _promote(acc, part, sa, sb, SCALAR_SB: gl.constexpr):
        if SCALAR_SB:
            acc = acc + part * (sa * sb)[:, None]
        else:
            acc = acc + part * sa[:, None] * sb[None, :]
        # An opaque (non-pure) copy of acc: the next wgmma (also an opaque asm) cannot be
        # issued before every FMA above has read the partial, so the partial's registers are
        # free by then and LLVM reuses them for the next partial instead of copying an
        # in-flight wgmma accumulator at the loop back-edge (ptxas C7514 serialization).
        return gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [acc], dtype=gl.float32, is_pure=False,
                                         pack=1)

    @gluon.jit
    def _load_scales(as_ptrs, bs_ptrs, kblk, s_ask, s_bsk):
        return gl.load(as_ptrs + kblk * s_ask), gl.load(bs_ptrs + kblk * s_bsk)

    @gluon.jit
    def _load_scales_vec(as_ptrs, bs_base, cols_lin, kblk, s_ask, s_bsk, s_bsn, col_layout: gl.constexpr):
        """128x1 b scales: one coalesced load (32-bit offsets, one value a thread), then a
        layout conversion, instead of a 64-bit pointer per accumulator column in registers."""
        sb = gl.load(bs_base + kblk * s_bsk + cols_lin * s_bsn)
        return gl.load(as_ptrs + kblk * s_ask), gl.convert_layout(sb, col_layout)

    @gluon.jit
    def _refill(a_desc, b_desc, a_bufs, b_bufs, ready, kdone, num_k, off_m, off_n,
                NUM_STAGES: gl.constexpr, nbytes: gl.constexpr):
        """Block kdone's wgmma has completed in this warpgroup: once every warpgroup has,
        load block kdone + NUM_STAGES into its stage."""
        _cta_barrier()
        kn = kdone + NUM_STAGES
        sn = kdone % NUM_STAGES
        pred = kn < num_k
        mbarrier.expect(ready.index(sn), nbytes, pred=pred)
        _tma_load(a_desc, [off_m, kn * 128], ready.index(sn), a_bufs.index(sn), pred=pred)
        _tma_load(b_desc, [off_n, kn * 128], ready.index(sn), b_bufs.index(sn), pred=pred)

    @gluon.jit
    def _gluon_gemm_kernel(
        a_desc, b_desc, c_ptr, as_ptr, bs_ptr,
        M, N, K,
        s_cm, s_cn, s_asm, s_ask, s_bsk, s_bsn,
        B_BLOCK: gl.constexpr,
        BLOCK_M: gl.constexpr,
        BLOCK_N: gl.constexpr,
        NUM_STAGES: gl.constexpr,
        GROUP_M: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        BLOCK_K: gl.constexpr = 128
        pid_m, pid_n = _tile_coords(gl.program_id(0), gl.cdiv(M, BLOCK_M), gl.cdiv(N, BLOCK_N), GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N

        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [NUM_STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [NUM_STAGES, BLOCK_N, BLOCK_K], b_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(NUM_STAGES):
            mbarrier.init(ready.index(i), count=1)
        fence_async_shared()

        num_k = (K + BLOCK_K - 1) // BLOCK_K
        nbytes: gl.constexpr = (BLOCK_M + BLOCK_N) * BLOCK_K  # fp8: one byte an element
        for i in gl.static_range(NUM_STAGES):
            pred = i < num_k
            mbarrier.expect(ready.index(i), nbytes, pred=pred)
            _tma_load(a_desc, [off_m, i * BLOCK_K], ready.index(i), a_bufs.index(i), pred=pred)
            _tma_load(b_desc, [off_n, i * BLOCK_K], ready.index(i), b_bufs.index(i), pred=pred)

        WARPS_M: gl.constexpr = num_warps if BLOCK_M >= 16 * num_warps else BLOCK_M // 16
        WARPS_N: gl.constexpr = num_warps // WARPS_M
        mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[WARPS_M, WARPS_N], instr_shape=[16, BLOCK_N // WARPS_N, 32])
        row_layout: gl.constexpr = gl.SliceLayout(1, mma_layout)
        col_layout: gl.constexpr = gl.SliceLayout(0, mma_layout)

        offs_m = off_m + gl.arange(0, BLOCK_M, layout=row_layout)
        offs_n = off_n + gl.arange(0, BLOCK_N, layout=col_layout)
        rm = (offs_m % M).to(gl.int64)
        rn = (offs_n % N).to(gl.int64)
        as_ptrs = as_ptr + rm * s_asm
        gl.static_assert(BLOCK_N <= 128, "the two fp32 partials cap BLOCK_N at 128")
        SCALAR_SB: gl.constexpr = B_BLOCK
        if SCALAR_SB:
            bs_ptrs = bs_ptr + (off_n // 128) * s_bsn  # one 128x128 block column: a scalar
        else:
            lin_layout: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])
            cols_lin = (off_n + gl.arange(0, BLOCK_N, layout=lin_layout)) % N
            bs_ptrs = bs_ptr

        acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma_layout)
        zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma_layout)

        # Two partials, P0 and P1, in fixed registers: the loop is unrolled by two so that no
        # register copy ever touches an accumulator of a wgmma in flight (ptxas would then
        # serialize every wgmma). With 128x128 block scales the scales of a block are loaded one
        # step ahead (PREFETCH); 128x1 scales are vectors that would not fit in registers twice,
        # so they are loaded just before the wait on the block's wgmma.
        PREFETCH: gl.constexpr = SCALAR_SB
        if PREFETCH:
            sa0, sb0 = _load_scales(as_ptrs, bs_ptrs, 0, s_ask, s_bsk)
        mbarrier.wait(ready.index(0), 0)
        p0 = warpgroup_mma(a_bufs.index(0), b_bufs.index(0).permute((1, 0)), zero, use_acc=False, is_async=True)
        for k in range(1, num_k - 1, 2):
            # issue block k into P1, promote block k-1 from P0
            s1 = k % NUM_STAGES
            mbarrier.wait(ready.index(s1), (k // NUM_STAGES) & 1)
            p1 = warpgroup_mma(a_bufs.index(s1), b_bufs.index(s1).permute((1, 0)), zero, use_acc=False,
                               is_async=True)
            if PREFETCH:
                sa1, sb1 = _load_scales(as_ptrs, bs_ptrs, k, s_ask, s_bsk)
            else:
                sa0, sb0 = _load_scales_vec(as_ptrs, bs_ptr, cols_lin, k - 1, s_ask, s_bsk, s_bsn, col_layout)
            d0 = warpgroup_mma_wait(1, deps=(p0, ))
            _refill(a_desc, b_desc, a_bufs, b_bufs, ready, k - 1, num_k, off_m, off_n, NUM_STAGES, nbytes)
            acc = _promote(acc, d0, sa0, sb0, SCALAR_SB)
            # issue block k+1 into P0, promote block k from P1
            k2 = k + 1
            s0 = k2 % NUM_STAGES
            mbarrier.wait(ready.index(s0), (k2 // NUM_STAGES) & 1)
            p0 = warpgroup_mma(a_bufs.index(s0), b_bufs.index(s0).permute((1, 0)), zero, use_acc=False,
                               is_async=True)
            if PREFETCH:
                sa0, sb0 = _load_scales(as_ptrs, bs_ptrs, k2, s_ask, s_bsk)
            else:
                sa1, sb1 = _load_scales_vec(as_ptrs, bs_ptr, cols_lin, k, s_ask, s_bsk, s_bsn, col_layout)
            d1 = warpgroup_mma_wait(1, deps=(p1, ))
            _refill(a_desc, b_desc, a_bufs, b_bufs, ready, k, num_k, off_m, off_n, NUM_STAGES, nbytes)
            acc = _promote(acc, d1, sa1, sb1, SCALAR_SB)
        if num_k % 2 == 0:
            # one block left: issue it into P1, then drain both
            k = num_k - 1
            s1 = k % NUM_STAGES
            mbarrier.wait(ready.index(s1), (k // NUM_STAGES) & 1)
            p1 = warpgroup_mma(a_bufs.index(s1), b_bufs.index(s1).permute((1, 0)), zero, use_acc=False,
                               is_async=True)
            if PREFETCH:
                sa1, sb1 = _load_scales(as_ptrs, bs_ptrs, k, s_ask, s_bsk)
            else:
                sa0, sb0 = _load_scales_vec(as_ptrs, bs_ptr, cols_lin, k - 1, s_ask, s_bsk, s_bsn, col_layout)
            d0 = warpgroup_mma_wait(1, deps=(p0, ))
            acc = _promote(acc, d0, sa0, sb0, SCALAR_SB)
            if not PREFETCH:
                sa1, sb1 = _load_scales_vec(as_ptrs, bs_ptr, cols_lin, k, s_ask, s_bsk, s_bsn, col_layout)
            d1 = warpgroup_mma_wait(0, deps=(p1, ))
            acc = _promote(acc, d1, sa1, sb1, SCALAR_SB)
        else:
            if not PREFETCH:
                sa0, sb0 = _load_scales_vec(as_ptrs, bs_ptr, cols_lin, num_k - 1, s_ask, s_bsk, s_bsn, col_layout)
            d0 = warpgroup_mma_wait(0, deps=(p0, ))
            acc = _promote(acc, d0, sa0, sb0, SCALAR_SB)

        for i in gl.static_range(NUM_STAGES):
            mbarrier.invalidate(ready.index(i))

        c = acc.to(c_ptr.dtype.element_ty)
        c_ptrs = c_ptr + offs_m.to(gl.int64)[:, None] * s_cm + offs_n.to(gl.int64)[None, :] * s_cn
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        gl.store(c_ptrs, c, mask=mask)


    # ----------------------------------------------------------------------------------------
    # Warp-specialized persistent kernel: a TMA producer warpgroup and two consumer warpgroups
    # ----------------------------------------------------------------------------------------
    # What the WS kernel's tiles walk (its GROUPING): a dense GEMM, or MoE experts, rows grouped
    # (Fprop, Dgrad: the row tiles of triton_gemm_grouped.row_tile_table) or tokens grouped (Wgrad:
    # per expert, all its output tiles, each over the token blocks holding the expert's tokens).
    # `grouped` = (c_ptr, s_cg, s_cm, s_cn, table / offs, row tiles / experts, s_bsg), see
    # gemm_blockwise_grouped.
    @gluon.jit
    def _ws_row_tiles(M, grouped, BLOCK_M: gl.constexpr, GROUPING: gl.constexpr):
        """Row tiles the CTAs walk: M's; the row-tile table's entries; or M's for each expert."""
        if GROUPING == 1:
            return grouped[5]
        elif GROUPING == 2:
            return grouped[5] * gl.cdiv(M, BLOCK_M)
        else:
            return gl.cdiv(M, BLOCK_M)

    @gluon.jit
    def _ws_tile(tile_id, num_pid_m, num_pid_n, M, N, K, grouped, BLOCK_M: gl.constexpr,
                 BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr, GROUPING: gl.constexpr):
        """Where tile `tile_id` is: its first row of A and C, the end of its rows, its first row of
        B (B^T, K-major: with rows grouped, expert g's rows of the [G * N, K] stack), its number of
        K blocks, its column tile, its expert, its first K block and the expert's token range.
        Rows grouped: a row tile of the table (m_start, the group's end, the group, 1 if it
        multiplies), its column tiles in turn (an expert's B is shared by the CTAs at work on its
        rows); a tile that only writes zeros (rows past the last group) has no K block. Tokens
        grouped: the token blocks from the one holding the expert's first token to the one holding
        its last (none for an expert without tokens, whose tiles write zeros)."""
        num_k = gl.cdiv(K, 128)
        kb_first = 0
        k_start = 0
        k_end = K
        if GROUPING == 1:
            entry = grouped[4] + (tile_id // num_pid_n) * 4
            pid_n = tile_id % num_pid_n
            row0 = gl.load(entry)
            row_end = gl.load(entry + 1)
            group = gl.load(entry + 2)
            tile_k = gl.load(entry + 3) * num_k
        elif GROUPING == 2:
            tiles_m = gl.cdiv(M, BLOCK_M)
            group = tile_id // (tiles_m * num_pid_n)
            pid_m, pid_n = _tile_coords(tile_id % (tiles_m * num_pid_n), tiles_m, num_pid_n, GROUP_M)
            row0 = pid_m * BLOCK_M
            row_end = M
            offs_ptr = grouped[4]
            k_start = gl.minimum(gl.load(offs_ptr + gl.maximum(group - 1, 0)) * (group > 0).to(gl.int32), K)
            k_end = gl.maximum(gl.minimum(gl.load(offs_ptr + group), K), k_start)
            kb_first = k_start // 128
            tile_k = (gl.cdiv(k_end, 128) - kb_first) * (k_end > k_start).to(gl.int32)
        else:
            pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
            row0 = pid_m * BLOCK_M
            row_end = M
            group = 0
            tile_k = num_k
        b_row = pid_n * BLOCK_N
        if GROUPING == 1:
            b_row = group * N + b_row
        return row0, row_end, b_row, tile_k, pid_n, group, kb_first, k_start, k_end

    @gluon.jit
    def _zero_tokens_outside(a, lo, hi, WG_M: gl.constexpr):
        """Tokens grouped: the warpgroup's [WG_M, 128] A stage (its rows, the block's 128 tokens as
        K) with the tokens outside [lo, hi) set to zero in shared memory, so that the block's wgmma
        adds only the expert's tokens (a block at an expert's edge holds a neighbour's too). Each
        consumer warpgroup clears its own rows; the fence orders the stores before the wgmma's
        reads (async proxy), the barrier (of the warpgroup's partition) all its threads' stores."""
        layout: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [4, 1], [1, 0])
        vals = a.load(layout)
        t = gl.arange(0, 128, layout=gl.SliceLayout(0, layout))
        keep = (t >= lo) & (t < hi)
        a.store(gl.where(keep[None, :], vals, gl.zeros_like(vals)))
        fence_async_shared()
        _cta_barrier()

    @gluon.jit
    def _ws_producer(args, B_BLOCK: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                     NUM_STAGES: gl.constexpr, GROUP_M: gl.constexpr, OVERLAP: gl.constexpr,
                     SPLIT_N: gl.constexpr, HALF: gl.constexpr, GROUPING: gl.constexpr):
        """One warp: walks the CTA's tiles and K blocks in the consumers' order and keeps the
        NUM_STAGES-deep ring of (A 128x128, B 128x128) FP8 stages filled by TMA; a stage is
        reused once both consumer warpgroups have arrived on its `empty` barrier."""
        (a_desc, b_desc, c_desc, as_ptr, bs_ptr, M, N, K, s_asm, s_ask, s_bsk, s_bsn,
         a_bufs, b_bufs, ready, empty, grouped) = args
        nbytes: gl.constexpr = (BLOCK_M + BLOCK_N) * 128
        A_PARTS: gl.constexpr = BLOCK_M // 64 if BLOCK_M == 192 else 1  # see _a_stage_parts
        num_pid_m = _ws_row_tiles(M, grouped, BLOCK_M, GROUPING)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        it = 0
        for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            row0, row_end, b_row, tile_k, pid_n, group, kb_first, k_start, k_end = _ws_tile(
                tile_id, num_pid_m, num_pid_n, M, N, K, grouped, BLOCK_M, BLOCK_N, GROUP_M, GROUPING)
            for kk in range(tile_k):
                k = kb_first + kk
                s = it % NUM_STAGES
                # a fresh mbarrier counts as having completed the phase before 0: the first
                # pass over the ring does not wait
                mbarrier.wait(empty.index(s), ((it // NUM_STAGES) & 1) ^ 1)
                mbarrier.expect(ready.index(s), nbytes)
                for h in gl.static_range(A_PARTS):
                    _tma_load(a_desc, [row0 + h * (BLOCK_M // A_PARTS), k * 128], ready.index(s),
                              a_bufs.index(s * A_PARTS + h))
                _tma_load(b_desc, [b_row, k * 128], ready.index(s), b_bufs.index(s))
                it += 1

    @gluon.jit
    def _ws_issue(a_bufs, b_bufs, ready, zero, it, NUM_STAGES: gl.constexpr, ROW0: gl.constexpr,
                  WG_M: gl.constexpr, COL0: gl.constexpr, WG_N: gl.constexpr, A_PARTS: gl.constexpr = 1,
                  lo=0, hi=128, MASK_K: gl.constexpr = False):
        """Wait for the stage of the CTA's it-th K block, then start this warpgroup's wgmma on its
        [WG_M, WG_N] part of the tile (rows ROW0.., columns COL0..) into a fresh partial. With the
        A stage in A_PARTS buffers of WG_M rows, the warpgroup's rows are one of them. MASK_K: only
        the block's K columns [lo, hi) count (an expert's tokens, see _zero_tokens_outside)."""
        s = it % NUM_STAGES
        mbarrier.wait(ready.index(s), (it // NUM_STAGES) & 1)
        if A_PARTS == 1:
            a = a_bufs.index(s).slice(ROW0, WG_M)
        else:
            a = a_bufs.index(s * A_PARTS + ROW0 // WG_M)
        if MASK_K:
            if (lo > 0) | (hi < 128):
                _zero_tokens_outside(a, lo, hi, WG_M)
        return warpgroup_mma(a, b_bufs.index(s).slice(COL0, WG_N).permute((1, 0)), zero, use_acc=False, is_async=True)

    @gluon.jit
    def _ws_retire(acc, part, pending: gl.constexpr, empty, it, sa, sb, NUM_STAGES: gl.constexpr,
                   SCALAR_SB: gl.constexpr, col_layout: gl.constexpr):
        """Wait until at most `pending` wgmmas are in flight (so `part`, the it-th block's, is
        done), release its stage to the producer, promote it into acc. A 128x1 b-scale vector
        comes as loaded (one value a thread) and takes the accumulator's column layout here."""
        d = warpgroup_mma_wait(pending, deps=(part, ))
        mbarrier.arrive(empty.index(it % NUM_STAGES))
        if not SCALAR_SB:
            sb = gl.convert_layout(sb, col_layout)
        return _promote(acc, d, sa, sb, SCALAR_SB)

    @gluon.jit
    def _ws_k_loop_overlapped(acc, zero, a_bufs, b_bufs, ready, empty, it, num_k, as_ptrs, bs_ptrs, s_ask, s_bsk,
                              col_layout: gl.constexpr, B_BLOCK: gl.constexpr, NUM_STAGES: gl.constexpr,
                              ROW0: gl.constexpr, WG_M: gl.constexpr, COL0: gl.constexpr, WG_N: gl.constexpr):
        """The K loop of one tile with block k+1's wgmma in flight while block k is promoted: two
        partials in fixed registers (P0, P1), the loop unrolled by two, as in _gluon_gemm_kernel.
        Each block's scales load right after the promotion that last used their registers, two
        blocks before their own use (an L2 round trip is about one wgmma's time), and straight
        into those registers: a rotation through a temporary (sa0 = sa_next) made ptxas copy the
        loaded value at the loop's back-edge, waiting there for the load. `bs_ptrs` points at
        the b scales of the tile's block column (128x128 blocks: the same value for each row) or
        of its columns (128x1 tiles: one column a thread, `_ws_retire` lays them out)."""
        last = num_k - 1
        p0 = _ws_issue(a_bufs, b_bufs, ready, zero, it, NUM_STAGES, ROW0, WG_M, COL0, WG_N)
        sa0, sb0 = _load_scales(as_ptrs, bs_ptrs, 0, s_ask, s_bsk)
        sa1, sb1 = _load_scales(as_ptrs, bs_ptrs, gl.minimum(1, last), s_ask, s_bsk)
        for k in range(1, num_k - 1, 2):
            # P0 holds block k-1 (scales sa0/sb0), P1 gets block k (sa1/sb1)
            p1 = _ws_issue(a_bufs, b_bufs, ready, zero, it + k, NUM_STAGES, ROW0, WG_M, COL0, WG_N)
            acc = _ws_retire(acc, p0, 1, empty, it + k - 1, sa0, sb0, NUM_STAGES, B_BLOCK, col_layout)
            sa0, sb0 = _load_scales(as_ptrs, bs_ptrs, k + 1, s_ask, s_bsk)  # for the next iteration's first
            p0 = _ws_issue(a_bufs, b_bufs, ready, zero, it + k + 1, NUM_STAGES, ROW0, WG_M, COL0, WG_N)
            acc = _ws_retire(acc, p1, 1, empty, it + k, sa1, sb1, NUM_STAGES, B_BLOCK, col_layout)
            sa1, sb1 = _load_scales(as_ptrs, bs_ptrs, gl.minimum(k + 2, last), s_ask, s_bsk)  # and second
        if num_k % 2 == 0:
            p1 = _ws_issue(a_bufs, b_bufs, ready, zero, it + last, NUM_STAGES, ROW0, WG_M, COL0, WG_N)
            acc = _ws_retire(acc, p0, 1, empty, it + last - 1, sa0, sb0, NUM_STAGES, B_BLOCK, col_layout)
            acc = _ws_retire(acc, p1, 0, empty, it + last, sa1, sb1, NUM_STAGES, B_BLOCK, col_layout)
        else:
            acc = _ws_retire(acc, p0, 0, empty, it + last, sa0, sb0, NUM_STAGES, B_BLOCK, col_layout)
        return acc

    @gluon.jit
    def _ws_consumer(args, B_BLOCK: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                     NUM_STAGES: gl.constexpr, GROUP_M: gl.constexpr, OVERLAP: gl.constexpr,
                     SPLIT_N: gl.constexpr, HALF: gl.constexpr, GROUPING: gl.constexpr):
        """One warpgroup: rows [HALF * 64, (HALF + 1) * 64) of every tile. Per K block: wgmma into
        a fresh partial, wait for it, release the stage, promote the partial into the fp32
        accumulator with the block's scales. The other warpgroups' wgmmas keep the tensor cores
        busy during this one's promotion (DeepGEMM's schedule)."""
        (a_desc, b_desc, c_desc, as_ptr, bs_ptr, M, N, K, s_asm, s_ask, s_bsk, s_bsn,
         a_bufs, b_bufs, ready, empty, grouped) = args
        # the tile is split between the warpgroups by rows (64 x BLOCK_N each: two for BLOCK_M 128,
        # three for 192) or, with SPLIT_N, between two by columns (BLOCK_M x BLOCK_N / 2 each: a
        # 128x1 b-scale vector half as long per thread)
        WG_M: gl.constexpr = BLOCK_M if SPLIT_N else 64
        A_PARTS: gl.constexpr = BLOCK_M // 64 if BLOCK_M == 192 else 1  # see _a_stage_parts
        WG_N: gl.constexpr = BLOCK_N // 2 if SPLIT_N else BLOCK_N
        ROW0: gl.constexpr = 0 if SPLIT_N else HALF * WG_M
        COL0: gl.constexpr = HALF * WG_N if SPLIT_N else 0
        mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, WG_N, 32])
        row_layout: gl.constexpr = gl.SliceLayout(1, mma_layout)
        col_layout: gl.constexpr = gl.SliceLayout(0, mma_layout)
        lin_layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
        gl.static_assert(GROUPING != 2 or not (OVERLAP or SPLIT_N or BLOCK_M != 128),
                         "tokens grouped: the serial K loop of two 64-row consumers only")
        num_pid_m = _ws_row_tiles(M, grouped, BLOCK_M, GROUPING)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        zero = gl.zeros([WG_M, WG_N], gl.float32, mma_layout)
        if GROUPING == 0:
            c_smem = gl.allocate_shared_memory(c_desc.dtype, [WG_M, WG_N], c_desc.layout)
        it = 0
        for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            row0, row_end, b_row, tile_k, pid_n, group, kb_first, k_start, k_end = _ws_tile(
                tile_id, num_pid_m, num_pid_n, M, N, K, grouped, BLOCK_M, BLOCK_N, GROUP_M, GROUPING)
            off_m = row0 + ROW0
            off_n = pid_n * BLOCK_N + COL0
            offs_m = off_m + gl.arange(0, WG_M, layout=row_layout)
            as_ptrs = as_ptr + (offs_m % M).to(gl.int64) * s_asm
            cols_lin = (off_n + gl.arange(0, WG_N, layout=lin_layout)) % N  # 128x1 b scales: a vector
            bs_ptr_tile = bs_ptr
            if GROUPING == 1:  # the expert's 128x128 b scales
                bs_ptr_tile = bs_ptr + group.to(gl.int64) * grouped[6]
            if GROUPING == 2:  # the scales of the expert's first token block on (an expert without
                # tokens at the end has kb_first = K / 128: its tile loads block K / 128 - 1's, unused)
                kb_scales = gl.minimum(kb_first, gl.cdiv(K, 128) - 1)
                as_ptrs = as_ptrs + kb_scales * s_ask
                bs_ptr_tile = bs_ptr + kb_scales * s_bsk
            if B_BLOCK:
                # 128x128 b scales: one block column, the same value for every row, but loaded per
                # row ((offs_m % M) >> 31 is 0, which the compilers cannot prove): a warp-uniform
                # scalar load made ptxas move the value into a uniform register right after the
                # load, waiting there for it, before the next wgmma was issued. (Not with SPLIT_N:
                # four rows a thread there, and the extra registers spill.)
                bs_ptrs = bs_ptr_tile + (off_n // 128) * s_bsn
                if not SPLIT_N:
                    bs_ptrs = bs_ptrs + ((offs_m % M) >> 31)
            else:  # one column a thread, as loaded; the accumulator's column layout only when used
                bs_ptrs = bs_ptr_tile + cols_lin * s_bsn
            if not OVERLAP:
                sa, sb = _load_scales(as_ptrs, bs_ptrs, 0, s_ask, s_bsk)
            acc = gl.zeros([WG_M, WG_N], gl.float32, mma_layout)
            if OVERLAP:
                if GROUPING != 0:  # a tile of zeros (rows past the last expert's) has no K block to start with
                    if tile_k > 0:
                        acc = _ws_k_loop_overlapped(acc, zero, a_bufs, b_bufs, ready, empty, it, tile_k, as_ptrs,
                                                    bs_ptrs, s_ask, s_bsk, col_layout, B_BLOCK, NUM_STAGES, ROW0,
                                                    WG_M, COL0, WG_N)
                else:
                    acc = _ws_k_loop_overlapped(acc, zero, a_bufs, b_bufs, ready, empty, it, tile_k, as_ptrs, bs_ptrs,
                                                s_ask, s_bsk, col_layout, B_BLOCK, NUM_STAGES, ROW0, WG_M, COL0, WG_N)
                it += tile_k
            else:
                for k in range(tile_k):
                    s = it % NUM_STAGES
                    if GROUPING == 2:  # the block's tokens outside the expert's cleared first
                        first_token = (kb_first + k) * 128
                        part = _ws_issue(a_bufs, b_bufs, ready, zero, it, NUM_STAGES, ROW0, WG_M, COL0, WG_N,
                                         A_PARTS, k_start - first_token, k_end - first_token, True)
                    else:
                        part = _ws_issue(a_bufs, b_bufs, ready, zero, it, NUM_STAGES, ROW0, WG_M, COL0, WG_N,
                                         A_PARTS)
                    # the next block's scales load while this block's wgmma runs
                    kn = gl.minimum(k + 1, tile_k - 1)
                    sa_next, sb_next = _load_scales(as_ptrs, bs_ptrs, kn, s_ask, s_bsk)
                    part = warpgroup_mma_wait(0, deps=(part, ))
                    mbarrier.arrive(empty.index(s))
                    if B_BLOCK:
                        acc = acc + part * (sa * sb)[:, None]
                    else:
                        acc = acc + part * sa[:, None] * gl.convert_layout(sb, col_layout)[None, :]
                    sa, sb = sa_next, sb_next
                    it += 1
            if GROUPING != 0:
                # a masked store from the registers: the rows of the tile past its expert's end are
                # the next expert's, written by another CTA (a TMA store would race with it); with
                # tokens grouped, into the expert's own matrix out[g]
                (c_ptr, s_cg, s_cm, s_cn) = (grouped[0], grouped[1], grouped[2], grouped[3])
                offs_n = off_n + gl.arange(0, WG_N, layout=col_layout)
                c_ptrs = (c_ptr + group.to(gl.int64) * s_cg + offs_m.to(gl.int64)[:, None] * s_cm
                          + offs_n.to(gl.int64)[None, :] * s_cn)
                gl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty),
                         mask=(offs_m < row_end)[:, None] & (offs_n < N)[None, :])
            else:
                # epilogue through shared memory and a TMA store (tails clipped by TMA), left in flight
                # while the next tile's K loop runs; its buffer is reused once the store has read it
                tma.store_wait(0)
                c_smem.store(acc.to(c_desc.dtype))
                fence_async_shared()
                _tma_store(c_desc, [off_m, off_n], c_smem)
        if GROUPING == 0:
            tma.store_wait(0)

    @gluon.jit
    def _gluon_gemm_ws_kernel(
        a_desc, b_desc, c_desc, as_ptr, bs_ptr,
        M, N, K,
        s_asm, s_ask, s_bsk, s_bsn,
        c_ptr, s_cg, s_cm, s_cn, tiles_ptr, row_tiles, s_bsg,  # MoE experts only (else None / 0): see _ws_row_tiles
        B_BLOCK: gl.constexpr,
        BLOCK_M: gl.constexpr,
        BLOCK_N: gl.constexpr,
        NUM_STAGES: gl.constexpr,
        GROUP_M: gl.constexpr,
        CONSUMER_REGS: gl.constexpr,
        OVERLAP: gl.constexpr,
        SPLIT_N: gl.constexpr,
        GROUPING: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        """Persistent (grid = min(SMs, tiles)), warp-specialized: the default partition (4 warps)
        is the TMA producer, 4-warp workers are the consumer warpgroups (HALF 0, 1[, 2]): two for
        BLOCK_M 128, three for BLOCK_M 192 (serial K loop only: the overlapped one's accumulator
        and two partials do not fit the 160 registers each of three consumers can have). Each
        stage's `empty` barrier counts one arrival per consumer."""
        gl.static_assert(num_warps == 4, "the default partition is one warpgroup")
        gl.static_assert(BLOCK_M == 128 or (BLOCK_M == 192 and not SPLIT_N and not OVERLAP),
                         "two 64-row consumer warpgroups, or three with the serial K loop")
        NUM_CONSUMERS: gl.constexpr = BLOCK_M // 64 if not SPLIT_N else 2
        A_PARTS: gl.constexpr = BLOCK_M // 64 if BLOCK_M == 192 else 1  # see _a_stage_parts
        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [NUM_STAGES * A_PARTS, BLOCK_M // A_PARTS, 128],
                                           a_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [NUM_STAGES, BLOCK_N, 128], b_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(NUM_STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=NUM_CONSUMERS)
        fence_async_shared()
        args = (a_desc, b_desc, c_desc, as_ptr, bs_ptr, M, N, K, s_asm, s_ask, s_bsk, s_bsn,
                a_bufs, b_bufs, ready, empty, (c_ptr, s_cg, s_cm, s_cn, tiles_ptr, row_tiles, s_bsg))
        if NUM_CONSUMERS == 3:
            gl.warp_specialize([
                (_ws_producer, (args, B_BLOCK, BLOCK_M, BLOCK_N, NUM_STAGES, GROUP_M, OVERLAP, SPLIT_N, 0, GROUPING)),
                (_ws_consumer, (args, B_BLOCK, BLOCK_M, BLOCK_N, NUM_STAGES, GROUP_M, OVERLAP, SPLIT_N, 0, GROUPING)),
                (_ws_consumer, (args, B_BLOCK, BLOCK_M, BLOCK_N, NUM_STAGES, GROUP_M, OVERLAP, SPLIT_N, 1, GROUPING)),
                (_ws_consumer, (args, B_BLOCK, BLOCK_M, BLOCK_N, NUM_STAGES, GROUP_M, OVERLAP, SPLIT_N, 2, GROUPING)),
            ], [4, 4, 4], [CONSUMER_REGS, CONSUMER_REGS, CONSUMER_REGS])
        else:
            gl.warp_specialize([
                (_ws_producer, (args, B_BLOCK, BLOCK_M, BLOCK_N, NUM_STAGES, GROUP_M, OVERLAP, SPLIT_N, 0, GROUPING)),
                (_ws_consumer, (args, B_BLOCK, BLOCK_M, BLOCK_N, NUM_STAGES, GROUP_M, OVERLAP, SPLIT_N, 0, GROUPING)),
                (_ws_consumer, (args, B_BLOCK, BLOCK_M, BLOCK_N, NUM_STAGES, GROUP_M, OVERLAP, SPLIT_N, 1, GROUPING)),
            ], [4, 4], [CONSUMER_REGS, CONSUMER_REGS])


# (BLOCK_M, BLOCK_N, num_warps, NUM_STAGES): the fp32 accumulator and two fp32 partials must
# fit in registers, which caps a warpgroup at a 64x128 share of the tile.
GLUON_CONFIGS = [(128, 128, 8, 4), (128, 128, 8, 5), (128, 128, 8, 3), (64, 128, 4, 4)]
# (BLOCK_M, BLOCK_N, num_warps, NUM_STAGES, "ws2" | "ws" | "ws2_n" | "ws_n"[, GROUP_M]): the warp-specialized
# persistent kernel, with the overlapped ("ws2") or the serial ("ws": wgmma, wait, promote) K loop;
# its 4 warps are the producer's partition, the two consumer warpgroups come on top.
# "_n": the two consumer warpgroups split the tile by columns (each 128 x 64) instead of rows. The
# four: the best of the schedules swept at the issue's large shapes (H200, RESULTS_gemm.md, session
# 11): "ws2" for 128x128 b scales; for 128x1 ones (Wgrad), where "ws2" then spilled, "ws2_n" and "ws".
# Since session 12 "ws2" does not spill there and the autotuner picked it at every large Wgrad shape.
WS_CONFIGS = [(128, 128, 4, 6, "ws2", 8), (128, 128, 4, 5, "ws2", 8), (128, 128, 4, 6, "ws2_n", 8),
              (128, 128, 4, 5, "ws", 16)]

# A 192 x 128 tile (three consumer warpgroups of 64 rows, serial K loop, 4 stages of 40 KiB): per
# output element, a sixth less operand traffic from L2 than 128 x 128 tiles. On an H100 (session 18,
# benchmarks/RESULTS.md) this config beat the best 128 x 128 one by 0.8-4.7% in Fprop and Dgrad at
# 8192^3, 16384x4096x14336 and 16384x14336x4096 (but Dgrad 8192^3, -1%; all still 0.83-0.96x
# cuBLAS), lost by 3-4% at 4096^3 and in Wgrad by 1.5-5%: a default candidate, which the
# autotuner takes where it is fastest.
# FP8PASS_GEMM_WS192=0 (read at import) leaves it out (fewer kernels to compile and time).
WS_CONFIGS_192 = [(192, 128, 4, 4, "ws", 8)]
_WS192_CANDIDATE = os.environ.get("FP8PASS_GEMM_WS192", "1") != "0"


def ws_candidates() -> list:
    """The warp-specialized configs the autotuner times by default."""
    return WS_CONFIGS + (WS_CONFIGS_192 if _WS192_CANDIDATE else [])


_choice_cache: dict = {}


def _launch(a, a_scale, b, b_scale, out, cfg):
    if len(cfg) >= 5:
        return _launch_ws(a, a_scale, b, b_scale, out, cfg)
    bm, bn, warps, stages = cfg
    m, k = a.shape
    n = b.shape[1]
    a_desc, b_desc = _descriptors(a, b, bm, bn)
    b_block = b_scale.shape[1] != n
    grid = (_cdiv(m, bm) * _cdiv(n, bn),)
    _gluon_gemm_kernel[grid](
        a_desc, b_desc, out, a_scale, b_scale, m, n, k,
        out.stride(0), out.stride(1), a_scale.stride(0), a_scale.stride(1), b_scale.stride(0), b_scale.stride(1),
        B_BLOCK=b_block, BLOCK_M=bm, BLOCK_N=bn, NUM_STAGES=stages, GROUP_M=8, num_warps=warps, **COMPILE_OPTIONS,
    )
    return out


@functools.lru_cache(maxsize=None)
def _smem_layout(rows: int, cols: int, dtype_name: str):
    """The NVMMA shared layout of a [rows, cols] TMA block (built once: a launch is host-bound at
    small shapes)."""
    return gl.NVMMASharedLayout.get_default_for([rows, cols], getattr(gl, dtype_name))


def _a_stage_parts(bm: int) -> int:
    """Buffers one stage of A is loaded into: Gluon's shared-memory and TMA blocks must have
    power-of-two shapes, so a 192-row A stage is three 64-row ones (one per consumer warpgroup)."""
    return bm // 64 if bm == 192 else 1


def _descriptors(a, b, bm, bn):
    bm //= _a_stage_parts(bm)
    return (TensorDescriptor.from_tensor(a, [bm, TILE], _smem_layout(bm, TILE, "float8e4nv")),
            TensorDescriptor.from_tensor(b.t(), [bn, TILE], _smem_layout(bn, TILE, "float8e4nv")))


# Registers: with two consumers the kernel runs 12 warps (the producer's warpgroup and two consumer
# warpgroups), so at launch each thread may hold at most 65536 / 384 = 170 registers; setmaxnreg
# then moves the consumers up to WS_CONSUMER_REGS and the producer down to what is left
# (3 * 168 - 2 * 240 = 24, setmaxnreg's minimum). 240 keeps the overlapped schedule's accumulator
# and two partials (64 registers each) free of spills with 128x128 b scales. With three consumers
# (BLOCK_M 192): 16 warps at 128, consumers 160 (4 * 128 - 3 * 160 = 32 left to the producer).
_SETMAXNREG_MIN = 24


def ws_registers(consumers: int) -> tuple[int, int]:
    """(registers per thread at launch, per consumer thread after setmaxnreg) for a WS kernel of
    one producer and `consumers` consumer warpgroups: the SM's 65536 registers shared out in
    setmaxnreg's steps of 8."""
    launch = 65536 // (128 * (1 + consumers)) // 8 * 8
    return launch, (launch * (1 + consumers) - _SETMAXNREG_MIN) // consumers // 8 * 8


_WS_LAUNCH_REGS, WS_CONSUMER_REGS = ws_registers(2)
assert (_WS_LAUNCH_REGS, WS_CONSUMER_REGS) == (168, 240)


_GL_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
_SMEM_BYTES = 232448  # sm90's largest shared-memory allocation for one CTA (227 KiB)


def _launch_ws(a, a_scale, b, b_scale, out, cfg):
    bm, bn, warps, stages, kind, *rest = cfg
    group_m = rest[0] if rest else 8
    m, k = a.shape
    n = b.shape[1]
    if not _tma_compatible(out):  # the epilogue stores by TMA: through a contiguous buffer
        tmp = torch.empty((m, n), dtype=out.dtype, device=out.device)
        return out.copy_(_launch_ws(a, a_scale, b, b_scale, tmp, cfg))
    # shared memory: the stage ring, plus the consumer warpgroups' shares of the output tile (one tile in all)
    c_bytes = bm * bn * out.element_size()
    stages = min(stages, (_SMEM_BYTES - c_bytes - 1024) // ((bm + bn) * TILE))
    a_desc, b_desc = _descriptors(a, b, bm, bn)
    split_n = kind.endswith("_n")  # the warpgroups split the tile by columns, not rows
    consumers = 2 if split_n else bm // 64
    launch_regs, consumer_regs = ws_registers(consumers)
    c_block = [bm, bn // 2] if split_n else [64, bn]
    c_desc = TensorDescriptor.from_tensor(out, c_block, _smem_layout(*c_block, _GL_DTYPES[out.dtype]))
    b_block = b_scale.shape[1] != n
    tiles = _cdiv(m, bm) * _cdiv(n, bn)
    grid = (min(tiles, sm_count(a.device)),)
    _gluon_gemm_ws_kernel[grid](
        a_desc, b_desc, c_desc, a_scale, b_scale, m, n, k,
        a_scale.stride(0), a_scale.stride(1), b_scale.stride(0), b_scale.stride(1), None, 0, 0, 0, None, 0, 0,
        B_BLOCK=b_block, BLOCK_M=bm, BLOCK_N=bn, NUM_STAGES=stages, GROUP_M=group_m, CONSUMER_REGS=consumer_regs,
        OVERLAP=kind.startswith("ws2"), SPLIT_N=split_n, GROUPING=0, num_warps=warps, maxnreg=launch_regs,
        **COMPILE_OPTIONS,
    )
    return out


# The grouped (MoE experts) forms of the WS kernel. Rows grouped (Fprop, Dgrad): the overlapped
# schedule with 128x128 b scales, the fastest for dense Fprop/Dgrad, and the serial one (GROUP_M is
# not used: the row-tile table sets the order). Tokens grouped (Wgrad): the serial schedule only
# (the tokens of a block outside its expert are cleared in shared memory before its wgmma, which
# the overlapped one's registers leave no room for). 128-row tiles, no column split.
GROUPED_WS_CONFIGS = [(128, 128, 4, 6, "ws2"), (128, 128, 4, 5, "ws")]
GROUPED_K_WS_CONFIGS = [(128, 128, 4, 5, "ws", 8)]


def grouped_supports(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Grouped operands this kernel takes as they are. Rows grouped (a [S, K], b [G, K, N], as
    torch._grouped_mm's 2-D x 3-D form): a K-major, and the experts' B^T stacked as one K-major
    [G * N, K] matrix (b.transpose(1, 2) contiguous but for its row stride). Tokens grouped (a [M,
    S], b [S, N], 2-D x 2-D): both K-major along the S tokens. All TMA-aligned."""
    if not available() or not a.is_cuda or a.shape[1] == 0:
        return False
    if b.dim() == 2:
        return _k_major(a, b)
    if b.dim() != 3:
        return False
    bt = b.transpose(1, 2)
    return (_tma_compatible(a) and bt.stride(2) == 1 and bt.stride(0) == bt.shape[1] * bt.stride(1)
            and (bt.stride(1) * bt.element_size()) % 16 == 0 and bt.data_ptr() % 16 == 0)


def gemm_blockwise_grouped(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                           groups: torch.Tensor, out: torch.Tensor, config: tuple | None = None) -> torch.Tensor:
    """MoE experts, as triton_gemm_grouped.gemm_blockwise_grouped (operands as `grouped_supports`
    says; `out` any strides):
    * rows grouped, b [G, K, N]: out[S, N] = per expert g, a[rows of g] @ b[g], 128x128 b scales
      per expert (b_scale [G, K/128, N/128]); `groups` is the row-tile table
      (triton_gemm_grouped.row_tile_table(offs, S, 128)), which decides every row of `out` (rows
      past the last expert get zeros);
    * tokens grouped, b [S, N]: out[G, M, N], out[g] = a[:, tokens of g] @ b[tokens of g], 128x1
      scales along the tokens on both; `groups` is torch._grouped_mm's offs (int32 group ends)."""
    rows_grouped = b.dim() == 3
    bm, bn, warps, stages, kind, *rest = config or (GROUPED_WS_CONFIGS if rows_grouped else GROUPED_K_WS_CONFIGS)[0]
    group_m = rest[0] if rest else 1  # tokens grouped: the order of an expert's output tiles
    if not rows_grouped and kind != "ws":
        raise ValueError(f"tokens grouped: the serial 'ws' schedule only, not {kind!r}")
    if rows_grouped:
        experts, k, n = b.shape
        m = a.shape[0]
        b_kn = b.transpose(1, 2).reshape(experts * n, k).t()  # a view (grouped_supports)
        count, s_cg, bs_strides = groups.shape[0], 0, (b_scale.stride(1), b_scale.stride(2))
    else:
        m, k = a.shape
        n = b.shape[1]
        b_kn = b
        count, s_cg, bs_strides = groups.shape[0], out.stride(0), (b_scale.stride(0), b_scale.stride(1))
    if out.numel() == 0:
        return out
    a_desc, b_desc = _descriptors(a, b_kn, bm, bn)
    stages = min(stages, (_SMEM_BYTES - 1024) // ((bm + bn) * TILE))
    launch_regs, consumer_regs = ws_registers(2)
    row_tiles = count if rows_grouped else count * _cdiv(m, bm)
    grid = (min(row_tiles * _cdiv(n, bn), sm_count(a.device)),)
    _gluon_gemm_ws_kernel[grid](
        a_desc, b_desc, None, a_scale, b_scale, m, n, k,
        a_scale.stride(0), a_scale.stride(1), *bs_strides,
        out, s_cg, out.stride(-2), out.stride(-1), groups, count, b_scale.stride(0) if rows_grouped else 0,
        B_BLOCK=rows_grouped, BLOCK_M=bm, BLOCK_N=bn, NUM_STAGES=stages, GROUP_M=group_m,
        CONSUMER_REGS=consumer_regs, OVERLAP=kind == "ws2", SPLIT_N=False, GROUPING=1 if rows_grouped else 2,
        num_warps=warps, maxnreg=launch_regs, **COMPILE_OPTIONS,
    )
    return out


def gemm_blockwise(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                   out_dtype: torch.dtype, *, config: tuple | None = None, configs: tuple | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """K-major operands only (see `supports`). Without `config`, the first call for a
    (shape, pairing, dtype) times `configs` (default: ws_candidates() and GLUON_CONFIGS, i.e. both
    kernels) and keeps the fastest."""
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return out
    if k == 0:  # no K block to wait for: the kernels would wait forever
        return out.zero_()
    if config is not None:
        return _launch(a, a_scale, b, b_scale, out, config)
    configs = tuple(configs) if configs is not None else tuple(ws_candidates() + GLUON_CONFIGS)
    # M and K by size bucket, as the dispatcher's key: a new sequence length reuses the choice
    key = (size_bucket(m), n, size_bucket(k), b_scale.shape[1] != n, out_dtype, a_scale.stride(0) == 1,
           b_scale.stride(0) == 1, configs)
    cfg = _choice_cache.get(key)
    if cfg is None:
        if torch.cuda.is_current_stream_capturing():
            cfg = configs[0]
        else:
            best = None
            for c in configs:
                try:
                    t = triton.testing.do_bench(lambda: _launch(a, a_scale, b, b_scale, out, c),
                                                warmup=5, rep=20, return_mode="median")
                except Exception:  # a config that does not compile here is skipped
                    continue
                if best is None or t < best[0]:
                    best = (t, c)
            if best is None:
                raise RuntimeError("no Gluon GEMM config compiled on this device")
            cfg = best[1]
        _choice_cache[key] = cfg
    return _launch(a, a_scale, b, b_scale, out, cfg)
