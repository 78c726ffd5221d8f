"""Blockwise-scaled FP8 GEMM in Triton (DeepSeek-V3 numerics, see reference.gemm_blockwise).

    out[M, N] = sum over 128-wide K blocks kb of  (A[:, kb] @ B[kb, :] in fp32) * sa[:, kb] * sb[kb, :]

A is E4M3 [M, K] with 1x128 scales a_scale[M, ceil(K/128)]; B is E4M3 [K, N] with either
128x128 block scales b_scale[ceil(K/128), ceil(N/128)] (Fprop, Dgrad) or 128x1 scales
b_scale[ceil(K/128), N] (Wgrad). Every operand and scale is read through its strides, so the
transposed views the graph pass emits (Dgrad: B = W; Wgrad: A = dY^T) need no copy.
The partial product of each 128-wide K block comes from one `tl.dot` with K = 128 (on sm90 an
fp8 wgmma chain accumulating inside the tensor core over those 128 only) and is scaled and
added into the fp32 accumulator on the CUDA cores: the paper's promotion every N_C = 128.
A K tail (Wgrad over a token count that is not a multiple of 128) is loaded masked, zero-filled.

Speed notes (H200, see benchmarks/RESULTS_gemm.md): in plain `tl`, Triton's wgmma pipeliner
makes a dot asynchronous only when its result feeds nothing but the next dot's accumulator, so
the scaling after each block forces a wait on that block's wgmma; the tensor cores idle during
the promotion. Two ways around it are offered here:
  * `_gemm_kernel` (plain tl): relies on several CTAs per SM (64-row tiles) or 2 warpgroups to
    hide the promotion; autotuned over tiles/warps/stages; handles every layout and tail.
  * `triton_gemm_gluon.py` (Gluon, sm90): explicit async wgmma, two partial accumulators,
    the MMA of block k+1 in flight while block k is promoted (needs K-major operands).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
import triton.testing

from .launch import COMPILE_OPTIONS, size_bucket
from .reference import TILE, _cdiv

__all__ = ["gemm_blockwise", "GEMM_CONFIGS", "b_scale_is_blockwise"]


@triton.jit(do_not_specialize=["M_KEY", "K_KEY"])
def _gemm_kernel(
    a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr,
    M, N, K,
    s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
    s_asm, s_ask, s_bsk, s_bsn,
    LAYOUT,  # autotune key only: 2 * (A is K-major) + (B is K-major)
    M_KEY, K_KEY,  # autotune key only: M and K by size bucket (one of them the token count)
    B_BLOCK: tl.constexpr,  # True: b_scale per 128x128 block; False: per 128x1 column tile
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    BLOCK_K: tl.constexpr = 128
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # wrap out-of-range rows/cols onto valid ones: loads need no mask, the store is masked
    rm = (offs_m % M).to(tl.int64)
    rn = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)

    a_ptrs = a_ptr + rm[:, None] * s_am + offs_k[None, :] * s_ak
    b_ptrs = b_ptr + offs_k[:, None] * s_bk + rn[None, :] * s_bn
    as_ptrs = as_ptr + rm * s_asm
    if B_BLOCK:
        if BLOCK_N <= 128:
            bs_ptrs = bs_ptr + ((pid_n * BLOCK_N) // 128) * s_bsn  # one block: a scalar
        else:
            bs_ptrs = bs_ptr + (rn // 128) * s_bsn
    else:
        bs_ptrs = bs_ptr + rn * s_bsn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    num_kb = tl.cdiv(K, BLOCK_K)
    for kb in range(0, num_kb):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - kb * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        sa = tl.load(as_ptrs)
        sb = tl.load(bs_ptrs)
        p = tl.dot(a, b)
        if B_BLOCK and BLOCK_N <= 128:
            acc += p * (sa * sb)[:, None]
        else:
            acc += p * sa[:, None] * sb[None, :]
        a_ptrs += BLOCK_K * s_ak
        b_ptrs += BLOCK_K * s_bk
        as_ptrs += s_ask
        bs_ptrs += s_bsk

    c = acc.to(c_ptr.dtype.element_ty)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * s_cm + offs_n.to(tl.int64)[None, :] * s_cn
    tl.store(c_ptrs, c, mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


def _cfg(bm, bn, warps, stages, group=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": group}, num_warps=warps, num_stages=stages)


# Register budget: the fp32 accumulator plus the fp32 partial of one block live together, so
# a warpgroup (4 warps) can hold at most a 64x128 (or 128x64) pair without spilling.
GEMM_CONFIGS = [
    _cfg(128, 128, 8, 4),
    _cfg(128, 128, 8, 3),
    _cfg(64, 128, 4, 5),
    _cfg(64, 256, 8, 3),
    _cfg(64, 64, 4, 4),
]
if os.environ.get("FP8PASS_GEMM_CONFIGS"):  # e.g. "128,128,8,3;64,128,4,4"
    GEMM_CONFIGS = [_cfg(*map(int, c.split(","))) for c in os.environ["FP8PASS_GEMM_CONFIGS"].split(";")]

def _bench(fn, quantiles):
    # shorter than the autotuner's default (25 ms warm-up, 100 ms): GEMMs here take 0.01-3 ms
    return triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


# The key holds the shape (M and K by size bucket, launch.size_bucket: a new token count does not
# autotune again), the operand layouts (K-major or not), the scale pairing and K's evenness; the
# autotuner adds the dtypes of the tensor arguments, so the output dtype too.
_KEY = ["M_KEY", "N", "K_KEY", "LAYOUT", "B_BLOCK", "EVEN_K"]
try:
    _gemm_kernel_tuned = triton.autotune(configs=GEMM_CONFIGS, key=_KEY, do_bench=_bench)(_gemm_kernel)
except TypeError:  # an older Triton without the do_bench hook
    _gemm_kernel_tuned = triton.autotune(configs=GEMM_CONFIGS, key=_KEY)(_gemm_kernel)


def b_scale_is_blockwise(b: torch.Tensor, b_scale: torch.Tensor) -> bool:
    """True for 128x128 block scales [KB, ceil(N/128)], False for 128x1 scales [KB, N].

    (Same rule as the reference: a [KB, N] scale is 128x1 even when N <= 128.)"""
    return b_scale.shape[1] != b.shape[1]


def gemm_blockwise(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                   out_dtype: torch.dtype, *, config: dict | None = None, out: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """The plain-Triton kernel. `config` (BLOCK_M, BLOCK_N, GROUP_M, num_warps, num_stages)
    bypasses the autotuner (tests under TRITON_INTERPRET use it)."""
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_()
    b_block = b_scale_is_blockwise(b, b_scale)
    layout = 2 * int(a.stride(1) == 1) + int(b.stride(0) == 1)
    args = (
        a, b, out, a_scale, b_scale, m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        a_scale.stride(0), a_scale.stride(1), b_scale.stride(0), b_scale.stride(1), layout,
        size_bucket(m), size_bucket(k),
    )
    even_k = k % TILE == 0
    if config is None:
        grid = lambda meta: (_cdiv(m, meta["BLOCK_M"]) * _cdiv(n, meta["BLOCK_N"]),)
        _gemm_kernel_tuned[grid](*args, B_BLOCK=b_block, EVEN_K=even_k, **COMPILE_OPTIONS)
    else:
        cfg = dict(config)
        warps = cfg.pop("num_warps", 4)
        stages = cfg.pop("num_stages", 3)
        cfg.setdefault("GROUP_M", 8)
        grid = (_cdiv(m, cfg["BLOCK_M"]) * _cdiv(n, cfg["BLOCK_N"]),)
        _gemm_kernel[grid](*args, B_BLOCK=b_block, EVEN_K=even_k, num_warps=warps, num_stages=stages,
                           **COMPILE_OPTIONS, **cfg)
    return out
