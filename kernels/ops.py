"""The FP8 ops as torch.library custom ops: `torch.ops.fp8pass.<name>`.

Each op has a fake (meta) kernel for tracing and a device-generic default kernel, the plain
torch reference in `reference.py`, which is what runs on the CPU. `fp8pass.kernels.triton_*`
registers faster CUDA kernels for the same ops; the graph pass only ever emits these ops, so the
CPU and GPU paths share one graph.

Layouts (every kernel of an op returns exactly the strides of its fake kernel, which Inductor
checks): FP8 copies are contiguous; the scales of 1x128 tiles, and of the transposed 128x1
copies (which are 1x128 tiles of x.T), are "MN-major": their rows have stride 1
(`reference.empty_mn_major`), the layout cuBLAS blockwise reads, so no scale is copied before a
GEMM; 128x128 block scales are contiguous (of the transposed copy too: they are then MN-major
for the GEMM that reads W untransposed, Dgrad).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from . import reference
from .reference import FP8_DTYPE, TILE, _cdiv, as_mn_major, empty_mn_major

__all__ = [
    "quantize_1x128",
    "quantize_128x1",
    "quantize_1x128_128x1",
    "quantize_1x128_128x1_cat3",
    "quantize_128x128",
    "quantize_128x128_transposed",
    "dequantize",
    "gemm_blockwise",
    "gemm_blockwise_grouped",
    "swiglu",
    "swiglu_backward",
    "swiglu_quantize_1x128_128x1",
    "swiglu_quantize_1x128",
    "swiglu_quantize_128x1",
    "swiglu_grad_a_quantize_1x128_128x1",
    "swiglu_grad_b_quantize_1x128_128x1",
    "quantize_1x128_out",
    "quantize_128x1_out",
    "quantize_1x128_128x1_out",
    "quantize_1x128_128x1_cat3_out",
    "quantize_128x128_out",
    "quantize_128x128_transposed_out",
    "swiglu_quantize_1x128_128x1_out",
    "swiglu_quantize_1x128_out",
    "swiglu_quantize_128x1_out",
    "swiglu_grad_a_quantize_1x128_128x1_out",
    "swiglu_grad_b_quantize_1x128_128x1_out",
    "OUT_VARIANTS",
    "op_name",
    "out_variant",
]


def _transposed_copy(t: torch.Tensor) -> torch.Tensor:
    """t.T in row-major storage. Not t.t().contiguous(): with a size-1 dim the transpose already
    counts as contiguous and keeps strides other than the fake kernels' (which Inductor asserts)."""
    return t.t().clone(memory_format=torch.contiguous_format)


def _check_float_input(op: str, x: torch.Tensor) -> None:
    if not x.dtype.is_floating_point or x.dtype in (FP8_DTYPE, torch.float8_e5m2):
        raise TypeError(f"fp8pass.{op}: expected a bf16/fp16/fp32 tensor, got {x.dtype} of shape {tuple(x.shape)}")


