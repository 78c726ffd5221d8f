"""SwiGLU fused into the quantizations that read it (`fuse_swiglu`, on by default; lowering/swiglu.py).

CPU checks: the ops' numerics and autograd formula; the rewrite of `F.silu(a) * b` in the graph
torch.compile hands the backend (and what it leaves alone); Inductor's generated code calling the
fused ops in forward and backward of a GPT block in place of SiLU*mul kernels and three dual
quantizations; the gradients of a trained block as close to BF16's as without the fusion; the
SwiGLU ops decomposed back where their result is not quantized (an opted-out w2, inference).
The kernels' numerics: tests/triton_interp_checks.py (interpreter) and test_triton_gpu.py.
"""

import operator
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

import fp8pass
from conftest import load_example, sqnr_db
from fp8pass.lowering.swiglu import rewrite_swiglu

train_gpt = load_example("train_gpt")
CFG = train_gpt.GPTConfig(dim=128, n_heads=2, mlp_hidden=384, seq_len=64)


def test_swiglu_op_and_its_gradients_match_silu_times_b():
    torch.manual_seed(0)
    a = (torch.randn(64, 256, dtype=torch.float64) * 3).float().requires_grad_()
    b = torch.randn(64, 256).requires_grad_()
    grad = torch.randn(64, 256)
    h = torch.ops.fp8pass.swiglu(a, b)
    ga, gb = torch.autograd.grad(h, (a, b), grad)
    a2, b2 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    h2 = F.silu(a2) * b2
    ga2, gb2 = torch.autograd.grad(h2, (a2, b2), grad.double())
    for got, want in ((h, h2), (ga, ga2), (gb, gb2)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_swiglu_op_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="share shape and dtype"):
        torch.ops.fp8pass.swiglu(torch.randn(4, 128), torch.randn(4, 256))
    with pytest.raises(ValueError, match="2-D"):
        torch.ops.fp8pass.swiglu_quantize_1x128_128x1(torch.randn(2, 4, 128), torch.randn(2, 4, 128))
    with pytest.raises(ValueError, match="share shape and dtype"):
        torch.ops.fp8pass.swiglu_grad_b_quantize_1x128_128x1(torch.randn(4, 128), torch.randn(4, 128).double())


def _dynamo_graph(fn, *inputs):
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm

    torch.compile(fn, backend=capture)(*inputs)
    return graphs[0]


def _call_targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


class _MLP(nn.Module):
    def __init__(self, hidden=256, act=None, swap=False):
        super().__init__()
        self.w1, self.w3, self.w2 = nn.Linear(128, hidden), nn.Linear(128, hidden), nn.Linear(hidden, 128)
        self.act = act or nn.SiLU()
        self.swap = swap

    def forward(self, x):
        a, b = self.act(self.w1(x)), self.w3(x)
        return self.w2(b * a if self.swap else a * b)


@pytest.mark.parametrize("swap", [False, True])
def test_rewrite_replaces_silu_times_b_by_one_op(swap):
    gm = _dynamo_graph(_MLP(swap=swap), torch.randn(4, 128))
    assert rewrite_swiglu(gm) == 1
    targets = _call_targets(gm)
    assert torch.ops.fp8pass.swiglu.default in targets
    assert F.silu not in targets and operator.mul not in targets

    def rewritten(gm, example_inputs):  # the rewritten graph computes what the module does
        rewrite_swiglu(gm)
        return gm

    torch._dynamo.reset()
    mlp, x = _MLP(swap=swap), torch.randn(4, 128)
    torch.testing.assert_close(torch.compile(mlp, backend=rewritten)(x), mlp(x), rtol=1e-5, atol=1e-6)


