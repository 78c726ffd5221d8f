"""SwiGLU fused with the dual quantization: the CUDA kernels of the ops
`swiglu_quantize_1x128_128x1(a, b)`, `swiglu_grad_a_quantize_1x128_128x1(grad, a, b)` and
`swiglu_grad_b_quantize_1x128_128x1(grad, a)` (ops.py), and of `swiglu_quantize_1x128(a, b)` and
`swiglu_quantize_128x1(a, b)`, one of the product's copies alone.

In a SwiGLU MLP, w2's input silu(a) * b, and in backward the gradients of a and b, are made by
one elementwise kernel and read back at once by a dual quantization (the 1x128 copy for the next
GEMM and the transposed 128x1 copy for Wgrad), their only reader. Here one program computes the
SwiGLU values of a 128x128 tile in registers and quantizes them, so those tensors never go to
memory: per 8192 x 5632 bf16 tensor that saves writing it and reading it back (~185 MB).

Numerics: the SwiGLU values are reference.swiglu / reference.swiglu_backward's steps (fp32,
rounded to the inputs' dtype where the reference rounds), except that exp and the divisions are
Triton's (approximate on NVIDIA; the reference's are torch's): a value may differ from the
reference's in its last bit, and so a tile's scale and FP8 bytes near a rounding boundary. The
quantization of those values is triton_quantize.py's, bit for bit.

Kernels: on sm90 the Gluon kernel of triton_quantize_gluon.py (the dual quantizer's register
layouts, with these values as its input tile); elsewhere, and under the Triton interpreter (the CPU
tests), the plain-Triton kernel below, one 128x128 tile per program held whole in registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import FastLauncher
from .reference import TILE, _cdiv, new_dual_outputs
from .tile_math import FORWARD, GRAD_A, GRAD_B, _amax, _scale_and_recip, _to_fp8, swiglu_tile_values
from .triton_quantize import _gluon_quantize

__all__ = ["swiglu_quantize_1x128_128x1", "swiglu_quantize_1x128", "swiglu_quantize_128x1",
           "swiglu_grad_a_quantize_1x128_128x1", "swiglu_grad_b_quantize_1x128_128x1"]


@triton.jit
def _quantize_tile_dual(x, rows, cols, rmask, mb, kb, M, K, qr_ptr, sr_ptr, qt_ptr, sc_ptr,
                        WRITE_ROW: tl.constexpr, WRITE_COL: tl.constexpr):
    """Both FP8 copies of the 128x128 tile x (rows past M are zeros): its 1x128 tiles into q_row
    [M, K] with scales at [KB, M] storage (if WRITE_ROW), and its 128x1 tiles transposed into
    q_col_t [K, M] with scales at [MB, K] storage (if WRITE_COL) (the layouts of
    quantize_1x128_128x1's outputs, ops.py)."""
    xf = x.to(tl.float32)
    if WRITE_ROW:
        s_row, r_row, sf_row = _scale_and_recip(_amax(xf, 1))
        q_row = _to_fp8(xf, sf_row[:, None], r_row[:, None])
        tl.store(qr_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], q_row, mask=rmask[:, None])
        tl.store(sr_ptr + kb.to(tl.int64) * M + rows, s_row, mask=rmask)
    if WRITE_COL:
        s_col, r_col, sf_col = _scale_and_recip(_amax(xf, 0))
        q_col = _to_fp8(xf, sf_col[None, :], r_col[None, :])
        tl.store(qt_ptr + cols.to(tl.int64)[None, :] * M + rows[:, None], q_col, mask=rmask[:, None])
        tl.store(sc_ptr + mb.to(tl.int64) * K + cols, s_col)


