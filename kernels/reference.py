"""Plain-torch reference implementations of the FP8 ops (the CPU path, and the ground truth
the Triton kernels are checked against).

Numerics (DeepSeek-V3, sections 3.3 and B):
  * E4M3 (float8_e4m3fn) for every tensor; FP8_MAX = 448.
  * Online scaling: per tile, amax = max|x| (computed in fp32), clamped to at least
    AMAX_EPS so an all-zero tile gives exact zeros; scale = amax / 448 (fp32);
    q = clamp(x / scale, -448, 448) cast to E4M3 (round to nearest even).
    NaN propagates: a NaN makes amax NaN, so the whole tile becomes NaN; an Inf makes the
    scale Inf and the tile NaN (Inf / Inf). Nothing non-finite is silently hidden.
  * Tile shapes: 1x128 along the last dim (activations, gradients), 128x1 along the first
    dim (token-dim grouping for Wgrad operands), 128x128 blocks (weights). Tails are allowed:
    a partial tile is scaled by its own amax.
  * GEMM: per 128-wide K block, the FP32 product of the FP8 values is multiplied by the two
    scales of that block and added into an FP32 accumulator ("promotion every N_C = 128").

Scale layouts (these reference functions return contiguous tensors; the ops in ops.py store the
128x1 copies transposed, q_t = q.T contiguous, which is the layout the Wgrad GEMM reads, and give
1x128 scales and s_t = scale.T "MN-major" strides, rows stride 1, as cuBLAS reads them):
  quantize_1x128(x[..., K])  -> q[..., K], scale[..., ceil(K/128)]
  quantize_128x1(x[M, K])    -> q[M, K],   scale[ceil(M/128), K]
  quantize_128x128(w[R, C])  -> q[R, C],   scale[ceil(R/128), ceil(C/128)]   (or a [G, R, C] stack)
  gemm_blockwise(a[M, K], a_scale[M, ceil(K/128)],
                 b[K, N], b_scale[ceil(K/128), ceil(N/128)]   (128x128 blocks: Fprop, Dgrad)
                       or b_scale[ceil(K/128), N]             (128x1 tiles:    Wgrad))
  gemm_blockwise_grouped(a, a_scale, b, b_scale, offs)  (MoE experts; offs as torch._grouped_mm's)
Transposed views are fine everywhere: a 128x128-quantized W[N, K] used as B = W.T has
scale.T as its B scale, and a 128x1-quantized dY[M, N] used as A = dY.T (Wgrad) has scale.T
as its 1x128 A scale.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
AMAX_EPS = 1e-12
TILE = 128


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def empty_mn_major(lead_shape, last: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """An empty tensor of shape (*lead_shape, last) whose leading dims, flattened, have stride 1:
    storage [last, prod(lead_shape)]. The layout the ops give 1x128-tile scales (rows stride 1),
    which is the "MN-major" scale layout cuBLAS blockwise reads, so no copy precedes a GEMM."""
    # one empty_strided instead of empty + t + view (the wrappers call this per quantization, on
    # the host's critical path); dims of size 0 or 1 may get other (equally valid) strides than a
    # view would give them, the same in the fake kernels, which use this function too
    strides, rows = [], 1
    for d in reversed(lead_shape):
        strides.append(rows)
        rows *= d
    return torch.empty_strided((*lead_shape, last), (*reversed(strides), rows), dtype=dtype, device=device)


def new_dual_outputs(m: int, k: int, device, copies: str = "dual") -> tuple:
    """New tensors in the layouts of the op quantize_1x128_128x1's outputs for an [m, k] input
    (kernels/ops.py), or of one copy's: (q_row, s_row) as quantize_1x128's ("row"), (q_col_t,
    s_col_t) as the transposed quantize_128x1's ("col")."""
    outs = ()
    if copies != "col":
        outs += (torch.empty((m, k), dtype=FP8_DTYPE, device=device), empty_mn_major((m,), _cdiv(k, TILE), device=device))
    if copies != "row":
        outs += (torch.empty((k, m), dtype=FP8_DTYPE, device=device), empty_mn_major((k,), _cdiv(m, TILE), device=device))
    return outs