def test_rewrite_leaves_other_patterns_alone():
    # silu read twice, a hidden size that is no multiple of 128, and GELU: not SwiGLU-as-fused
    class SiluTwice(nn.Module):
        def forward(self, a, b):
            s = F.silu(a)
            return s * b + s

    for fn, inputs in ((SiluTwice(), (torch.randn(4, 128), torch.randn(4, 128))),
                       (_MLP(hidden=200), (torch.randn(4, 128),)),
                       (_MLP(act=nn.GELU()), (torch.randn(4, 128),))):
        gm = _dynamo_graph(fn, *inputs)
        assert rewrite_swiglu(gm) == 0
        assert torch.ops.fp8pass.swiglu.default not in _call_targets(gm)


def _block_code_and_grads(dtype=torch.float32, **options):
    torch.manual_seed(0)
    block = train_gpt.Block(CFG).to(dtype)
    x = torch.randn(4, 64, 128, dtype=dtype, requires_grad=True)
    options.setdefault("fuse_swiglu", True)
    # the dual fused ops; with recompute_fp8_activations (the default) w2's two copies are made
    # apart by the single-copy ops instead, which the tests of that option ask for by name
    options.setdefault("recompute_fp8_activations", False)
    compiled = torch.compile(block, backend=fp8pass.backend(**options))
    grad = torch.randn(4, 64, 128, dtype=dtype, generator=torch.Generator().manual_seed(1))

    def step():
        out = compiled(x)
        out.backward(grad)
        return out.detach()

    out, (fwd, bwd) = run_and_get_code(step)
    grads = {"x": x.grad, **{n: p.grad for n, p in block.named_parameters()}}
    return fwd, bwd, out, grads


def _bf16_reference(dtype=torch.float32):
    torch.manual_seed(0)
    block = train_gpt.Block(CFG).to(dtype)
    x = torch.randn(4, 64, 128, dtype=dtype, requires_grad=True)
    out = block(x)
    out.backward(torch.randn(4, 64, 128, dtype=dtype, generator=torch.Generator().manual_seed(1)))
    return out.detach(), {"x": x.grad, **{n: p.grad for n, p in block.named_parameters()}}


def test_generated_code_calls_the_fused_ops_in_forward_and_backward():
    def calls(op, code):  # call lines (Inductor's asserts name the op too, without a call)
        return len(re.findall(rf"torch\.ops\.fp8pass\.{op}\.default\(", code))

    fwd, bwd, _, _ = _block_code_and_grads()
    # as out variants on buffers Inductor allocates (inductor_buffers, on by default)
    assert calls("swiglu_quantize_1x128_128x1_out", fwd) == 1
    assert calls("swiglu_grad_a_quantize_1x128_128x1_out", bwd) == 1
    assert calls("swiglu_grad_b_quantize_1x128_128x1_out", bwd) == 1
    # grad_a's op before grad_b's (b's last reader first: kernels/ops.py)
    assert bwd.index("swiglu_grad_a_quantize_1x128_128x1_out.default(") < bwd.index(
        "swiglu_grad_b_quantize_1x128_128x1_out.default(")
    # the three dual quantizations they replace are gone: forward keeps the two norms' outputs'
    # and the attention output's; backward the gradients of wo's and w2's outputs, and of wqkv's
    # from SDPA's three gradients (fold_gradient_cat)
    assert calls("quantize_1x128_128x1(_out)?", fwd) == 3
    assert calls("quantize_1x128_128x1(_out)?", bwd) == 2 and calls("quantize_1x128_128x1_cat3_out", bwd) == 1
    for code in (fwd, bwd):
        assert calls("swiglu(_backward)?", code) == 0  # none left undecomposed

    fwd1, bwd1, _, _ = _block_code_and_grads(inductor_buffers=False)  # the functional ops then
    assert calls("swiglu_quantize_1x128_128x1", fwd1) == 1 and calls("swiglu_grad_b_quantize_1x128_128x1", bwd1) == 1

    fwd0, bwd0, _, _ = _block_code_and_grads(fuse_swiglu=False)  # the negative control
    assert "swiglu" not in fwd0 + bwd0
    assert calls("quantize_1x128_128x1(_out)?", fwd0) == 4
    assert calls("quantize_1x128_128x1(_out)?", bwd0) == 4 and calls("quantize_1x128_128x1_cat3_out", bwd0) == 1


