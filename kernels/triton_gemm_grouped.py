"""Grouped blockwise-scaled FP8 GEMM in Triton: MoE experts (reference.gemm_blockwise_grouped).

Two kinds of grouping, as torch._grouped_mm's 2-D x 3-D and 2-D x 2-D forms, with the groups
given by `offs` (int32, each group's cumulative end, on the device):

  * rows grouped (Fprop, Dgrad; GROUP_K=False): out[S, N], the rows [offs[g-1], offs[g]) of
    A[S, K] times B[g] [K, N] (128x128 block scales per group).
  * K grouped (Wgrad; GROUP_K=True): out[G, M, N], out[g] = A[:, K rows of g] @ B[K rows of g, :]
    with 128x1 scales along K (the token dim) on both operands, tiles of the whole token dim.

The inner loop is triton_gemm's: one `tl.dot` per 128-wide K block, scaled by both scales and
added into an FP32 accumulator (the promotion every 128).

Work split. Rows grouped: a 1-D grid of (row tile, N tile) programs over cdiv(S, BLOCK_M) + G row
tiles (each group may end in a partial tile); a program finds its group by walking the G offsets
(the G ends loaded as one vector, a running sum of tiles per group), and row tiles past offs[-1]
write zeros, so every row of the output is written without a separate fill. K grouped: one program
per (group, M tile, N tile); its K loop covers the 128-token blocks that hold the group's rows,
with the rows of other groups masked to zero on load, and an empty group writes zeros.

On sm90 `gemm_blockwise_grouped` also has the warp-specialized Gluon kernel (triton_gemm_gluon,
TMA loads) do either grouping: rows grouped walking the same row tiles, written by `row_tile_table`
for it; tokens grouped clearing the other experts' tokens of a shared 128-token block in shared
memory before its wgmma. It keeps whichever of the two ran faster at the first call per shape,
once their outputs agree.

The offsets are not checked here (that would need a device sync): ends past the token count are
clamped; they must not decrease (as torch._grouped_mm requires); the CPU kernel raises on both.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
import triton
import triton.language as tl

from .launch import COMPILE_OPTIONS, size_bucket
from .reference import TILE, _cdiv
from .triton_gemm import GEMM_CONFIGS, _bench

__all__ = ["gemm_blockwise_grouped", "GROUPED_CONFIGS", "row_tile_table"]


@triton.jit
def _row_tile(tile, offs_ptr, G, M, BLOCK_M: tl.constexpr, G_POW2: tl.constexpr):
    """Rows grouped: row tile `tile` starts at m_start, its group ends at m_end (the tile's rows are
    [m_start, min(m_start + BLOCK_M, m_end))). A group's rows form
    cdiv(size, BLOCK_M) tiles, in group order; past the last group's end the rows up to M form
    tiles too (in_tail, group G: they write zeros); later tiles have m_start >= M. The G group ends
    are loaded as one vector, the tiles per group summed, and the group found by counting the sums
    <= tile (a serial walk over G scalar loads took as long as a short K loop at 128 experts)."""
    g_idx = tl.arange(0, G_POW2)
    ends = tl.minimum(tl.load(offs_ptr + g_idx, mask=g_idx < G, other=0), M)
    starts = tl.minimum(tl.load(offs_ptr + g_idx - 1, mask=(g_idx > 0) & (g_idx < G), other=0), M)
    n_tiles = tl.where(g_idx < G, tl.cdiv(tl.maximum(ends - starts, 0), BLOCK_M), 0)
    tiles_through = tl.cumsum(n_tiles, 0)
    group = tl.sum((tiles_through <= tile).to(tl.int32), 0)
    tiles_before = tl.sum(tl.where(g_idx < group, n_tiles, 0), 0)
    m_start = tl.sum(tl.where(g_idx == group, starts, 0), 0) + (tile - tiles_before) * BLOCK_M
    m_end = tl.sum(tl.where(g_idx == group, ends, 0), 0)
    in_tail = group >= G
    m_start = tl.where(in_tail, tl.max(ends, 0) + (tile - tiles_before) * BLOCK_M, m_start)
    m_end = tl.where(in_tail, M, m_end)
    return m_start, m_end, group, in_tail


@triton.jit
def _row_tiles_kernel(offs_ptr, table_ptr, G, M, BLOCK_M: tl.constexpr, G_POW2: tl.constexpr):
    """One row tile's entry of the table the warp-specialized Gluon kernel reads (it cannot call
    plain-Triton helpers): (m_start, m_end, group, 1 if it multiplies, 0 if it only writes zeros),
    as _row_tile gives them."""
    tile = tl.program_id(0)
    m_start, m_end, group, in_tail = _row_tile(tile, offs_ptr, G, M, BLOCK_M, G_POW2)
    row = table_ptr + tile * 4
    tl.store(row, m_start)
    tl.store(row + 1, m_end)
    tl.store(row + 2, tl.minimum(group, G - 1))
    tl.store(row + 3, tl.where(in_tail, 0, 1))


def row_tile_table(offs: torch.Tensor, rows: int, block_m: int) -> torch.Tensor:
    """int32 [cdiv(rows, block_m) + G, 4]: each row tile's (m_start, m_end, group, multiplies) for
    `rows` rows grouped by `offs` (at most that many tiles: each group may end in a partial one)."""
    groups = offs.shape[0]
    tiles = _cdiv(rows, block_m) + groups
    table = torch.empty((tiles, 4), dtype=torch.int32, device=offs.device)
    _row_tiles_kernel[(tiles,)](offs.contiguous(), table, groups, rows, BLOCK_M=block_m,
                                G_POW2=triton.next_power_of_2(groups))
    return table


@triton.jit(do_not_specialize=["M_KEY", "K_KEY"])
def _grouped_gemm_kernel(
    a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, offs_ptr,
    M, N, K, G,  # rows grouped: M = S rows of A; K grouped: K = S tokens
    s_am, s_ak, s_bg, s_bk, s_bn, s_cg, s_cm, s_cn,
    s_asm, s_ask, s_bsg, s_bsk, s_bsn,
    LAYOUT,  # autotune key only: 2 * (A is K-major) + (B is K-major)
    M_KEY, K_KEY,  # autotune key only: M and K by size bucket (one of them the routed token count)
    GROUP_K: tl.constexpr,  # False: rows of A grouped, B per group in 128x128 blocks; True: K grouped, 128x1
    G_POW2: tl.constexpr,  # G rounded up to a power of two (the lanes of the group lookup)
    EVEN_K: tl.constexpr,  # K % 128 == 0: rows-grouped loads need no K mask (Fprop/Dgrad as the pass emits them)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    BLOCK_K: tl.constexpr = 128
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_n = pid % num_pid_n
    tile = pid // num_pid_n
    if GROUP_K:
        num_pid_m = tl.cdiv(M, BLOCK_M)
        group = tile // num_pid_m
        m_start = (tile % num_pid_m) * BLOCK_M
        m_end = M
        k_start = tl.where(group > 0, tl.load(offs_ptr + tl.maximum(group - 1, 0)), 0)
        k_start = tl.minimum(k_start, K)
        k_end = tl.maximum(tl.minimum(tl.load(offs_ptr + group), K), k_start)
        kb_first = k_start // BLOCK_K
        kb_last = tl.cdiv(k_end, BLOCK_K)
        kb_last = tl.where(k_end > k_start, kb_last, kb_first)  # an empty group: no K block
        b_base = b_ptr
        bs_base = bs_ptr
        c_base = c_ptr + group.to(tl.int64) * s_cg
    else:
        m_start, m_end, group, in_tail = _row_tile(tile, offs_ptr, G, M, BLOCK_M, G_POW2)
        group = tl.minimum(group, G - 1)
        k_start = 0
        k_end = K
        kb_first = 0
        kb_last = tl.where(in_tail, 0, tl.cdiv(K, BLOCK_K))
        b_base = b_ptr + group.to(tl.int64) * s_bg
        bs_base = bs_ptr + group.to(tl.int64) * s_bsg
        c_base = c_ptr

    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_m < m_end
    # out-of-range rows/cols read row 0 / a valid column: loads need no row mask, the store has one
    rm = tl.where(row_ok, offs_m, 0).to(tl.int64)
    rn = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(kb_first, kb_last):
        k_idx = kb * BLOCK_K + offs_k
        a_ptrs = a_ptr + rm[:, None] * s_am + k_idx[None, :].to(tl.int64) * s_ak
        b_ptrs = b_base + k_idx[:, None].to(tl.int64) * s_bk + rn[None, :] * s_bn
        if GROUP_K or not EVEN_K:  # a group's first and last token blocks hold other groups' rows
            k_ok = (k_idx >= k_start) & (k_idx < k_end)
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
        else:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        sa = tl.load(as_ptr + rm * s_asm + kb * s_ask)
        if GROUP_K:
            sb = tl.load(bs_base + kb * s_bsk + rn * s_bsn)  # 128x1: one scale per column
        else:
            sb = tl.load(bs_base + kb * s_bsk + (rn // BLOCK_K) * s_bsn)  # 128x128: one per block
        acc += tl.dot(a, b) * sa[:, None] * sb[None, :]

    c = acc.to(c_ptr.dtype.element_ty)
    c_ptrs = c_base + offs_m.to(tl.int64)[:, None] * s_cm + offs_n.to(tl.int64)[None, :] * s_cn
    tl.store(c_ptrs, c, mask=row_ok[:, None] & (offs_n < N)[None, :])


# triton_gemm's candidates (the same inner loop and register budget; FP8PASS_GEMM_CONFIGS sets
# both), without its GROUP_M tile order; 64-row tiles also waste less on each group's last tile.
GROUPED_CONFIGS = [triton.Config({k: v for k, v in c.kwargs.items() if k != "GROUP_M"}, num_warps=c.num_warps,
                                 num_stages=c.num_stages) for c in GEMM_CONFIGS]


# The groups' sizes are not in the key (they change every step); G, the shape and layouts are,
# M and K by size bucket (launch.size_bucket: a new token count does not autotune again).
_KEY = ["M_KEY", "N", "K_KEY", "G", "LAYOUT", "GROUP_K", "EVEN_K"]
try:
    _grouped_gemm_kernel_tuned = triton.autotune(configs=GROUPED_CONFIGS, key=_KEY, do_bench=_bench)(
        _grouped_gemm_kernel)
except TypeError:  # an older Triton without the do_bench hook
    _grouped_gemm_kernel_tuned = triton.autotune(configs=GROUPED_CONFIGS, key=_KEY)(_grouped_gemm_kernel)


# On sm90 the warp-specialized Gluon kernel too (rows grouped: walking row_tile_table's tiles;
# tokens grouped: clearing each block's tokens of other experts in shared memory), the faster of
# it and this one kept per key (timed at the first call; the group sizes are not in the key).
_choice_cache: dict = {}
_KERNELS = ("auto", "triton", "ws")
# What the op runs (kernel=None): FP8PASS_GROUPED_KERNEL=triton|ws|auto (read at import; benchmarks
# may also set the attribute between runs) for A/B measurements of whole steps.
DEFAULT_KERNEL = os.environ.get("FP8PASS_GROUPED_KERNEL", "auto")
if DEFAULT_KERNEL not in _KERNELS:
    raise ValueError(f"FP8PASS_GROUPED_KERNEL must be one of {_KERNELS}, not {DEFAULT_KERNEL!r}")


def _ws_groups(offs: torch.Tensor, a: torch.Tensor, b: torch.Tensor, config: tuple) -> torch.Tensor:
    """What the WS kernel walks: the row-tile table (rows grouped), or the group ends themselves."""
    return row_tile_table(offs, a.shape[0], config[0]) if b.dim() == 3 else offs


def _ws_choice(a, a_scale, b, b_scale, offs, out) -> tuple | None:
    """The WS config to use, or None for this file's kernel: each timed once per (shapes by size
    bucket, out dtype, device) on the call's own operands (median of triton.testing.do_bench),
    after checking that its output agrees with this kernel's (relative error < 1e-3; the two sum
    the same FP32 partials in other orders): a WS config that disagrees is left out, with a
    warning."""
    from . import triton_gemm_gluon as wsg

    if not wsg.grouped_supports(a, b):
        return None
    # sizes by bucket (the routed token count varies with the batch; the layouts are those
    # grouped_supports admits), so a new token count reuses the choice
    key = (b.dim(), *map(size_bucket, a.shape), *map(size_bucket, b.shape), out.dtype, a.device.index)
    if key in _choice_cache:
        return _choice_cache[key]
    configs = wsg.GROUPED_WS_CONFIGS if b.dim() == 3 else wsg.GROUPED_K_WS_CONFIGS
    if torch.cuda.is_current_stream_capturing():  # no timing (nor checking) under graph capture
        return None
    runs = {None: lambda: gemm_blockwise_grouped(a, a_scale, b, b_scale, offs, out.dtype, out=out, kernel="triton")}
    runs[None]()
    want = out.to(torch.float32, copy=True)  # (a float32 out's .float() would be out itself)
    for cfg in configs:
        run = functools.partial(wsg.gemm_blockwise_grouped, a, a_scale, b, b_scale, _ws_groups(offs, a, b, cfg),
                                out, cfg)
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - a config that does not compile here is skipped
            warnings.warn(f"fp8pass: the warp-specialized grouped GEMM {cfg} failed at a {tuple(a.shape)}, b "
                          f"{tuple(b.shape)} ({type(exc).__name__}: {exc}); the plain-Triton kernel runs there")
            continue
        err = float((out.float() - want).norm() / want.norm().clamp_min(1e-30))
        if not err < 1e-3:
            warnings.warn(f"fp8pass: the warp-specialized grouped GEMM {cfg} disagreed with the plain-Triton one at "
                          f"a {tuple(a.shape)}, b {tuple(b.shape)} (relative error {err:.2e}); it is not used there")
            continue
        runs[cfg] = run
    times = {cfg: triton.testing.do_bench(run, warmup=5, rep=20, return_mode="median") for cfg, run in runs.items()}
    _choice_cache[key] = min(times, key=times.get)
    return _choice_cache[key]


def gemm_blockwise_grouped(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                           offs: torch.Tensor, out_dtype: torch.dtype, *, config: dict | None = None,
                           out: torch.Tensor | None = None, kernel: str | None = None) -> torch.Tensor:
    """Either grouping (b 3-D: rows grouped; b 2-D: K grouped). `kernel`: "triton" this file's
    kernel (autotuned, or with `config` (BLOCK_M, BLOCK_N, num_warps, num_stages) as given: the
    interpreter tests), "ws" the warp-specialized Gluon kernel (sm90, K-major operands:
    triton_gemm_gluon.grouped_supports), "auto" the faster of the two where both apply (checked
    to agree at the first call per shape); None: DEFAULT_KERNEL ("auto" unless set)."""
    kernel = DEFAULT_KERNEL if kernel is None else kernel
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, not {kernel!r}")
    groups = offs.shape[0]
    offs = offs.contiguous()  # read as offs_ptr + g
    group_k = b.dim() == 2
    if group_k:
        m, k = a.shape
        n = b.shape[1]
        shape = (groups, m, n)
        b_strides, bs_strides = (0, b.stride(0), b.stride(1)), (0, b_scale.stride(0), b_scale.stride(1))
    else:
        m, k = a.shape
        n = b.shape[2]
        shape = (m, n)
        b_strides, bs_strides = b.stride(), b_scale.stride()
    if out is None:
        out = torch.empty(shape, dtype=out_dtype, device=a.device)
    if out.numel() == 0:
        return out
    if k == 0:
        return out.zero_()
    if config is None and kernel != "triton":
        from . import triton_gemm_gluon as wsg

        if kernel == "ws":
            if not wsg.grouped_supports(a, b):
                raise ValueError("kernel='ws' needs an sm90 GPU, Gluon and K-major, 16-byte aligned operands "
                                 f"(a {tuple(a.shape)} strides {a.stride()}, b {tuple(b.shape)} strides {b.stride()})")
            ws_config = (wsg.GROUPED_K_WS_CONFIGS if group_k else wsg.GROUPED_WS_CONFIGS)[0]
        else:
            ws_config = _ws_choice(a, a_scale, b, b_scale, offs, out)
        if ws_config is not None:
            return wsg.gemm_blockwise_grouped(a, a_scale, b, b_scale, _ws_groups(offs, a, b, ws_config), out,
                                              ws_config)
    c_strides = out.stride() if group_k else (0, *out.stride())
    layout = 2 * int(a.stride(1) == 1) + int(b_strides[1] == 1)
    args = (a, b, out, a_scale, b_scale, offs, m, n, k, groups,
            a.stride(0), a.stride(1), *b_strides, *c_strides,
            a_scale.stride(0), a_scale.stride(1), *bs_strides, layout, size_bucket(m), size_bucket(k))

    def grid_size(bm, bn):
        row_tiles = groups * _cdiv(m, bm) if group_k else _cdiv(m, bm) + groups
        return (row_tiles * _cdiv(n, bn),)

    if config is None:
        _grouped_gemm_kernel_tuned[lambda meta: grid_size(meta["BLOCK_M"], meta["BLOCK_N"])](
            *args, GROUP_K=group_k, G_POW2=triton.next_power_of_2(groups), EVEN_K=k % TILE == 0,
            **COMPILE_OPTIONS)
    else:
        cfg = dict(config)
        warps = cfg.pop("num_warps", 4)
        stages = cfg.pop("num_stages", 3)
        _grouped_gemm_kernel[grid_size(cfg["BLOCK_M"], cfg["BLOCK_N"])](
            *args, GROUP_K=group_k, G_POW2=triton.next_power_of_2(groups), EVEN_K=k % TILE == 0, num_warps=warps,
            num_stages=stages,
            **COMPILE_OPTIONS, **cfg)
    return out