def as_mn_major(t: torch.Tensor) -> torch.Tensor:
    """A copy of t in the empty_mn_major layout."""
    out = empty_mn_major(t.shape[:-1], t.shape[-1], dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


def _scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    # clamp_min keeps NaN (so a NaN tile stays visible) and lifts an all-zero tile off 0.
    # The divisor is a tensor, not a Python float: on CUDA, torch turns division by a CPU
    # scalar into multiplication by its reciprocal, which is one ulp off for some amax; a
    # tensor divisor keeps the IEEE division, so the CPU and GPU references agree bit for bit.
    return torch.clamp_min(amax, AMAX_EPS) / amax.new_full((), FP8_MAX)


def _cast_to_fp8(x_over_scale: torch.Tensor) -> torch.Tensor:
    # Values that land a hair above 448 after the division are clamped first: the E4M3 cast
    # of an out-of-range value is NaN, not saturation. clamp keeps NaN.
    return torch.clamp(x_over_scale, -FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def _pad_dim(x: torch.Tensor, dim: int, multiple: int, value: float = 0.0) -> torch.Tensor:
    """x padded along `dim` to a multiple of `multiple` with `value`."""
    size = x.shape[dim]
    pad = _cdiv(size, multiple) * multiple - size
    if pad == 0:
        return x
    pad_shape = list(x.shape)
    pad_shape[dim] = pad
    return torch.cat([x, x.new_full(pad_shape, value)], dim=dim)


def quantize_1x128(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize in 1x128 tiles along the last dim. Returns (q, scale[..., ceil(K/128)])."""
    k = x.shape[-1]
    xf = _pad_dim(x.float(), -1, TILE)
    tiles = xf.reshape(*xf.shape[:-1], xf.shape[-1] // TILE, TILE)
    scale = _scale_from_amax(tiles.abs().amax(dim=-1))
    q = _cast_to_fp8(tiles / scale.unsqueeze(-1)).reshape(xf.shape)[..., :k]
    return q.contiguous(), scale


def quantize_128x1(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D tensor in 128x1 tiles (128 rows x 1 column). Returns (q, scale[ceil(M/128), K])."""
    if x.dim() != 2:
        raise ValueError(f"quantize_128x1 expects a 2-D tensor, got shape {tuple(x.shape)}")
    m = x.shape[0]
    xf = _pad_dim(x.float(), 0, TILE)
    tiles = xf.reshape(xf.shape[0] // TILE, TILE, xf.shape[1])
    scale = _scale_from_amax(tiles.abs().amax(dim=1))
    q = _cast_to_fp8(tiles / scale.unsqueeze(1)).reshape(xf.shape)[:m]
    return q.contiguous(), scale


def quantize_1x128_128x1(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both copies of a 2-D tensor, as one op (the GPU kernel reads the input once)."""
    q_row, s_row = quantize_1x128(x)
    q_col, s_col = quantize_128x1(x)
    return q_row, s_row, q_col, s_col


def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """silu(a) * b as torch.compile computes `F.silu(a) * b` (Inductor's decomposition): in fp32,
    silu(a) = a / (1 + exp(-a)) rounded to the inputs' dtype, then the product rounded to it."""
    a32 = a.float()
    silu = (a32 / (1 + torch.exp(-a32))).to(a.dtype)
    return (silu.float() * b.float()).to(a.dtype)


def swiglu_backward(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d/da, d/db) of swiglu(a, b) times grad, as autograd's silu backward, in fp32, each
    rounded to the inputs' dtype: grad * b * sigmoid(a) * (1 + a * (1 - sigmoid(a))), and
    grad * silu(a) with silu(a) rounded as in forward."""
    a32 = a.float()
    sig = 1 / (1 + torch.exp(-a32))
    grad_a = (grad.float() * b.float() * sig * (1 + a32 * (1 - sig))).to(a.dtype)
    return grad_a, swiglu(a, grad)  # grad * silu(a), silu rounded as in forward


def quantize_128x128(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D tensor in 128x128 blocks. Returns (q, scale[ceil(R/128), ceil(C/128)]).
    A 3-D stack [G, R, C] (MoE experts' weights) is quantized matrix by matrix: (q[G, R, C],
    scale[G, ceil(R/128), ceil(C/128)]); no block spans two matrices."""
    if w.dim() == 3:
        parts = [quantize_128x128(m) for m in w.unbind(0)]
        return torch.stack([q for q, _ in parts]), torch.stack([s for _, s in parts])
    if w.dim() != 2:
        raise ValueError(f"quantize_128x128 expects a 2-D tensor or a 3-D stack of them, got shape {tuple(w.shape)}")
    r, c = w.shape
    wf = _pad_dim(_pad_dim(w.float(), 0, TILE), 1, TILE)
    rb, cb = wf.shape[0] // TILE, wf.shape[1] // TILE
    blocks = wf.reshape(rb, TILE, cb, TILE)
    scale = _scale_from_amax(blocks.abs().amax(dim=(1, 3)))
    q = _cast_to_fp8(blocks / scale[:, None, :, None]).reshape(wf.shape)[:r, :c]
    return q.contiguous(), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, tile_rows: int, tile_cols: int,
               out_dtype: torch.dtype) -> torch.Tensor:
    """Inverse of the quantizers: q (2-D, or N-D for 1x128) times its tile scales.

    (tile_rows, tile_cols) is (1, 128), (128, 1) or (128, 128)."""
    expanded = scale
    if tile_cols > 1:
        expanded = expanded.repeat_interleave(tile_cols, dim=-1)[..., : q.shape[-1]]
    if tile_rows > 1:
        expanded = expanded.repeat_interleave(tile_rows, dim=-2)[..., : q.shape[-2], :]
    return (q.float() * expanded).to(out_dtype)


def gemm_blockwise(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """out[M, N] = sum over 128-wide K blocks of (a_blk @ b_blk in FP32) * a_scale * b_scale.

    b_scale of shape [ceil(K/128), ceil(N/128)] means 128x128 blocks, [ceil(K/128), N] means
    128x1 tiles. A K tail (Wgrad over a token count not a multiple of 128) is a short block."""
    m, k = a.shape
    n = b.shape[1]
    kb = _cdiv(k, TILE)
    b_blockwise = b_scale.shape[1] != n
    acc = torch.zeros(m, n, dtype=torch.float32, device=a.device)
    for blk in range(kb):
        ks = slice(blk * TILE, min((blk + 1) * TILE, k))
        partial = a[:, ks].float() @ b[ks, :].float()
        sb = b_scale[blk]
        if b_blockwise:
            sb = sb.repeat_interleave(TILE)[:n]
        acc += partial * a_scale[:, blk : blk + 1] * sb.unsqueeze(0)
    return acc.to(out_dtype)


def group_bounds(offs: torch.Tensor, rows: int) -> list[tuple[int, int]]:
    """[(start, end)] of each group from torch._grouped_mm's `offs` (int32, the groups' cumulative
    ends): group g is rows [offs[g-1], offs[g]) with offs[-1] = 0. Raises on offsets that decrease
    or pass `rows` (the GPU kernel cannot check them without a device sync, see triton_gemm_grouped)."""
    ends = [int(e) for e in offs.tolist()]
    starts = [0] + ends[:-1]
    for g, (s, e) in enumerate(zip(starts, ends)):
        if e < s or e > rows:
            raise ValueError(f"fp8pass.gemm_blockwise_grouped: offs must be non-decreasing group ends <= {rows}, "
                             f"got {ends} (group {g})")
    return list(zip(starts, ends))


def _rows_within(q: torch.Tensor, dim: int, first: int, start: int, end: int) -> torch.Tensor:
    """q with the entries whose index along `dim` (counted from `first`) lies outside [start, end)
    set to zero (FP8 zero; the values inside are FP8 values, so the float round trip is exact)."""
    idx = torch.arange(first, first + q.shape[dim], device=q.device)
    inside = ((idx >= start) & (idx < end)).view([-1 if d == dim else 1 for d in range(q.dim())])
    return torch.where(inside, q.float(), 0.0).to(q.dtype)


def gemm_blockwise_grouped(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                           offs: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """The grouped form of gemm_blockwise, one GEMM per group (MoE experts), as torch._grouped_mm:

    * b 3-D [G, K, N] in 128x128 blocks, b_scale [G, ceil(K/128), ceil(N/128)] (Fprop, Dgrad): rows
      [offs[g-1], offs[g]) of a[S, K] times b[g]; out [S, N], rows past offs[-1] zero.
    * b 2-D [S, N] in 128x1 tiles, b_scale [ceil(S/128), N] (Wgrad), a[M, S] with a_scale
      [M, ceil(S/128)]: the contracted token dim is grouped; out[g] = a[:, rows of g] @ b[rows of g];
      out [G, M, N], zero for an empty group.

    The 128-token tiles of Wgrad's operands are those of the whole token dim (the dual quantizer's,
    as for a Linear), not restarted at each group: a tile that straddles two groups has one scale
    (the amax of both groups' rows), and each group's GEMM reads only its own rows of it, so the
    promotion is still one FP32 multiply-add per 128-token block and operand."""
    if b.dim() == 3:
        out = torch.zeros(a.shape[0], b.shape[2], dtype=out_dtype, device=a.device)
        for g, (s, e) in enumerate(group_bounds(offs, a.shape[0])):
            if e > s:
                out[s:e] = gemm_blockwise(a[s:e], a_scale[s:e], b[g], b_scale[g], out_dtype)
        return out
    tokens = a.shape[1]
    out = torch.zeros(offs.shape[0], a.shape[0], b.shape[1], dtype=out_dtype, device=a.device)
    for g, (s, e) in enumerate(group_bounds(offs, tokens)):
        if e <= s:
            continue
        k0, k1 = s // TILE, _cdiv(e, TILE)
        first, last = k0 * TILE, min(k1 * TILE, tokens)
        a_g = _rows_within(a[:, first:last], 1, first, s, e)
        b_g = _rows_within(b[first:last], 0, first, s, e)
        out[g] = gemm_blockwise(a_g, a_scale[:, k0:k1], b_g, b_scale[k0:k1], out_dtype)
    return out