def test_fused_block_gradients_as_close_to_bf16_as_unfused():
    # Not bit-identical to the unfused path: the CPU op computes exp and the divisions in eager
    # torch, Inductor's kernels in its own C++ (a last-bit difference moves an FP8 rounding). Both
    # must be as close to the high-precision block: SQNR within 1 dB of each other, and above the
    # FP8 floor the other tests use.
    _, ref = _bf16_reference()
    _, _, _, fused = _block_code_and_grads()
    _, _, _, unfused = _block_code_and_grads(fuse_swiglu=False)
    for name in ref:
        s_fused, s_unfused = sqnr_db(ref[name], fused[name]), sqnr_db(ref[name], unfused[name])
        assert s_fused > 20, f"{name}: {s_fused:.1f} dB"
        assert abs(s_fused - s_unfused) < 1.0, f"{name}: fused {s_fused:.1f} dB vs unfused {s_unfused:.1f} dB"


def test_recomputed_product_is_quantized_by_the_fused_single_copy_ops():
    # recompute_fp8_activations makes w2's 1x128 copy in forward and its 128x1 copy in backward
    # from the recomputed product; with fuse_swiglu one kernel computes the product per tile and
    # writes only that copy, in both (no BF16 product, in backward beside the two input gradients)
    def calls(op, code):
        return len(re.findall(rf"torch\.ops\.fp8pass\.{op}\.default\(", code))

    fwd, bwd, _, grads = _block_code_and_grads(recompute_fp8_activations=True)
    assert calls("swiglu_quantize_128x1_out", bwd) == 1
    assert calls("swiglu_grad_a_quantize_1x128_128x1_out", bwd) == 1
    # backward makes the other three Linear inputs' copies by the plain 128x1 quantizer
    assert calls("quantize_128x1_out", bwd) == 3
    # forward: the 1x128 copies only, the product's by the fused op
    assert calls("swiglu_quantize_1x128_out", fwd) == 1 and calls(r"swiglu\w*", fwd) == 1
    assert calls("quantize_128x1(_out)?", fwd) == 0 and calls("quantize_1x128(_out)?", fwd) == 3
    _, ref = _bf16_reference()
    _, _, _, plain = _block_code_and_grads(recompute_fp8_activations=True, fuse_swiglu=False)
    for name in ref:
        s_fused, s_plain = sqnr_db(ref[name], grads[name]), sqnr_db(ref[name], plain[name])
        assert s_fused > 20 and abs(s_fused - s_plain) < 1.0, f"{name}: {s_fused:.1f} vs {s_plain:.1f} dB"
    # explain names w2 among the Linears whose copy backward makes
    torch.manual_seed(0)
    block = train_gpt.Block(CFG)
    report = fp8pass.explain(block, torch.randn(4, 64, 128),
                             fp8_config=fp8pass.Config(recompute_fp8_activations=True, fuse_swiglu=True))
    assert "mlp.w2" in report.wgrad_copies_in_backward
    assert report.fused_swiglu == {"forward": 1, "backward": 3}