@torch.library.custom_op("fp8pass::quantize_1x128", mutates_args=())
def quantize_1x128(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 copy of x in 1x128 tiles along the last dim, and the fp32 tile scales."""
    _check_float_input("quantize_1x128", x)
    q, s = reference.quantize_1x128(x)
    return q, as_mn_major(s)


@quantize_1x128.register_fake
def _(x):
    return (
        torch.empty(x.shape, dtype=FP8_DTYPE, device=x.device),
        empty_mn_major(x.shape[:-1], _cdiv(x.shape[-1], TILE), device=x.device),
    )


@torch.library.custom_op("fp8pass::quantize_128x1", mutates_args=())
def quantize_128x1(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """128x1 tiles (128 rows, one column) of a 2-D x[M, K], stored transposed: (q_t[K, M],
    s_t[K, ceil(M/128)]), contiguous. q_t.T is the 128x1-quantized x; equivalently q_t is the
    1x128 quantization of x.T. Stored so because the Wgrad GEMM contracts over M, and FP8 tensor
    cores read only K-major operands: dY^T = q_t is its A, and x = q_t.T its B, with no copy."""
    _check_float_input("quantize_128x1", x)
    q, s = reference.quantize_128x1(x)
    return _transposed_copy(q), as_mn_major(s.t())


@quantize_128x1.register_fake
def _(x):
    m, k = x.shape
    return (
        torch.empty((k, m), dtype=FP8_DTYPE, device=x.device),
        empty_mn_major((k,), _cdiv(m, TILE), device=x.device),
    )


@torch.library.custom_op("fp8pass::quantize_1x128_128x1", mutates_args=())
def quantize_1x128_128x1(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both copies of a 2-D x[M, K] from one read: (q_row[M, K], s_row[M, ceil(K/128)]) as
    quantize_1x128, and (q_col_t[K, M], s_col_t[K, ceil(M/128)]) as quantize_128x1 (transposed)."""
    _check_float_input("quantize_1x128_128x1", x)
    q_row, s_row, q_col, s_col = reference.quantize_1x128_128x1(x)
    return q_row, as_mn_major(s_row), _transposed_copy(q_col), as_mn_major(s_col.t())


@quantize_1x128_128x1.register_fake
def _(x):
    m, k = x.shape
    return (
        torch.empty((m, k), dtype=FP8_DTYPE, device=x.device),
        empty_mn_major((m,), _cdiv(k, TILE), device=x.device),
        torch.empty((k, m), dtype=FP8_DTYPE, device=x.device),
        empty_mn_major((k,), _cdiv(m, TILE), device=x.device),
    )


def cat3_rows_and_widths(op: str, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> tuple[int, list[int]]:
    """(rows, each part's width) of quantize_1x128_128x1_cat3's input parts [B, T, H_i, D_i]: the
    rows are B * T, part i's columns H_i * D_i. Raises for parts that do not line up."""
    for t in (x0, x1, x2):
        _check_float_input(op, t)
    if not x0.dim() == x1.dim() == x2.dim() == 4 or not x0.shape[:2] == x1.shape[:2] == x2.shape[:2]:
        raise ValueError(f"fp8pass.{op}: expected three [B, T, H, D] tensors with the same B and T, got "
                         f"{[tuple(t.shape) for t in (x0, x1, x2)]}")
    if not x0.dtype == x1.dtype == x2.dtype:
        raise TypeError(f"fp8pass.{op}: the three parts must share a dtype, got {[t.dtype for t in (x0, x1, x2)]}")
    return x0.shape[0] * x0.shape[1], [t.shape[2] * t.shape[3] for t in (x0, x1, x2)]


def cat3_input(x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """The 2-D tensor quantize_1x128_128x1_cat3 quantizes: the parts' [B*T, H_i*D_i] side by side."""
    return torch.cat([t.reshape(t.shape[0] * t.shape[1], -1) for t in (x0, x1, x2)], dim=1)


@torch.library.custom_op("fp8pass::quantize_1x128_128x1_cat3", mutates_args=())
def quantize_1x128_128x1_cat3(x0: torch.Tensor, x1: torch.Tensor,
                              x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_1x128_128x1 of three [B, T, H_i, D_i] tensors (any strides) concatenated as
    [B*T, sum of H_i*D_i]: a fused QKV projection's output gradient is the concatenation of the
    attention's three input gradients, which the CUDA kernel reads in place (no concatenated copy)."""
    cat3_rows_and_widths("quantize_1x128_128x1_cat3", x0, x1, x2)
    return quantize_1x128_128x1(cat3_input(x0, x1, x2))


@quantize_1x128_128x1_cat3.register_fake
def _(x0, x1, x2):
    m, widths = cat3_rows_and_widths("quantize_1x128_128x1_cat3", x0, x1, x2)
    return quantize_1x128_128x1(x0.new_empty((m, sum(widths))))  # the fake kernel's outputs for that input


@torch.library.custom_op("fp8pass::quantize_128x128", mutates_args=())
def quantize_128x128(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 copy of a 2-D w in 128x128 blocks, and the fp32 block scales; of a 3-D stack [G, R, C]
    (MoE experts), matrix by matrix: q[G, R, C], scales [G, ceil(R/128), ceil(C/128)]."""
    _check_float_input("quantize_128x128", w)
    return reference.quantize_128x128(w)


def _empty_128x128_copy(w: torch.Tensor, *shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake outputs of a 128x128 quantization stored as [..., rows, cols] (a stack: per matrix): q
    and its block scales."""
    *lead, rows, cols = shape
    return (
        torch.empty(shape, dtype=FP8_DTYPE, device=w.device),
        w.new_empty((*lead, _cdiv(rows, TILE), _cdiv(cols, TILE)), dtype=torch.float32),
    )


@quantize_128x128.register_fake
def _(w):
    return _empty_128x128_copy(w, *w.shape)


@torch.library.custom_op("fp8pass::quantize_128x128_transposed", mutates_args=())
def quantize_128x128_transposed(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_128x128 of a 2-D w[R, C] stored transposed: (q.T, scale.T), both contiguous. The
    Dgrad GEMM reads W[N, K] as its B operand, contracting over N: q.T contiguous is that operand
    K-major and scale.T its MN-major block scale, the layouts cuBLAS blockwise reads, so neither is
    copied before the GEMM (128x128 blocks of W are the blocks of W.T: the same numbers).
    A 3-D stack w[G, R, C] (MoE experts): each matrix's, (q[G, C, R], scale[G, cb, rb]), for the
    grouped Dgrad's K-major B in one pass over the stack."""
    _check_float_input("quantize_128x128_transposed", w)
    q, s = reference.quantize_128x128(w)
    if w.dim() == 3:
        return q.transpose(1, 2).contiguous(), s.transpose(1, 2).contiguous()
    return _transposed_copy(q), _transposed_copy(s)


@quantize_128x128_transposed.register_fake
def _(w):
    *lead, r, c = w.shape
    return _empty_128x128_copy(w, *lead, c, r)


# SwiGLU, silu(a) * b, as ops: lowering/swiglu.py puts `swiglu` in place of `F.silu(a) * b` in the
# graphs torch.compile gives the backend, so that autograd's formula for it is one node
# (`swiglu_backward`) in the joint graph. Where the product, or both input gradients, go only to
# dual quantizations (the SwiGLU MLP's w2 in forward, w1 and w3 in backward), the pass fuses them
# into the `*_quantize_1x128_128x1` ops: one kernel that computes the SwiGLU values of a 128x128
# tile and writes their two FP8 copies, so the high-precision product and gradients never go to
# memory. Elsewhere the two plain ops are decomposed back into aten ops for Inductor to fuse as
# before.
def _check_swiglu_inputs(op: str, *tensors: torch.Tensor) -> None:
    first = tensors[0]
    for t in tensors:
        _check_float_input(op, t)
        if t.shape != first.shape or t.dtype != first.dtype:
            raise ValueError(f"fp8pass.{op}: inputs must share shape and dtype, got "
                             + ", ".join(f"{tuple(u.shape)} {u.dtype}" for u in tensors))


@torch.library.custom_op("fp8pass::swiglu", mutates_args=())
def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """silu(a) * b (reference.swiglu's numerics), contiguous."""
    _check_swiglu_inputs("swiglu", a, b)
    return reference.swiglu(a, b).contiguous()


@swiglu.register_fake
def _(a, b):
    return a.new_empty(a.shape)


@torch.library.custom_op("fp8pass::swiglu_backward", mutates_args=())
def swiglu_backward(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of swiglu(a, b) for its output's gradient: (grad_a, grad_b), contiguous."""
    _check_swiglu_inputs("swiglu_backward", grad, a, b)
    grad_a, grad_b = reference.swiglu_backward(grad, a, b)
    return grad_a.contiguous(), grad_b.contiguous()


@swiglu_backward.register_fake
def _(grad, a, b):
    return a.new_empty(a.shape), a.new_empty(a.shape)


def _swiglu_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _swiglu_autograd(ctx, grad):
    a, b = ctx.saved_tensors
    return tuple(swiglu_backward(grad, a, b))


swiglu.register_autograd(_swiglu_autograd, setup_context=_swiglu_setup_context)


def _check_swiglu_2d(op: str, *tensors: torch.Tensor) -> None:
    _check_swiglu_inputs(op, *tensors)
    if tensors[0].dim() != 2:
        raise ValueError(f"fp8pass.{op}: expected 2-D inputs [M, K], got shape {tuple(tensors[0].shape)}")


@torch.library.custom_op("fp8pass::swiglu_quantize_1x128_128x1", mutates_args=())
def swiglu_quantize_1x128_128x1(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor]:
    """quantize_1x128_128x1(swiglu(a, b)) for 2-D a, b: the product's two FP8 copies, not the product."""
    _check_swiglu_2d("swiglu_quantize_1x128_128x1", a, b)
    return quantize_1x128_128x1(reference.swiglu(a, b))


@swiglu_quantize_1x128_128x1.register_fake
def _(a, b):
    return quantize_1x128_128x1(a)  # the fake kernel's outputs for an input of a's shape


@torch.library.custom_op("fp8pass::swiglu_quantize_1x128", mutates_args=())
def swiglu_quantize_1x128(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_1x128(swiglu(a, b)) for 2-D a, b: the product's 1x128 copy (w2's Fprop operand),
    not the product: the forward's copy under recompute_fp8_activations, and inference's."""
    _check_swiglu_2d("swiglu_quantize_1x128", a, b)
    return quantize_1x128(reference.swiglu(a, b))


@swiglu_quantize_1x128.register_fake
def _(a, b):
    return quantize_1x128(a)


@torch.library.custom_op("fp8pass::swiglu_quantize_128x1", mutates_args=())
def swiglu_quantize_128x1(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_128x1(swiglu(a, b)) for 2-D a, b: the product's transposed 128x1 copy (Wgrad's
    operand), not the product; recompute_fp8_activations makes w2's copy so in backward."""
    _check_swiglu_2d("swiglu_quantize_128x1", a, b)
    return quantize_128x1(reference.swiglu(a, b))


@swiglu_quantize_128x1.register_fake
def _(a, b):
    return quantize_128x1(a)


# Backward as two ops, grad_a's copies first (the only reader of b), then grad_b's: between them
# Inductor frees b, so the step holds one gradient's copies more at a time, not two (one op
# writing all eight outputs raised the Llama block's peak from 2872 to 3348 MiB on an H200).
@torch.library.custom_op("fp8pass::swiglu_grad_a_quantize_1x128_128x1", mutates_args=())
def swiglu_grad_a_quantize_1x128_128x1(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_1x128_128x1 of swiglu_backward(grad, a, b)[0] (the gradient of a), 2-D inputs."""
    _check_swiglu_2d("swiglu_grad_a_quantize_1x128_128x1", grad, a, b)
    return quantize_1x128_128x1(reference.swiglu_backward(grad, a, b)[0])


@swiglu_grad_a_quantize_1x128_128x1.register_fake
def _(grad, a, b):
    return quantize_1x128_128x1(a)


@torch.library.custom_op("fp8pass::swiglu_grad_b_quantize_1x128_128x1", mutates_args=())
def swiglu_grad_b_quantize_1x128_128x1(grad: torch.Tensor, a: torch.Tensor) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_1x128_128x1 of the gradient of b, grad * silu(a) (swiglu_backward's second output)."""
    _check_swiglu_2d("swiglu_grad_b_quantize_1x128_128x1", grad, a)
    return quantize_1x128_128x1(reference.swiglu(a, grad))  # grad * silu(a): reference.swiglu_backward


@swiglu_grad_b_quantize_1x128_128x1.register_fake
def _(grad, a):
    return quantize_1x128_128x1(a)


# Out variants of the quantizations: the same numbers written into buffers the caller allocated,
# in exactly the shapes and layouts of the functional op's outputs. The backend lowers each
# functional quantization as one of these (lowering/allocated_outputs.py), so that Inductor
# allocates (and reuses) the buffers in its own generated code instead of the op allocating them
# in Python on every call.
def _write_outputs(outs: tuple, values: tuple) -> None:
    for out, value in zip(outs, values):
        if out.shape != value.shape or out.dtype != value.dtype:
            raise ValueError(f"fp8pass: out buffer {tuple(out.shape)} {out.dtype} does not match the "
                             f"op's output {tuple(value.shape)} {value.dtype}")
        out.copy_(value)


@torch.library.custom_op("fp8pass::quantize_1x128_out", mutates_args=("q", "scale"))
def quantize_1x128_out(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> None:
    """quantize_1x128(x) written into (q, scale)."""
    _write_outputs((q, scale), quantize_1x128(x))


@torch.library.custom_op("fp8pass::quantize_128x1_out", mutates_args=("q_t", "scale_t"))
def quantize_128x1_out(x: torch.Tensor, q_t: torch.Tensor, scale_t: torch.Tensor) -> None:
    """quantize_128x1(x) written into (q_t, scale_t)."""
    _write_outputs((q_t, scale_t), quantize_128x1(x))


_DUAL_OUTS = ("q_row", "s_row", "q_col_t", "s_col_t")  # the outputs of every dual quantization


@torch.library.custom_op("fp8pass::quantize_1x128_128x1_out", mutates_args=_DUAL_OUTS)
def quantize_1x128_128x1_out(x: torch.Tensor, q_row: torch.Tensor, s_row: torch.Tensor, q_col_t: torch.Tensor,
                             s_col_t: torch.Tensor) -> None:
    """quantize_1x128_128x1(x) written into (q_row, s_row, q_col_t, s_col_t)."""
    _write_outputs((q_row, s_row, q_col_t, s_col_t), quantize_1x128_128x1(x))


@torch.library.custom_op("fp8pass::quantize_1x128_128x1_cat3_out", mutates_args=_DUAL_OUTS)
def quantize_1x128_128x1_cat3_out(x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, q_row: torch.Tensor,
                                  s_row: torch.Tensor, q_col_t: torch.Tensor, s_col_t: torch.Tensor) -> None:
    """quantize_1x128_128x1_cat3(x0, x1, x2) written into (q_row, s_row, q_col_t, s_col_t)."""
    _write_outputs((q_row, s_row, q_col_t, s_col_t), quantize_1x128_128x1_cat3(x0, x1, x2))


@torch.library.custom_op("fp8pass::quantize_128x128_out", mutates_args=("q", "scale"))
def quantize_128x128_out(w: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> None:
    """quantize_128x128(w) written into (q, scale)."""
    _write_outputs((q, scale), quantize_128x128(w))


@torch.library.custom_op("fp8pass::quantize_128x128_transposed_out", mutates_args=("q_t", "scale_t"))
def quantize_128x128_transposed_out(w: torch.Tensor, q_t: torch.Tensor, scale_t: torch.Tensor) -> None:
    """quantize_128x128_transposed(w) written into (q_t, scale_t)."""
    _write_outputs((q_t, scale_t), quantize_128x128_transposed(w))


@torch.library.custom_op("fp8pass::swiglu_quantize_1x128_128x1_out", mutates_args=_DUAL_OUTS)
def swiglu_quantize_1x128_128x1_out(a: torch.Tensor, b: torch.Tensor, q_row: torch.Tensor, s_row: torch.Tensor,
                                    q_col_t: torch.Tensor, s_col_t: torch.Tensor) -> None:
    """swiglu_quantize_1x128_128x1(a, b) written into (q_row, s_row, q_col_t, s_col_t)."""
    _write_outputs((q_row, s_row, q_col_t, s_col_t), swiglu_quantize_1x128_128x1(a, b))


@torch.library.custom_op("fp8pass::swiglu_quantize_1x128_out", mutates_args=("q", "scale"))
def swiglu_quantize_1x128_out(a: torch.Tensor, b: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> None:
    """swiglu_quantize_1x128(a, b) written into (q, scale)."""
    _write_outputs((q, scale), swiglu_quantize_1x128(a, b))


@torch.library.custom_op("fp8pass::swiglu_quantize_128x1_out", mutates_args=("q_t", "scale_t"))
def swiglu_quantize_128x1_out(a: torch.Tensor, b: torch.Tensor, q_t: torch.Tensor, scale_t: torch.Tensor) -> None:
    """swiglu_quantize_128x1(a, b) written into (q_t, scale_t)."""
    _write_outputs((q_t, scale_t), swiglu_quantize_128x1(a, b))


@torch.library.custom_op("fp8pass::swiglu_grad_a_quantize_1x128_128x1_out", mutates_args=_DUAL_OUTS)
def swiglu_grad_a_quantize_1x128_128x1_out(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, q_row: torch.Tensor,
                                           s_row: torch.Tensor, q_col_t: torch.Tensor, s_col_t: torch.Tensor) -> None:
    """swiglu_grad_a_quantize_1x128_128x1(grad, a, b) written into (q_row, s_row, q_col_t, s_col_t)."""
    _write_outputs((q_row, s_row, q_col_t, s_col_t), swiglu_grad_a_quantize_1x128_128x1(grad, a, b))


@torch.library.custom_op("fp8pass::swiglu_grad_b_quantize_1x128_128x1_out", mutates_args=_DUAL_OUTS)
def swiglu_grad_b_quantize_1x128_128x1_out(grad: torch.Tensor, a: torch.Tensor, q_row: torch.Tensor,
                                           s_row: torch.Tensor, q_col_t: torch.Tensor, s_col_t: torch.Tensor) -> None:
    """swiglu_grad_b_quantize_1x128_128x1(grad, a) written into (q_row, s_row, q_col_t, s_col_t)."""
    _write_outputs((q_row, s_row, q_col_t, s_col_t), swiglu_grad_b_quantize_1x128_128x1(grad, a))


# functional op name -> its out variant's name (the out arguments follow the functional op's outputs).
# By name: the OpOverload objects under torch.ops.fp8pass can be rebuilt during a process (seen
# after a transformers model's training in the test suite), so a dict keyed by the objects of
# import time would stop matching the ops in later graphs.
OUT_VARIANTS = {
    "quantize_1x128": "quantize_1x128_out",
    "quantize_128x1": "quantize_128x1_out",
    "quantize_1x128_128x1": "quantize_1x128_128x1_out",
    "quantize_1x128_128x1_cat3": "quantize_1x128_128x1_cat3_out",
    "quantize_128x128": "quantize_128x128_out",
    "quantize_128x128_transposed": "quantize_128x128_transposed_out",
    "swiglu_quantize_1x128_128x1": "swiglu_quantize_1x128_128x1_out",
    "swiglu_quantize_1x128": "swiglu_quantize_1x128_out",
    "swiglu_quantize_128x1": "swiglu_quantize_128x1_out",
    "swiglu_grad_a_quantize_1x128_128x1": "swiglu_grad_a_quantize_1x128_128x1_out",
    "swiglu_grad_b_quantize_1x128_128x1": "swiglu_grad_b_quantize_1x128_128x1_out",
}


def op_name(op) -> "str | None":
    """'quantize_1x128' for torch.ops.fp8pass.quantize_1x128.default (any object of it), else None."""
    if getattr(op, "namespace", None) == "fp8pass" and getattr(op, "_overloadname", None) == "default":
        return op._opname
    return None


def out_variant(op) -> "torch._ops.OpOverload | None":
    """The out variant of a functional quantize op (`torch.ops.fp8pass.<name>.default`), else None."""
    name = OUT_VARIANTS.get(op_name(op))
    return getattr(torch.ops.fp8pass, name).default if name else None


@torch.library.custom_op("fp8pass::dequantize", mutates_args=())
def dequantize(q: torch.Tensor, scale: torch.Tensor, tile_rows: int, tile_cols: int,
               out_dtype: torch.dtype) -> torch.Tensor:
    """q times its tile scales, for (tile_rows, tile_cols) in {(1,128), (128,1), (128,128)}."""
    if (tile_rows, tile_cols) not in ((1, TILE), (TILE, 1), (TILE, TILE)):
        raise ValueError(f"fp8pass.dequantize: unsupported tile {tile_rows}x{tile_cols}")
    return reference.dequantize(q, scale, tile_rows, tile_cols, out_dtype)


@dequantize.register_fake
def _(q, scale, tile_rows, tile_cols, out_dtype):
    return torch.empty(q.shape, dtype=out_dtype, device=q.device)


def check_gemm_operands(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor) -> None:
    """Shape/dtype checks shared by every gemm_blockwise kernel (clear errors, not wrong numbers)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"fp8pass.gemm_blockwise: expected a[M, K] @ b[K, N], got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != FP8_DTYPE or b.dtype != FP8_DTYPE:
        raise TypeError(f"fp8pass.gemm_blockwise: operands must be {FP8_DTYPE}, got {a.dtype} and {b.dtype}")
    m, k = a.shape
    n = b.shape[1]
    kb = _cdiv(k, TILE)
    if tuple(a_scale.shape) != (m, kb):
        raise ValueError(f"fp8pass.gemm_blockwise: a_scale must be [M, ceil(K/128)] = {(m, kb)}, got {tuple(a_scale.shape)}")
    if tuple(b_scale.shape) not in ((kb, _cdiv(n, TILE)), (kb, n)):
        raise ValueError(
            f"fp8pass.gemm_blockwise: b_scale must be [ceil(K/128), ceil(N/128)] (128x128 blocks) or "
            f"[ceil(K/128), N] (128x1 tiles) = {(kb, _cdiv(n, TILE))} or {(kb, n)}, got {tuple(b_scale.shape)}"
        )


@torch.library.custom_op("fp8pass::gemm_blockwise", mutates_args=())
def gemm_blockwise(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """Blockwise-scaled FP8 GEMM, FP32 promotion per 128-wide K block (see reference.py)."""
    check_gemm_operands(a, a_scale, b, b_scale)
    return reference.gemm_blockwise(a, a_scale, b, b_scale, out_dtype)


@gemm_blockwise.register_fake
def _(a, a_scale, b, b_scale, out_dtype):
    return torch.empty((a.shape[0], b.shape[1]), dtype=out_dtype, device=a.device)


@register_flop_formula(torch.ops.fp8pass.gemm_blockwise)
def gemm_blockwise_flops(a_shape, a_scale_shape, b_shape, b_scale_shape, *args, out_shape=None, **kwargs) -> int:
    """2*M*N*K, as for aten.mm: torch.utils.flop_counter.FlopCounterMode (MFU counters) counts the
    FP8 GEMMs, and the partitioner's activation_memory_budget knapsack, which ranks what to
    recompute by these counts, sees them as the costly ops they are."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def check_grouped_gemm_operands(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                                offs: torch.Tensor) -> None:
    """Shape/dtype checks of gemm_blockwise_grouped (the offsets' values are checked where they can
    be read without a device sync: by the CPU kernel)."""
    op = "fp8pass.gemm_blockwise_grouped"
    if offs.dim() != 1 or offs.dtype != torch.int32 or offs.shape[0] == 0:
        raise ValueError(f"{op}: offs must be a non-empty 1-D int32 tensor of group ends (as torch._grouped_mm's), "
                         f"got {offs.dtype} of shape {tuple(offs.shape)}")
    if a.dtype != FP8_DTYPE or b.dtype != FP8_DTYPE:
        raise TypeError(f"{op}: operands must be {FP8_DTYPE}, got {a.dtype} and {b.dtype}")
    if offs.device != a.device:
        raise ValueError(f"{op}: offs is on {offs.device}, the operands on {a.device}; move offs to {a.device}")
    groups = offs.shape[0]
    if b.dim() == 3:  # Fprop / Dgrad: rows of a grouped, one 128x128-block weight per group
        if a.dim() != 2 or b.shape[0] != groups or a.shape[1] != b.shape[1]:
            raise ValueError(f"{op}: expected a[S, K] @ b[G={groups}, K, N], got {tuple(a.shape)} and {tuple(b.shape)}")
        kb = _cdiv(a.shape[1], TILE)
        want_a, want_b = (a.shape[0], kb), (groups, kb, _cdiv(b.shape[2], TILE))
    elif b.dim() == 2:  # Wgrad: the contracted token dim grouped, 128x1 tiles on both operands
        if a.dim() != 2 or a.shape[1] != b.shape[0]:
            raise ValueError(f"{op}: expected a[M, S] @ b[S, N] with S grouped, got {tuple(a.shape)} and {tuple(b.shape)}")
        sb = _cdiv(a.shape[1], TILE)
        want_a, want_b = (a.shape[0], sb), (sb, b.shape[1])
    else:
        raise ValueError(f"{op}: b must be 3-D (one weight per group) or 2-D (grouped token dim), got {tuple(b.shape)}")
    if tuple(a_scale.shape) != want_a or tuple(b_scale.shape) != want_b:
        raise ValueError(f"{op}: scales must be a_scale {want_a} and b_scale {want_b} for a {tuple(a.shape)} and "
                         f"b {tuple(b.shape)}, got {tuple(a_scale.shape)} and {tuple(b_scale.shape)}")


@torch.library.custom_op("fp8pass::gemm_blockwise_grouped", mutates_args=())
def gemm_blockwise_grouped(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                           offs: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """gemm_blockwise per group of rows (b 3-D: Fprop, Dgrad) or of the contracted token dim (b 2-D:
    Wgrad), groups given by torch._grouped_mm's offs: the FP8 form of MoE experts' grouped GEMMs
    (see reference.gemm_blockwise_grouped)."""
    check_grouped_gemm_operands(a, a_scale, b, b_scale, offs)
    return reference.gemm_blockwise_grouped(a, a_scale, b, b_scale, offs, out_dtype)


@gemm_blockwise_grouped.register_fake
def _(a, a_scale, b, b_scale, offs, out_dtype):
    if b.dim() == 3:
        return torch.empty((a.shape[0], b.shape[2]), dtype=out_dtype, device=a.device)
    return torch.empty((offs.shape[0], a.shape[0], b.shape[1]), dtype=out_dtype, device=a.device)


@register_flop_formula(torch.ops.fp8pass.gemm_blockwise_grouped)
def gemm_blockwise_grouped_flops(a_shape, a_scale_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """2*S*K*N however the S rows (or tokens) fall into groups, as torch counts aten._grouped_mm
    (rows past the last group's end are counted too: their count is not known before the call)."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[-1]