@triton.jit
def _swiglu_dual_kernel(
    g_ptr, a_ptr, b_ptr,
    qr_ptr, sr_ptr, qt_ptr, sc_ptr,
    M, K,
    sgm, sgk, sam, sak, sbm, sbk,
    MODE: tl.constexpr,
    WRITE_ROW: tl.constexpr,
    WRITE_COL: tl.constexpr,
):
    """One 128x128 tile of [M, K] (K % 128 == 0) per program: the dual copies of the SwiGLU values
    of MODE (swiglu_tile_values; the inputs it does not read are not loaded), or one of them."""
    mb = tl.program_id(0)
    kb = tl.program_id(1)
    rows = mb * 128 + tl.arange(0, 128)
    cols = kb * 128 + tl.arange(0, 128)
    rmask = rows < M
    r64 = rows.to(tl.int64)[:, None]
    c64 = cols.to(tl.int64)[None, :]
    a = tl.load(a_ptr + r64 * sam + c64 * sak, mask=rmask[:, None], other=0.0)
    g = a
    b = a
    if MODE != 0:
        g = tl.load(g_ptr + r64 * sgm + c64 * sgk, mask=rmask[:, None], other=0.0)
    if MODE != 2:
        b = tl.load(b_ptr + r64 * sbm + c64 * sbk, mask=rmask[:, None], other=0.0)
    x = swiglu_tile_values(g, a, b, MODE)
    _quantize_tile_dual(x, rows, cols, rmask, mb, kb, M, K, qr_ptr, sr_ptr, qt_ptr, sc_ptr, WRITE_ROW, WRITE_COL)


_launch_swiglu_dual = FastLauncher(_swiglu_dual_kernel)
_WARPS = 8


def _run(mode: int, g, a, b, out, copies: str = "dual") -> tuple:
    """The dual copies (q_row, s_row, q_col_t, s_col_t), or one of them: copies "row" gives
    (q_row, s_row), "col" (q_col_t, s_col_t)."""
    m, k = a.shape
    if k % TILE:
        raise ValueError(f"fp8pass: the fused SwiGLU quantization needs K % 128 == 0, got inputs of shape {tuple(a.shape)}")
    outs = tuple(out) if out is not None else new_dual_outputs(*a.shape, a.device, copies)
    # the kernels' four output pointers: a copy not written gets the written one's (unused)
    kernel_outs = outs if copies == "dual" else outs + outs
    write_row, write_col = copies != "col", copies != "row"
    if m == 0:
        return outs
    g = a if g is None else g
    b = a if b is None else b
    gluon_quant = _gluon_quantize(a.device)
    if gluon_quant is not None:
        gluon_quant.swiglu_dual_transposed(mode, g, a, b, kernel_outs, write_row=write_row, write_col=write_col)
        return outs
    # the MN-major scales s_row [M, KB] and s_col_t [K, MB] are stored as [KB, M] and [MB, K]
    _launch_swiglu_dual(
        (_cdiv(m, TILE), k // TILE), g, a, b, *kernel_outs, m, k,
        g.stride(0), g.stride(1), a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        MODE=mode, WRITE_ROW=write_row, WRITE_COL=write_col, num_warps=_WARPS,
    )
    return outs


def swiglu_quantize_1x128_128x1(a: torch.Tensor, b: torch.Tensor, *, out=None) -> tuple:
    """(q_row, s_row, q_col_t, s_col_t) of silu(a) * b for 2-D a, b [M, K], K % 128 == 0.

    out (in every function here): the four outputs to write instead of new tensors, in exactly
    these shapes and layouts (the buffers Inductor allocates for the ops' out variants)."""
    return _run(FORWARD, None, a, b, out)


def swiglu_quantize_1x128(a: torch.Tensor, b: torch.Tensor, *, out=None) -> tuple:
    """(q_row, s_row) of silu(a) * b: only its 1x128 copy, as quantize_1x128 (the forward's under
    recompute_fp8_activations, and inference)."""
    return _run(FORWARD, None, a, b, out, copies="row")


def swiglu_quantize_128x1(a: torch.Tensor, b: torch.Tensor, *, out=None) -> tuple:
    """(q_col_t, s_col_t) of silu(a) * b: only its transposed 128x1 copy (Wgrad's operand), as
    quantize_128x1; how recompute_fp8_activations makes that copy in backward under fuse_swiglu."""
    return _run(FORWARD, None, a, b, out, copies="col")


def swiglu_grad_a_quantize_1x128_128x1(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, out=None) -> tuple:
    """The four dual-quantization outputs of the gradient of a in silu(a) * b."""
    return _run(GRAD_A, grad, a, b, out)


def swiglu_grad_b_quantize_1x128_128x1(grad: torch.Tensor, a: torch.Tensor, *, out=None) -> tuple:
    """The four dual-quantization outputs of the gradient of b in silu(a) * b."""
    return _run(GRAD_B, grad, a, None, out)