def test_opted_out_w2_decomposes_the_swiglu_op_and_inference_fuses_it():
    # w2 in high precision: its input is not quantized, so the op must become aten ops again (a
    # graph node Inductor would otherwise call as a slow fallback) with the same numbers as
    # without the rewrite
    def no_w2(fqn, module):
        return not fqn.endswith("mlp.w2")

    fwd, bwd, out, grads = _block_code_and_grads(module_filter=no_w2)
    assert "swiglu" not in fwd
    # backward still fuses w1's and w3's gradient quantizations
    assert "fp8pass.swiglu_grad_a_quantize_1x128_128x1" in bwd
    _, _, out0, grads0 = _block_code_and_grads(module_filter=no_w2, fuse_swiglu=False)
    torch.testing.assert_close(out, out0, rtol=1e-5, atol=1e-6)  # forward: the same decomposition
    for name in grads:
        assert sqnr_db(grads0[name], grads[name]) > 25, name

    torch._dynamo.reset()
    torch.manual_seed(0)
    block = train_gpt.Block(CFG).eval()
    x = torch.randn(4, 64, 128)
    compiled = torch.compile(block, backend=fp8pass.backend(fuse_swiglu=True))
    with torch.no_grad():
        got, (code,) = run_and_get_code(lambda: compiled(x))
        want = block(x)
    # inference quantizes the product once (w2's 1x128 copy): by the fused single-copy op
    assert re.findall(r"fp8pass\.(swiglu\w*)\.default\(", code) == ["swiglu_quantize_1x128_out"]
    assert sqnr_db(want, got) > 25


def test_bf16_block_trains_with_the_fusion():
    torch.manual_seed(0)
    model = train_gpt.GPT(train_gpt.GPTConfig(dim=128, n_heads=2, mlp_hidden=384, seq_len=64, n_layers=2))
    model = model.to(torch.bfloat16)
    compiled = torch.compile(model, backend=fp8pass.backend(fuse_swiglu=True))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.randint(0, 256, (8, 65), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(12):
        logits = compiled(data[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), data[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.3, losses


def test_checkpointed_block_is_fused_and_trains_the_same():
    # torch.utils.checkpoint regions reach the backend as subgraphs: the rewrite goes into them,
    # and the recomputing backward gives the gradients of the plain block
    from torch.utils.checkpoint import checkpoint

    grads = {}
    for ckpt in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        block = train_gpt.Block(CFG)
        x = torch.randn(4, 64, 128, requires_grad=True)
        fn = (lambda v: checkpoint(block, v, use_reentrant=False)) if ckpt else block
        compiled = torch.compile(fn, backend=fp8pass.backend(fuse_swiglu=True))
        _, codes = run_and_get_code(lambda: compiled(x).square().mean().backward())
        code = "\n".join(codes)
        # w2's copies: by the single-copy ops with recompute_fp8_activations (the default), by the
        # dual one inside the checkpointed region (its forward runs again in backward anyway)
        single = "swiglu_quantize_1x128_out" in code and "swiglu_quantize_128x1_out" in code
        assert single != ckpt and ("swiglu_quantize_1x128_128x1_out" in code) == ckpt
        assert "swiglu_grad_a_quantize_1x128_128x1" in code
        grads[ckpt] = [x.grad] + [p.grad for p in block.parameters()]
    for plain, ckpt in zip(grads[False], grads[True]):
        assert sqnr_db(plain, ckpt) > 40


def test_explain_reports_the_fused_swiglu_kernels():
    torch.manual_seed(0)
    block = train_gpt.Block(CFG)
    x = torch.randn(4, 64, 128, requires_grad=True)
    on = fp8pass.explain(block, x, fp8_config=fp8pass.Config(fuse_swiglu=True, recompute_fp8_activations=False))
    assert on.fused_swiglu == {"forward": 1, "backward": 2}
    assert "SwiGLU computed inside its quantization kernels (fuse_swiglu): 1 in forward, 2 in backward" in str(on)
    torch._dynamo.reset()
    default = fp8pass.explain(block, x)  # with recompute_fp8_activations: w2's 128x1 copy in backward too
    assert default.fused_swiglu == {"forward": 1, "backward": 3}
    torch._dynamo.reset()
    off = fp8pass.explain(block, x, fp8_config=fp8pass.Config(fuse_swiglu=False))
    assert off.fused_swiglu == {"forward": 0, "backward": 0} and "fuse_swiglu" not in str(off)
