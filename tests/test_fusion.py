"""Quantization fused into the kernels that produce its input (lowering/fused_quantize.py).

Read from Inductor's generated code (C++ on the CPU; the same scheduler decisions make the
Triton kernels on CUDA): the kernel that writes a GEMM's FP8 A operand must be the kernel that
computes the producer's math, RMSNorm's scaling by its weight, SiLU*mul, SiLU's backward.
"""

import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fp8pass
from conftest import load_example
from fp8pass.kernels import reference

train_gpt = load_example("train_gpt")
CFG = train_gpt.GPTConfig(dim=128, n_heads=2, mlp_hidden=384, seq_len=64)

_KERNEL_CALL = re.compile(r"^\s+(cpp_fused\w*|triton_\w+)(?:\.run)?\((.*)\)\s*$")
_GEMM_CALL = re.compile(r"fp8pass\.gemm_blockwise\.default\((?:reinterpret_tensor\()?(\w+)")
_NORM_WEIGHT = re.compile(r"assert_size_stride\((primals_\d+), \(128, \), \(1, \)")


def _a_operand_writers(code: str) -> list[tuple[str, list[str]]]:
    """For each gemm_blockwise call in order: (name, args) of the last kernel before it that
    takes its A operand's buffer as an argument (the kernel that wrote it), or ("", [])."""
    writers, calls = [], []
    for line in code.splitlines():
        kernel = _KERNEL_CALL.match(line)
        if kernel:
            calls.append((kernel.group(1), [a.strip() for a in kernel.group(2).split(",")]))
            continue
        gemm = _GEMM_CALL.search(line)
        if gemm:
            buf = gemm.group(1)
            writer = next(((n, a) for n, a in reversed(calls) if buf in a), ("", []))
            writers.append(writer)
    return writers


def _compiled_block_code(**options):
    options.setdefault("fuse_quantization", True)
    options.setdefault("fuse_swiglu", False)  # these tests read Inductor's fusion of SiLU*mul
    torch.manual_seed(0)
    block = train_gpt.Block(CFG)
    x = torch.randn(4, 64, 128, requires_grad=True)
    compiled = torch.compile(block, backend=fp8pass.backend(**options))
    _, (fwd, bwd) = run_and_get_code(lambda: compiled(x).sum().backward())
    return fwd, bwd


def test_quantization_generated_inside_norm_and_swiglu_kernels():
    fwd, bwd = _compiled_block_code()
    for code in (fwd, bwd):  # every activation/gradient quantization became generated code
        for op in ("quantize_1x128", "quantize_128x1", "quantize_1x128_128x1"):
            assert not re.search(rf"fp8pass\.{op}(_out)?\.default", code)
    norm_weights = _NORM_WEIGHT.findall(fwd)
    assert len(norm_weights) == 2  # attn_norm.weight, mlp_norm.weight
    writers = _a_operand_writers(fwd)
    assert len(writers) == 5  # wqkv, wo, w1, w3, w2
    wqkv, wo, w1, w3, w2 = writers
    # The norm's output is multiplied by its weight and quantized in one kernel: the kernel that
    # writes the FP8 operand of wqkv (of w1 and w3) reads attn_norm's (mlp_norm's) weight.
    assert wqkv[0] and set(norm_weights) & set(wqkv[1])
    assert w1[0] and set(norm_weights) & set(w1[1])
    assert w1 == w3 and set(wqkv[1]) & set(norm_weights) != set(w1[1]) & set(norm_weights)
    # SiLU(w1 x) * (w3 x) is computed and quantized for w2 in one kernel.
    assert "silu" in w2[0] and "mul" in w2[0]
    # Backward: the gradient into w1's output is quantized inside SiLU's backward kernel.
    assert any("silu_backward" in name for name, _ in _a_operand_writers(bwd))


def test_without_fusion_quantization_stays_separate_ops():
    """The negative control of the test above: with fuse_quantization=False the quantize ops run
    as their own kernels, and no generated kernel writes a GEMM operand."""
    fwd, _ = _compiled_block_code(fuse_quantization=False)
    assert re.search(r"fp8pass\.quantize_1x128(_128x1)?(_out)?\.default", fwd)
    assert all(name == "" for name, _ in _a_operand_writers(fwd))


def test_fusion_keeps_training_numerics():
    """Same block, fused vs unfused: outputs and gradients agree (fp32 model; the fused kernels
    quantize the very values the unfused ones read back from memory)."""
    results = []
    for fuse in (True, False):
        torch.manual_seed(0)
        block = train_gpt.Block(CFG)
        x = torch.randn(4, 64, 128, requires_grad=True)
        compiled = torch.compile(block, backend=fp8pass.backend(fuse_quantization=fuse))
        out = compiled(x)
        out.square().mean().backward()
        results.append([out.detach(), x.grad] + [p.grad for p in block.parameters()])
    for fused, unfused in zip(*results):
        torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)


# On CUDA (H200, torch 2.11) the generated scales differ from the reference in the last bit for
# some tiles (seen 2026-11-28, benchmarks/RESULTS.md): off the CPU Inductor turns amax / 448 into
# amax * (1/448). fuse_quantization is off by default, partly for this.
_CUDA_SCALES_OFF_BY_AN_ULP = pytest.mark.xfail(
    strict=True, reason="Inductor lowers the scale's division by a constant to a reciprocal multiply on CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, _CUDA_SCALES_OFF_BY_AN_ULP])])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [256, 200])  # a tail of 72 tokens in the 128x1 tiles
def test_generated_quantization_is_bit_identical_to_reference(dtype, rows, device):
    torch.manual_seed(1)
    x = (torch.randn(rows, 384) * torch.logspace(-3, 3, 384)).to(dtype)
    x[5, :128] = 0  # an all-zero 1x128 tile
    x = x.to(device)
    ops = torch.ops.fp8pass

    def quantize_all(t):
        return (*ops.quantize_1x128_128x1(t), *ops.quantize_1x128(t), *ops.quantize_128x1(t))

    if rows == 200:  # a symbolic token count (the 128x1 tiles pad it by a symbolic amount)
        torch._dynamo.mark_dynamic(x, 0)
    compiled = torch.compile(quantize_all, backend=fp8pass.backend(fuse_quantization=True))
    got, (code,) = run_and_get_code(compiled, x)
    # generated, not the ops' own kernels (except the 128x1 of bf16 on the CPU: fused_quantize.py)
    # (an op left in the graph is called as itself or, with inductor_buffers, as its out variant)
    assert not re.search(r"fp8pass\.quantize_1x128(_128x1)?(_out)?\.default", code)
    assert bool(re.search(r"fp8pass\.quantize_128x1(_out)?\.default", code)) == (device == "cpu" and dtype != torch.float32)
    want = quantize_all(x)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        if g.dtype == reference.FP8_DTYPE:
            assert torch.equal(g.view(torch.uint8), w.view(torch.uint8))
        else:
            assert torch.equal(g, w)
    if rows == 200:  # another token count: the same compiled code, still exact
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        shorter = x[:130]
        for g, w in zip(compiled(shorter), quantize_all(shorter)):
            assert torch.equal(g.view(torch.uint8), w.view(torch.uint8)) if g.dtype == reference.FP8_DTYPE \
                else torch.equal(g, w)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames
