"""GPU checks of the Triton kernels (marked `gpu`, skipped without CUDA).

* Quantization bit-identical to reference.py on the same device, for random inputs that do need
  rounding, bf16/fp16/fp32, tails, strided views, all-zero, NaN and Inf tiles: the plain-Triton
  kernels and, on sm90, the Gluon ones (dual and 128x1 in the ops' transposed layouts), each
  forced in turn; the direct launch (kernels/launch.py) keeps inputs that Triton specializes
  differently apart; the out variants called again with fresh inputs (launch plans replaying
  their first call's launches) write the same bytes.
* Every GEMM role (Fprop, Dgrad, Wgrad as the graph pass emits the operands, and the K-major
  variants) through each backend (plain Triton, Gluon where available, the dispatcher behind
  torch.ops.fp8pass.gemm_blockwise): calc_diff < 1e-3 against a BF16-input FP32 reference
  (DeepGEMM's gate), an error no larger than cuBLAS blockwise on the same quantized inputs (where
  torch offers it), no NaN, the output poisoned before each run, fresh random inputs each check.
* torch.compile(fullgraph=True) over the registered ops.
"""

from __future__ import annotations

import re

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

triton = pytest.importorskip("triton")

from fp8pass.kernels import reference as ref  # noqa: E402

FP8 = torch.float8_e4m3fn


def _q():
    from fp8pass.kernels import triton_quantize
    return triton_quantize


def _bytes_equal(got: torch.Tensor, exp: torch.Tensor) -> tuple[bool, str]:
    g, e = got.view(torch.uint8), exp.view(torch.uint8)
    gn, en = torch.isnan(got.float()), torch.isnan(exp.float())
    if not torch.equal(gn, en):
        return False, f"NaN positions differ ({int(gn.sum())} vs {int(en.sum())})"
    bad = (g != e) & ~en
    if bad.any():
        i = bad.nonzero()[0].tolist()
        return False, f"{int(bad.sum())} bytes differ, first at {i}: {int(g[tuple(i)])} vs {int(e[tuple(i)])}"
    return True, ""


def _scales_equal(got, exp):
    if not torch.equal(torch.isnan(got), torch.isnan(exp)):
        return False, "NaN scales differ"
    if not torch.equal(torch.nan_to_num(got), torch.nan_to_num(exp)):
        return False, f"scales differ by {(torch.nan_to_num(got) - torch.nan_to_num(exp)).abs().max().item()}"
    return True, ""


def _inputs(m, k, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g) * torch.exp2(torch.randint(-6, 7, (m, 1), device="cuda",
                                                                                 generator=g).float())
    x = x.to(dtype)
    x[1, 3] = float("nan")
    if m > 200 and k > 256:
        x[130:140, 128:256] = 0
        x[135, 128:160] = -0.0  # negative zeros: the quotient must keep the sign (byte 0x80)
        x[m - 1, 0:64] = -0.0
        x[200, 260] = float("inf")
        x[150, 300] = -float("inf")
    return x


QUANT_CASES = [(1000, 4096), (4096, 1024), (300, 640), (128, 128), (77, 384)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("m,k", QUANT_CASES)
@pytest.mark.parametrize("view", ["contiguous", "transposed", "sliced"])
def test_quantize_bit_identical(dtype, m, k, view):
    tq = _q()
    x = _inputs(m, k, dtype, seed=m * 7 + k)
    if view == "transposed":
        x = x.t().contiguous().t()
    elif view == "sliced":
        x = torch.cat([x, x[:, :128]], dim=1)[:, :k]
    xc = x.cpu()
    failures = []
    for name in ("quantize_1x128", "quantize_128x1", "quantize_1x128_128x1", "quantize_128x128", "dual col^T gluon",
                 "dual col^T triton", "128x1 q^T gluon", "128x1 q^T triton"):
        # the transposed layouts (what the ops return): the Gluon kernels on sm90 if K % 128 == 0
        if name.startswith("dual col^T"):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(tq, "_DUAL_IMPL", name.split()[-1])
                q_row, s_row, q_col_t, s_col_t = tq.quantize_1x128_128x1(x, col_layout="transposed")
            got = (q_row, s_row, q_col_t.t(), s_col_t.t())
            name = "quantize_1x128_128x1"
        elif name.startswith("128x1 q^T"):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(tq, "_Q128X1_GLUON", name.endswith("gluon"))
                q_t, s_t = tq.quantize_128x1(x, layout="transposed")
            got = (q_t.t(), s_t.t())
            name = "quantize_128x1"
        else:
            got = getattr(tq, name)(x)
        exp_gpu = getattr(ref, name)(x)
        exp_cpu = getattr(ref, name)(xc)  # the ground truth: IEEE arithmetic on the CPU
        for gi, eg, ec in zip(got, exp_gpu, exp_cpu):
            cmp = _bytes_equal if ec.dtype == FP8 else _scales_equal
            ok, detail = cmp(gi.cpu(), ec)
            if not ok:
                failures.append(f"{name} vs CPU reference: {detail}")
            ok, detail = cmp(gi, eg)
            if not ok:
                failures.append(f"{name} vs GPU reference: {detail}")
            ok, detail = cmp(eg.cpu(), ec)
            if not ok:
                failures.append(f"(torch's own GPU reference vs its CPU reference: {detail})")
    assert not failures, "; ".join(failures)


def test_quantize_transposed_outputs_and_nd():
    tq = _q()
    x = _inputs(1000, 2048, torch.bfloat16, seed=3)
    q, s = ref.quantize_128x1(x)
    qt, st = tq.quantize_128x1(x, layout="transposed")
    assert _bytes_equal(qt, q.t().contiguous())[0] and _scales_equal(st, s.t().contiguous())[0]
    g = tq.quantize_1x128_128x1(x, col_layout="transposed")
    e = ref.quantize_1x128_128x1(x)
    assert _bytes_equal(g[2], e[2].t().contiguous())[0] and _scales_equal(g[3], e[3].t().contiguous())[0]
    w = _inputs(768, 1024, torch.bfloat16, seed=4)
    qw, sw, qwt = tq.quantize_128x128(w, with_transposed=True)
    eq, es = ref.quantize_128x128(w)
    assert _bytes_equal(qwt, eq.t().contiguous())[0]
    qwt2, swt = tq.quantize_128x128(w, layout="transposed")
    assert _bytes_equal(qwt2, eq.t().contiguous())[0] and _scales_equal(swt, es.t().contiguous())[0]
    x3 = _inputs(4 * 300, 512, torch.bfloat16, seed=5).reshape(4, 300, 512).transpose(0, 1)
    got, exp = tq.quantize_1x128(x3), ref.quantize_1x128(x3)
    assert _bytes_equal(got[0], exp[0])[0] and _scales_equal(got[1], exp[1])[0]
    # MoE experts' stacks (rows not a multiple of 128 in the second), row and transposed layouts
    for rows in (768, 200):
        stack = _inputs(5 * rows, 384, torch.bfloat16, seed=rows).reshape(5, rows, 384)
        eq, es = ref.quantize_128x128(stack)
        q3, s3 = tq.quantize_128x128(stack)
        assert _bytes_equal(q3, eq)[0] and _scales_equal(s3, es)[0]
        qt3, st3 = tq.quantize_128x128(stack, layout="transposed")
        assert _bytes_equal(qt3, eq.transpose(1, 2).contiguous())[0]
        assert _scales_equal(st3, es.transpose(1, 2).contiguous())[0]


def test_registered_ops_use_triton_and_match():
    import fp8pass.kernels as k
    assert k.CUDA_KERNELS_REGISTERED
    x = _inputs(512, 1024, torch.bfloat16, seed=11)
    for name in ("quantize_1x128", "quantize_128x1", "quantize_1x128_128x1", "quantize_128x128",
                 "quantize_128x128_transposed"):
        got = getattr(torch.ops.fp8pass, name)(x)
        exp = list(getattr(ref, name.removesuffix("_transposed"))(x))
        if name in ("quantize_128x1", "quantize_128x128_transposed"):  # stored transposed (K-major)
            exp = [e.t().contiguous() for e in exp]
        elif name == "quantize_1x128_128x1":
            exp[2:] = [e.t().contiguous() for e in exp[2:]]
        for gi, ei in zip(got, exp):
            ok, detail = (_bytes_equal if ei.dtype == FP8 else _scales_equal)(gi, ei)
            assert ok, f"{name}: {detail}"


@pytest.mark.parametrize("m", [512, 1000])
def test_out_variants_write_what_the_functional_ops_return(m):
    # the ops the backend emits with inductor_buffers (lowering/allocated_outputs.py): outputs
    # poisoned, then filled byte for byte as the functional op returns them (M = 1000: a tail).
    # Three rounds of fresh inputs and buffers: the first call per key runs the wrapper, the later
    # ones replay its launches (kernels/cuda.py op_impls); the last round's input is off 16-byte
    # alignment (another key).
    from fp8pass.kernels.ops import OUT_VARIANTS, out_variant

    for trial in range(3):
        x = _inputs(m, 1024, torch.bfloat16, seed=12 + trial)
        if trial == 2:
            storage = torch.empty(x.numel() + 1, device="cuda", dtype=x.dtype)
            x = storage[1:].view(x.shape).copy_(x)
        _check_out_variants(x, OUT_VARIANTS, out_variant)


def _check_out_variants(x, names, out_variant):
    for name in names:
        if name.startswith("swiglu"):  # several inputs: test_swiglu_out_variants_write_...
            continue
        functional = getattr(torch.ops.fp8pass, name).default
        out_op = out_variant(functional)
        want = functional(x)
        outs = [torch.empty_strided(w.shape, w.stride(), dtype=w.dtype, device=w.device) for w in want]
        for o in outs:  # poisoned: NaN in E4M3 and in the (MN-major, so not byte-viewable) scales
            o.view(torch.uint8).fill_(0x7F) if o.dtype == FP8 else o.fill_(float("nan"))
        out_op(x, *outs)
        for got, exp in zip(outs, want):
            ok, detail = (_bytes_equal if exp.dtype == FP8 else _scales_equal)(got, exp)
            assert ok, f"{out_op}: {detail}"


# --------------------------------------------------------------------------------------------
# GEMM
# --------------------------------------------------------------------------------------------
def calc_diff(x, y):
    x, y = x.double(), y.double()
    return float(1 - 2 * (x * y).sum() / (x * x + y * y).sum())


def make_role(role: str, m: int, k: int, n: int, seed: int, kmajor: bool = False):
    """Quantized operands as the graph pass emits them, plus the BF16-input FP32 reference.

    Fprop  y = x @ W^T      x[M,K] 1x128, W[N,K] 128x128       -> A = qx,     B = qW.T
    Dgrad  dx = dy @ W      dy[M,N'] 1x128, W[N',K'] 128x128   -> A = qdy,    B = qW
    Wgrad  dW = dy^T @ x    dy[T,N'] 128x1, x[T,K'] 128x1      -> A = qdy.T,  B = qx
    kmajor=True gives the same values with K-major storage (transposed FP8 copies)."""
    tq = _q()
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g).to(torch.bfloat16)  # noqa: E731
    if role == "fprop":
        x, w = rnd(m, k), rnd(n, k)
        qa, sa = tq.quantize_1x128(x)
        qw, sw = tq.quantize_128x128(w)
        b, sb = qw.t(), sw.t()
        want = x.float() @ w.float().t()
    elif role == "dgrad":
        dy, w = rnd(m, k), rnd(k, n)  # GEMM K = out features, N = in features
        qa, sa = tq.quantize_1x128(dy)
        b, sb = tq.quantize_128x128(w)
        if kmajor:
            b = b.t().contiguous().t()
        want = dy.float() @ w.float()
    elif role == "wgrad":
        dy, x = rnd(k, m), rnd(k, n)  # GEMM K = tokens
        qdy, sdy = tq.quantize_128x1(dy)
        qa, sa = qdy.t(), sdy.t()
        b, sb = tq.quantize_128x1(x)
        if kmajor:
            qa = qa.contiguous()
            b = b.t().contiguous().t()
        want = dy.float().t() @ x.float()
    else:
        raise ValueError(role)
    return qa, sa, b, sb, want


def _cublas(a, sa, b, sb, out_dtype):
    from fp8pass.kernels import cuda
    try:
        return cuda.cublas_gemm_blockwise(a, sa, b, sb, out_dtype)
    except Exception:
        return None


GEMM_SHAPES = [  # (M, K, N): M tails, N partial blocks, Wgrad token tails
    (1000, 1024, 768),
    (2048, 4096, 1536),
    (96, 512, 384),
]
# one fixed config for the direct kernel checks: every autotuner config compiles separately,
# and the dispatcher path below (and benchmarks/gemm.py) exercises the autotuned kernel
_TL_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3}
_GLUON_CONFIG = (128, 128, 8, 4)


def _backends():
    from fp8pass.kernels import triton_gemm, triton_gemm_gluon

    def tl_kernel(a, sa, b, sb, od):
        out = torch.full((a.shape[0], b.shape[1]), float("nan"), device="cuda", dtype=od)
        return triton_gemm.gemm_blockwise(a, sa, b, sb, od, out=out, config=_TL_CONFIG)

    def gluon_kernel(a, sa, b, sb, od):
        if not triton_gemm_gluon.supports(a, b):
            pytest.skip("Gluon kernel needs K-major operands on sm90")
        out = torch.full((a.shape[0], b.shape[1]), float("nan"), device="cuda", dtype=od)
        return triton_gemm_gluon.gemm_blockwise(a, sa, b, sb, od, out=out, config=_GLUON_CONFIG)

    def gluon_ws_kernel(a, sa, b, sb, od):
        if not triton_gemm_gluon.supports(a, b):
            pytest.skip("Gluon kernel needs K-major operands on sm90")
        out = torch.full((a.shape[0], b.shape[1]), float("nan"), device="cuda", dtype=od)
        return triton_gemm_gluon.gemm_blockwise(a, sa, b, sb, od, out=out, config=triton_gemm_gluon.WS_CONFIGS[0])

    def op(a, sa, b, sb, od):
        return torch.ops.fp8pass.gemm_blockwise(a, sa, b, sb, od)

    def cublas_swapped(a, sa, b, sb, od):
        from fp8pass.kernels import cuda
        if _cublas(a, sa, b, sb, od) is None:
            pytest.skip("this torch has no cuBLAS blockwise for the pairing")
        return cuda.cublas_gemm_blockwise_swapped(a, sa, b, sb, od)

    return {"triton": tl_kernel, "gluon": gluon_kernel, "gluon_ws": gluon_ws_kernel, "dispatch": op,
            "cublas_swapped": cublas_swapped}


_GEMM_CASES = (
    [("triton", r, d) for r in ("fprop", "dgrad", "wgrad", "dgrad_kmajor", "wgrad_kmajor")
     for d in (torch.bfloat16, torch.float32)]
    + [(g, r, d) for g in ("gluon", "gluon_ws") for r in ("fprop", "dgrad_kmajor", "wgrad_kmajor")
       for d in (torch.bfloat16, torch.float32)]
    + [("dispatch", r, torch.bfloat16) for r in ("fprop", "dgrad", "wgrad")]
    + [("cublas_swapped", r, d) for r in ("wgrad", "wgrad_kmajor") for d in (torch.bfloat16, torch.float32)]
)


@pytest.mark.parametrize("backend,role,out_dtype", _GEMM_CASES,
                         ids=[f"{b}-{r}-{str(d).replace('torch.', '')}" for b, r, d in _GEMM_CASES])
def test_gemm_roles(backend, role, out_dtype):
    fn = _backends()[backend]
    base_role, kmajor = role.split("_")[0], role.endswith("kmajor")
    for i, (m, k, n) in enumerate(GEMM_SHAPES):
        if base_role == "wgrad":
            k = k - 64  # token count with a tail (still 16-byte aligned for TMA)
        if backend.startswith("gluon") and not kmajor and base_role != "fprop":
            continue
        if backend == "cublas_swapped" and m % 16:  # M becomes cuBLAS's N, which must be a multiple of 16
            continue
        # the op twice per shape: its second call runs the plan made at the first (kernels/cuda.py gemm_op)
        for trial in range(2 if backend == "dispatch" else 1):
            _check_gemm_role(fn, base_role, role, m, k, n, 1000 * i + len(role) + 7 * trial, kmajor, out_dtype)


def _check_gemm_role(fn, base_role, role, m, k, n, seed, kmajor, out_dtype):
    """One GEMM through `fn` on fresh operands: DeepGEMM's gate, the reference numerics, cuBLAS's error."""
    a, sa, b, sb, want = make_role(base_role, m, k, n, seed=seed, kmajor=kmajor)
    out = fn(a, sa, b, sb, out_dtype)
    assert out.shape == (a.shape[0], b.shape[1]) and out.dtype == out_dtype
    assert not torch.isnan(out).any(), f"{role} {m}x{k}x{n}: NaN (unwritten or bad) output"
    diff = calc_diff(out.float(), want)
    assert diff < 1e-3, f"{role} {m}x{k}x{n}: calc_diff {diff:.3g}"
    exact = ref.gemm_blockwise(a, sa, b, sb, torch.float32)
    assert calc_diff(out.float(), exact) < 1e-5, f"{role} {m}x{k}x{n}: differs from the reference numerics"
    cub = _cublas(a, sa, b, sb, out_dtype)
    if cub is not None:
        cdiff = calc_diff(cub.float(), want)
        assert diff <= cdiff * 1.02 + 1e-7, f"{role} {m}x{k}x{n}: calc_diff {diff:.3g} > cuBLAS {cdiff:.3g}"


# kind, or kind@BLOCK_M: "ws@192" is the serial schedule with three 64-row consumer warpgroups
_WS_KINDS = ["ws", "ws2", "ws_n", "ws2_n", "ws@192"]


@pytest.mark.parametrize("kind", _WS_KINDS)
@pytest.mark.parametrize("role", ["fprop", "dgrad_kmajor", "wgrad_kmajor"])
def test_gluon_ws_schedules(kind, role):
    """Every schedule of the warp-specialized kernel (serial / overlapped K loop, tile split by
    rows / columns, 128 or 192 rows) against the reference numerics, with more tiles than SMs (the
    persistent loop), fp32 output (fewer stages, a larger epilogue tile), fp16, tails in M and K,
    and a column-major output; outputs poisoned first."""
    from fp8pass.kernels import triton_gemm_gluon

    base_role = role.split("_")[0]
    cases = [(2048, 4096, 1536, torch.bfloat16, False), (1000, 1024, 768, torch.float32, False),
             (4096, 1024, 2048, torch.bfloat16, False),  # 2.7 tiles an SM at 192 rows, 3.9 at 128
             (640, 512, 256, torch.float16, False),
             (512, 512, 384, torch.bfloat16, True)]  # an output the TMA store cannot take: via a copy
    for i, (m, k, n, od, strided_out) in enumerate(cases):
        if base_role == "wgrad":
            k -= 64
        a, sa, b, sb, want = make_role(base_role, m, k, n, seed=77 + i, kmajor=True)
        if not triton_gemm_gluon.supports(a, b):
            pytest.skip("Gluon kernel needs K-major operands on sm90")
        if strided_out:  # column-major: row stride 1
            out = torch.full((n, m), float("nan"), device="cuda", dtype=od).t()
        else:
            out = torch.full((m, n), float("nan"), device="cuda", dtype=od)
        kind_name, _, block_m = kind.partition("@")
        config = (int(block_m or 128), 128, 4, 6, kind_name, 8)
        got = triton_gemm_gluon.gemm_blockwise(a, sa, b, sb, od, out=out, config=config)
        assert got.data_ptr() == out.data_ptr(), "the result must be written into out"
        assert not torch.isnan(out).any(), f"{kind} {role} {m}x{k}x{n}: unwritten output"
        assert calc_diff(out.float(), want) < 1e-3
        exact = ref.gemm_blockwise(a, sa, b, sb, torch.float32)
        assert calc_diff(out.float(), exact) < 1e-5, f"{kind} {role} {m}x{k}x{n}: differs from the reference numerics"


def test_torch_compile_fullgraph_over_registered_ops():
    import fp8pass.kernels  # noqa: F401

    def f(x, w):
        qx, sx = torch.ops.fp8pass.quantize_1x128(x)
        qw, sw = torch.ops.fp8pass.quantize_128x128(w)
        y = torch.ops.fp8pass.gemm_blockwise(qx, sx, qw.t(), sw.t(), torch.bfloat16)
        qr, sr, qc, sc = torch.ops.fp8pass.quantize_1x128_128x1(y)
        q1, s1 = torch.ops.fp8pass.quantize_128x1(y)
        return y, qr, sr, qc, sc, q1, s1

    torch._dynamo.reset()
    x = torch.randn(512, 1024, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(768, 1024, device="cuda", dtype=torch.bfloat16)
    eager = f(x, w)
    compiled = torch.compile(f, fullgraph=True)(x, w)
    for e, c in zip(eager, compiled):
        if e.dtype == FP8:
            assert torch.equal(e.view(torch.uint8), c.view(torch.uint8))
        else:
            assert torch.equal(e, c)


def test_backend_with_inductor_buffers_trains_the_same_on_cuda():
    # inductor_buffers on (the default) and off: the out variants on Inductor's buffers compute
    # the same gradients, bit for bit, as the functional ops on CUDA (the Triton kernels), also at
    # the second step, whose out-variant calls replay their first calls' launches. (Peak
    # memory is left to benchmarks/block.py: at this toy size the step's peak was 4.77 MB with the
    # option against 4.49 MB without; at the Llama block's size 2872 MiB, as without it in session
    # 8; benchmarks/RESULTS.md, session 9.)
    import fp8pass
    from torch._inductor.utils import run_and_get_code
    from conftest import load_example

    train_gpt = load_example("train_gpt")
    cfg = train_gpt.GPTConfig(dim=256, n_heads=2, mlp_hidden=768, seq_len=128)
    grads = {}
    for flag in (True, False):
        torch._dynamo.reset()
        torch.manual_seed(0)
        block = train_gpt.Block(cfg).to("cuda", torch.bfloat16)
        x = torch.randn(4, 128, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        compiled = torch.compile(block, backend=fp8pass.backend(inductor_buffers=flag))

        def step():
            x.grad = None
            block.zero_grad(set_to_none=True)
            compiled(x).float().square().mean().backward()

        _, codes = run_and_get_code(step)
        # the forward's quantizations as out variants (with recompute_fp8_activations, the default,
        # the Linears' inputs get only their 1x128 copies there)
        assert bool(re.search(r"fp8pass\.quantize_1x128_out\.default\(", codes[0])) == flag
        step()  # again: the out variants replay the launches their first calls recorded (launch plans)
        grads[flag] = [x.grad] + [p.grad for p in block.parameters()]
    for on, off in zip(grads[True], grads[False]):
        assert torch.equal(on, off)


def test_fast_launch_separates_specializations_and_skips_jit_run(monkeypatch):
    """kernels/launch.py: a repeated key launches without JITFunction.run, and inputs that Triton
    compiles differently (a pointer off 16-byte alignment, a stride not divisible by 16) get
    their own kernel; a key too coarse would run the aligned kernel on them (wrong bytes or a
    misaligned-address fault)."""
    from fp8pass.kernels import launch

    if not launch.fast_launch_enabled():
        pytest.skip("FP8PASS_FAST_LAUNCH=0")
    tq = _q()
    fast = tq._launch_1x128
    x = _inputs(300, 1024, torch.bfloat16, seed=21)
    storage = torch.empty(300 * 1024 + 1, device="cuda", dtype=torch.bfloat16)
    x_misaligned = storage[1:].view(300, 1024)  # data_ptr % 16 == 2
    x_misaligned.copy_(x)
    x_odd_stride = torch.empty(300, 1033, device="cuda", dtype=torch.bfloat16)[:, :1024]  # row stride 1033
    x_odd_stride.copy_(x)
    jit_runs = []
    real_run = type(fast.fn).run

    def counting_run(self, *args, **kwargs):
        jit_runs.append(self)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(type(fast.fn), "run", counting_run)
    exp = ref.quantize_1x128(x)
    for trial in range(2):
        for inp in (x, x_misaligned, x_odd_stride):
            got = tq.quantize_1x128(inp)
            assert _bytes_equal(got[0], exp[0])[0] and _scales_equal(got[1], exp[1])[0]
        torch.cuda.synchronize()
        if trial == 0:
            first = len(jit_runs)
    assert first <= 3 and len(jit_runs) == first, "repeated keys must not go through JITFunction.run"
    keys = [k for k in fast._cache if k[0] == torch.cuda.current_device()]
    assert len({k[2:] for k in keys}) >= 3, "aligned, misaligned and odd-stride inputs need their own kernels"


def test_gluon_quantizers_are_used_on_sm90(monkeypatch):
    """The Gluon kernels (dual, and 128x1 alone) must not silently fall back to the plain-Triton
    ones on Hopper (e.g. after a Gluon API change): the bit-identity test above would then test
    one kernel twice."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon dual quantizer is enabled on sm90 only")
    from fp8pass.kernels import triton_quantize_gluon as tqg

    assert tqg._GLUON_IMPORT_ERROR is None, tqg._GLUON_IMPORT_ERROR
    assert tqg.available(torch.device("cuda"))
    launches = []
    for name in ("_launch_dual", "_launch_pipelined"):
        def counting(*args, _name=name, _real=getattr(tqg, name), **kwargs):
            launches.append(_name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(tqg, name, counting)
    x = _inputs(256, 512, torch.bfloat16, seed=5)
    _q().quantize_1x128_128x1(x, col_layout="transposed")
    _q().quantize_128x1(x, layout="transposed")  # the 128x1 copy alone: the same kernel
    # row-major inputs: the dual one tile per program, the 128x1 copy alone pipelined
    assert launches == ["_launch_dual", "_launch_pipelined"]
    xt = x.t().contiguous().t()  # rows not contiguous: one tile per program
    _q().quantize_128x1(xt, layout="transposed")
    assert launches[2:] == ["_launch_dual"]


# --------------------------------------------------------------------------------------------
# SwiGLU fused with the dual quantization (kernels/triton_swiglu.py, lowering/swiglu.py)
# --------------------------------------------------------------------------------------------
def _swiglu_inputs(m, k, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    a = (torch.randn(m, k, device="cuda", generator=g) * 3).to(dtype)
    b = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    grad = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    return grad, a, b


def _swiglu_reference(grad, a, b):
    """The dual quantizer (bit-identical to the reference) of the reference SwiGLU values."""
    dual = lambda x: _q().quantize_1x128_128x1(x, col_layout="transposed")  # noqa: E731
    grad_a, grad_b = ref.swiglu_backward(grad, a, b)
    return dual(ref.swiglu(a, b)), dual(grad_a) + dual(grad_b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("m,k", [(1000, 5632), (4096, 384), (77, 256)])
def test_swiglu_fused_kernels_match_the_dual_quantizer_of_the_reference(dtype, m, k, monkeypatch):
    """Against the reference SwiGLU values quantized by the dual quantizer: exp and the divisions
    are Triton's (approximate) in the kernel and torch's in the reference, so a value can differ in
    its last bit, which moves a tile's scale by up to one ulp of the input dtype and some FP8 bytes
    by one step; everything else equal. The Gluon kernel (sm90) and the plain-Triton one must
    agree bit for bit (the same helpers)."""
    from fp8pass.kernels import triton_swiglu as tsw

    grad, a, b = _swiglu_inputs(m, k, dtype, seed=m + k)
    want_fwd, want_bwd = _swiglu_reference(grad, a, b)
    # one copy alone (recompute_fp8_activations' ops) is the dual op's first or last two outputs
    want_fwd = want_fwd + want_fwd[:2] + want_fwd[2:]
    got_fwd = tsw.swiglu_quantize_1x128_128x1(a, b) + tsw.swiglu_quantize_1x128(a, b) + tsw.swiglu_quantize_128x1(a, b)
    got_bwd = tsw.swiglu_grad_a_quantize_1x128_128x1(grad, a, b) + tsw.swiglu_grad_b_quantize_1x128_128x1(grad, a)
    # fp32: Triton's exp is ex2.approx of x * log2(e), a few ulps off torch's for |x| ~ 10
    ulp = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10, torch.float32: 2.0 ** -18}[dtype]
    for got, want in zip(got_fwd + got_bwd, want_fwd + want_bwd):
        assert got.shape == want.shape and got.stride() == want.stride()
        if got.dtype == torch.float32:
            assert not torch.isnan(got).any()
            rel = ((got - want) / want).abs().max().item()
            assert rel <= ulp * 1.01, f"scales differ by {rel:.3g} (relative)"
        else:
            same = (got.view(torch.uint8) == want.view(torch.uint8)).float().mean().item()
            assert same >= 0.99, f"only {same:.4f} of the FP8 bytes equal"
            assert not torch.isnan(got.float()).any()
    # the plain-Triton kernel (elsewhere than sm90) gives the same bytes
    monkeypatch.setattr(tsw, "_gluon_quantize", lambda device: None)
    plain = (tsw.swiglu_quantize_1x128_128x1(a, b) + tsw.swiglu_quantize_1x128(a, b) + tsw.swiglu_quantize_128x1(a, b)
             + tsw.swiglu_grad_a_quantize_1x128_128x1(grad, a, b) + tsw.swiglu_grad_b_quantize_1x128_128x1(grad, a))
    for p, g in zip(plain, got_fwd + got_bwd):
        assert torch.equal(p.view(torch.uint8), g.view(torch.uint8)) if p.dtype == FP8 else torch.equal(p, g)


def test_swiglu_out_variants_write_what_the_functional_ops_return():
    ops = torch.ops.fp8pass
    for trial in range(2):  # the second call per op replays the first one's launches (fresh inputs)
        _check_swiglu_out_variants(ops, *_swiglu_inputs(1000, 768, torch.bfloat16, seed=11 + trial))


def _check_swiglu_out_variants(ops, grad, a, b):
    for name, inputs in (("swiglu_quantize_1x128_128x1", (a, b)), ("swiglu_quantize_1x128", (a, b)),
                         ("swiglu_quantize_128x1", (a, b)),
                         ("swiglu_grad_a_quantize_1x128_128x1", (grad, a, b)),
                         ("swiglu_grad_b_quantize_1x128_128x1", (grad, a))):
        want = getattr(ops, name)(*inputs)
        bufs = [torch.full_like(w, float("nan")) if w.dtype == torch.float32 else
                torch.full_like(w.view(torch.uint8), 0x7F).view(FP8) for w in want]  # poisoned
        bufs = [b_.as_strided(w.shape, w.stride()) for b_, w in zip(bufs, want)]
        getattr(ops, name + "_out")(*inputs, *bufs)
        for got, w in zip(bufs, want):
            assert got.stride() == w.stride()
            assert torch.equal(got.view(torch.uint8), w.view(torch.uint8)) if w.dtype == FP8 else torch.equal(got, w)


def test_gluon_swiglu_kernel_is_used_on_sm90(monkeypatch):
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon kernels are enabled on sm90 only")
    from fp8pass.kernels import triton_quantize_gluon as tqg

    launches = []
    for name in ("_launch_swiglu_dual", "_launch_pipelined"):
        def counting(*args, _name=name, _real=getattr(tqg, name), **kwargs):
            launches.append((_name, kwargs["MODE"]))
            return _real(*args, **kwargs)
        monkeypatch.setattr(tqg, name, counting)
    grad, a, b = _swiglu_inputs(256, 512, torch.bfloat16, seed=3)
    ops = torch.ops.fp8pass
    ops.swiglu_quantize_1x128_128x1(a, b)
    ops.swiglu_grad_a_quantize_1x128_128x1(grad, a, b)
    ops.swiglu_grad_b_quantize_1x128_128x1(grad, a)
    assert launches == [("_launch_pipelined", mode) for mode in (0, 1, 2)]  # row-major inputs
    ops.swiglu_grad_b_quantize_1x128_128x1(grad, a.t().contiguous().t())
    assert launches[3:] == [("_launch_swiglu_dual", 2)]


@pytest.mark.parametrize("m,k", [(4000, 1024), (1, 128), (129, 384)])
@pytest.mark.parametrize("programs", ["one per SM", "two in all"])
def test_pipelined_gluon_kernels_match_the_per_tile_ones(m, k, programs, monkeypatch):
    """The persistent, cp.async-pipelined Gluon kernel (row-major inputs) against the one-tile-per-
    program Gluon kernels, byte for byte: the dual quantizer, the 128x1 copy alone and every SwiGLU
    mode and copy, with tails in M, and with a grid of two programs (each walks its tiles through
    the shared-memory ring many times), at 3 stages, and with the 128x1 copy's column pass read from
    the stage or converted."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon kernels are enabled on sm90 only")
    from fp8pass.kernels import triton_quantize_gluon as tqg
    from fp8pass.kernels import triton_swiglu as tsw

    if programs == "two in all":
        monkeypatch.setattr(tqg, "sm_count", lambda device: 1)
    tq = _q()
    grad, a, b = _swiglu_inputs(m, k, torch.bfloat16, seed=m + k)
    x = _inputs(m, k, torch.float16, seed=k) if m > 1 else a

    def run_all():
        return (tq.quantize_1x128_128x1(x, col_layout="transposed") + tq.quantize_128x1(x, layout="transposed")
                + tsw.swiglu_quantize_1x128_128x1(a, b) + tsw.swiglu_quantize_1x128(a, b)
                + tsw.swiglu_quantize_128x1(a, b) + tsw.swiglu_grad_a_quantize_1x128_128x1(grad, a, b)
                + tsw.swiglu_grad_b_quantize_1x128_128x1(grad, a))

    monkeypatch.setattr(tqg, "_PIPELINED", False)
    want = run_all()
    monkeypatch.setattr(tqg, "_PIPELINED", True)
    monkeypatch.setattr(tqg, "_PIPELINE_DUAL", True)  # off by default (not faster), checked all the same
    for stages, col_from_smem in ((2, True), (2, False), (3, True)):
        monkeypatch.setattr(tqg, "_PIPE_COL_FROM_SMEM", col_from_smem)  # the 128x1 copy alone's column pass
        monkeypatch.setattr(tqg, "_PIPE_STAGES", stages)
        monkeypatch.setattr(tqg, "_PIPE_STAGES_SWIGLU", stages)
        monkeypatch.setattr(tqg, "_PIPE_CTAS", 2 if stages == 2 else 1)
        got = run_all()
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.shape == w.shape and g.stride() == w.stride()
            bits = torch.uint8 if w.dtype == FP8 else torch.int32  # bit for bit, NaN scales included
            assert torch.equal(g.view(bits), w.view(bits)), \
                f"output {i} differs at {stages} stages (column pass from the stage: {col_from_smem})"


@pytest.mark.parametrize("m,k", [(4000, 1024), (300, 640), (77, 384)])
def test_dual_quantizer_tile_orders_give_the_same_bytes(m, k, monkeypatch):
    """The one-tile-per-program dual quantizer (and the 128x1 copy alone on a strided input, the
    same kernel) on 1-D grids in every grouped tile order, against the 2-D grid, byte for byte:
    tails in M, a last group with fewer rows of tiles than GROUP_M."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon kernels are enabled on sm90 only")
    from fp8pass.kernels import triton_quantize_gluon as tqg

    tq = _q()
    x = _inputs(m, k, torch.bfloat16, seed=m * k)
    strided = _inputs(m, k, torch.bfloat16, seed=m).t().contiguous().t()  # column-major: the per-tile kernel for both

    def run_all():
        return (tq.quantize_1x128_128x1(x, col_layout="transposed")
                + tq.quantize_1x128_128x1(strided, col_layout="transposed")
                + tq.quantize_128x1(strided, layout="transposed"))

    monkeypatch.setattr(tqg, "_DUAL_GROUP_M", 0)
    want = run_all()
    for group in (1, 3, 8, 64):
        monkeypatch.setattr(tqg, "_DUAL_GROUP_M", group)
        got = run_all()
        for i, (g, w) in enumerate(zip(got, want)):
            bits = torch.uint8 if w.dtype == FP8 else torch.int32  # bit for bit, NaN scales included
            assert torch.equal(g.view(bits), w.view(bits)), f"output {i} differs at GROUP_M={group}"


@pytest.mark.parametrize("layout", ["bhtd", "qkv buffer", "gqa"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cat3_quantizer_gives_the_bytes_of_the_dual_of_the_cat(layout, dtype):
    """quantize_1x128_128x1_cat3 (the Gluon kernel reading three [B, T, H, D] parts in place)
    against quantize_1x128_128x1 of their concatenation, byte for byte, and its out variant:
    parts as SDPA's gradients come ([B, H, T, D] storage), slices of one [B, T, 3, H, D] buffer,
    grouped-query widths; T * B not a multiple of 128; outputs poisoned first."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon kernels are enabled on sm90 only")
    tq = _q()
    b, t, d = 3, 700, 64
    heads = (8, 2, 2) if layout == "gqa" else (4, 4, 4)
    gen = torch.Generator(device="cuda").manual_seed(len(layout) * 2 + (dtype == torch.float16))
    if layout == "qkv buffer":
        buf = torch.randn(b, t, 3, heads[0], d, device="cuda", generator=gen).to(dtype)
        parts = [buf[:, :, i] for i in range(3)]
    else:
        parts = [torch.randn(b, h, t, d, device="cuda", generator=gen).to(dtype).transpose(1, 2) for h in heads]
    parts[1][0, 5, 1, 3] = float("nan")  # a NaN tile in the middle part
    parts[2][1, 9] = 0.0
    want = tq.quantize_1x128_128x1(torch.cat([p.reshape(b * t, -1) for p in parts], 1), col_layout="transposed")
    got = tq.quantize_1x128_128x1_cat3(*parts)
    outs = [torch.full_like(w.view(torch.uint8), 0x7F).view(w.dtype) if w.dtype == FP8 else torch.full_like(w, -1.0)
            for w in want]
    torch.ops.fp8pass.quantize_1x128_128x1_cat3_out(*parts, *outs)
    for name, result in (("op", got), ("out variant", outs)):
        for i, (g, w) in enumerate(zip(result, want)):
            assert g.shape == w.shape and g.stride() == w.stride(), (name, i)
            bits = torch.uint8 if w.dtype == FP8 else torch.int32
            assert torch.equal(g.view(bits), w.view(bits)), f"{name}: output {i} differs"


def _cuda_block_codes_and_grads(backend):
    """(Inductor's generated code, the gradients of x and of every parameter) of one fwd+bwd of a
    small bf16 block of the example GPT on CUDA; backend None: eager."""
    from torch._inductor.utils import run_and_get_code
    from conftest import load_example

    train_gpt = load_example("train_gpt")
    cfg = train_gpt.GPTConfig(dim=256, n_heads=2, mlp_hidden=768, seq_len=128)
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = train_gpt.Block(cfg).to("cuda", torch.bfloat16)
    x = torch.randn(4, 128, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    model = block if backend is None else torch.compile(block, backend=backend)
    _, codes = run_and_get_code(lambda: model(x).float().square().mean().backward())
    return codes, [x.grad] + [p.grad for p in block.parameters()]


def test_block_gradients_with_the_qkv_gradient_cat_folded_on_cuda():
    """A compiled block's backward quantizes the fused QKV gradient from SDPA's three gradients
    (quantize_1x128_128x1_cat3, no cat kernel), with the gradients of the unfolded graph, bit for bit."""
    import fp8pass

    codes, folded = _cuda_block_codes_and_grads(fp8pass.backend(fold_gradient_cat=True))
    codes_off, unfolded = _cuda_block_codes_and_grads(fp8pass.backend(fold_gradient_cat=False))
    cat_kernel = re.compile(r"def triton_\w*cat\w*\(")
    assert "quantize_1x128_128x1_cat3_out" in codes[1] and not cat_kernel.search(codes[1])
    assert cat_kernel.search(codes_off[1]) and "cat3" not in codes_off[1], "the negative control"
    for f, u in zip(folded, unfolded):
        assert torch.equal(f, u)


def test_block_with_fused_swiglu_trains_as_close_to_bf16_on_cuda():
    import fp8pass
    from conftest import sqnr_db


    _, want = _cuda_block_codes_and_grads(None)
    # the dual fused op (w2's both copies saved from forward)
    codes, fused = _cuda_block_codes_and_grads(fp8pass.backend(fuse_swiglu=True, recompute_fp8_activations=False))
    assert "swiglu_quantize_1x128_128x1" in codes[0] and "swiglu_grad_b_quantize_1x128_128x1" in codes[1]
    _, unfused = _cuda_block_codes_and_grads(fp8pass.backend(fuse_swiglu=False, recompute_fp8_activations=False))
    for w, f, u in zip(want, fused, unfused):
        s_fused, s_unfused = sqnr_db(w.float(), f.float()), sqnr_db(w.float(), u.float())
        assert s_fused > 20 and abs(s_fused - s_unfused) < 1.0, (s_fused, s_unfused)
    # with recompute_fp8_activations: w2's 1x128 copy made in forward and its 128x1 copy in
    # backward by the fused single-copy ops
    codes, recomputed = _cuda_block_codes_and_grads(fp8pass.backend(fuse_swiglu=True, recompute_fp8_activations=True))
    assert "swiglu_quantize_1x128_out" in codes[0] and "swiglu_quantize_128x1" in codes[1]
    for w, r, u in zip(want, recomputed, unfused):
        s_r, s_unfused = sqnr_db(w.float(), r.float()), sqnr_db(w.float(), u.float())
        assert s_r > 20 and abs(s_r - s_unfused) < 1.0, (s_r, s_unfused)


# --------------------------------------------------------------------------------------------
# MoE experts: the grouped GEMM
# --------------------------------------------------------------------------------------------
def _expert_groups(tokens: int, experts: int, seed: int) -> torch.Tensor:
    """Group ends of `tokens` routed rows over `experts` of random sizes, one expert empty and the
    last rows in none (as torch._grouped_mm's offs; int32 on the GPU)."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.rand(experts, generator=g)
    sizes[1] = 0
    counts = (sizes / sizes.sum() * (tokens - 37)).floor().long()
    return torch.cumsum(counts, 0).to(torch.int32).cuda()


@pytest.mark.parametrize("role,kernel", [("fprop", "triton"), ("fprop", "ws2"), ("fprop", "ws"), ("dgrad", "triton"),
                                         ("dgrad", "ws2"), ("dgrad", "ws"), ("wgrad", "triton"), ("wgrad", "ws")])
@pytest.mark.parametrize("tokens,dim,hidden,experts", [(4096, 1024, 768, 8), (3000, 512, 384, 32)])
def test_grouped_gemm_roles(role, kernel, tokens, dim, hidden, experts):
    """The grouped kernels behind torch.ops.fp8pass.gemm_blockwise_grouped (the plain-Triton one in
    every role, the warp-specialized Gluon one in every role: both its schedules where rows are
    grouped, the serial one clearing other experts' tokens in Wgrad's shared blocks), each role of an expert's
    Linear [hidden, dim] on fresh random bf16 inputs: per expert, calc_diff < 1e-3 against the
    BF16-input FP32 product; the whole output within 1e-5 of the reference numerics on the same
    FP8 operands; rows past the last group zero, an empty expert's weight gradient zero; the
    output poisoned before the run (the op allocates it: poison through the kernel's `out`).
    The op (whichever kernel it timed faster) within 1e-5 of the reference too."""
    from fp8pass.kernels import triton_gemm_grouped

    tq = _q()
    offs = _expert_groups(tokens, experts, seed=len(role) + tokens)
    bounds = list(zip([0] + offs.tolist()[:-1], offs.tolist()))
    gen = torch.Generator(device="cuda").manual_seed(tokens + experts)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=gen).to(torch.bfloat16)  # noqa: E731
    w = rnd(experts, hidden, dim)
    qw, sw = tq.quantize_128x128(w)
    if role == "fprop":
        x = rnd(tokens, dim)
        a, sa = tq.quantize_1x128(x)
        b, sb = qw.transpose(1, 2), sw.transpose(1, 2)
        wants = [x[s:e].float() @ w[g].float().t() for g, (s, e) in enumerate(bounds)]
    elif role == "dgrad":
        dy = rnd(tokens, hidden)
        a, sa = tq.quantize_1x128(dy)
        b, sb = qw.transpose(1, 2).contiguous().transpose(1, 2), sw  # K-major, as the pass emits it
        wants = [dy[s:e].float() @ w[g].float() for g, (s, e) in enumerate(bounds)]
    else:
        dy, x = rnd(tokens, hidden), rnd(tokens, dim)
        _, _, a, sa = tq.quantize_1x128_128x1(dy, col_layout="transposed")
        _, _, xq_t, xs_t = tq.quantize_1x128_128x1(x, col_layout="transposed")
        b, sb = xq_t.t(), xs_t.t()
        wants = [dy[s:e].float().t() @ x[s:e].float() for s, e in bounds]
    shape = (tokens, b.shape[2]) if role != "wgrad" else (experts, hidden, dim)
    out = torch.full(shape, float("nan"), device="cuda", dtype=torch.bfloat16)
    if kernel == "triton":
        triton_gemm_grouped.gemm_blockwise_grouped(a, sa, b, sb, offs, torch.bfloat16, out=out, kernel=kernel)
    else:
        from fp8pass.kernels import triton_gemm_gluon as wsg

        if not wsg.grouped_supports(a, b):  # TMA: Wgrad's token-major rows of 3000 bytes are not 16-byte aligned
            assert role == "wgrad" and tokens % 16, (role, tokens)
            pytest.skip("tokens % 16 != 0: Wgrad's operands have no TMA-aligned rows (the op runs the plain kernel)")
        if role == "wgrad":  # tokens grouped: the serial schedule, the group ends as they are
            cfg, groups = wsg.GROUPED_K_WS_CONFIGS[0], offs
        else:
            cfg = next(c for c in wsg.GROUPED_WS_CONFIGS if c[4] == kernel)
            groups = triton_gemm_grouped.row_tile_table(offs, tokens, cfg[0])
        wsg.gemm_blockwise_grouped(a, sa, b, sb, groups, out, cfg)
    op_out = torch.ops.fp8pass.gemm_blockwise_grouped(a, sa, b, sb, offs, torch.bfloat16)
    assert not torch.isnan(out).any() and not torch.isnan(op_out).any()
    for g, (s, e) in enumerate(bounds):
        got = out[g] if role == "wgrad" else out[s:e]
        if e == s:
            assert role != "wgrad" or torch.equal(got, torch.zeros_like(got))
            continue
        assert calc_diff(got.float(), wants[g]) < 1e-3, (role, g)
    if role != "wgrad":
        assert torch.equal(out[bounds[-1][1]:], torch.zeros_like(out[bounds[-1][1]:]))
    exact = ref.gemm_blockwise_grouped(a, sa, b, sb, offs, torch.float32)
    assert calc_diff(out.float(), exact) < 1e-5
    assert calc_diff(op_out.float(), exact) < 1e-5


def test_grouped_kernels_tune_once_per_token_count_bucket():
    """Varying routed token counts in one size bucket (launch.size_bucket) autotune the plain kernel
    and choose between the kernels once, not at every new count."""
    from fp8pass.kernels import triton_gemm_grouped as tgg

    tq = _q()
    w = torch.randn(8, 512, 256, device="cuda").to(torch.bfloat16)
    qw, sw = tq.quantize_128x128(w)
    tuned, chosen = len(tgg._grouped_gemm_kernel_tuned.cache), len(tgg._choice_cache)
    for tokens in (3100, 3200, 3500):  # all in the 3584 bucket
        a, sa = tq.quantize_1x128(torch.randn(tokens, 256, device="cuda").to(torch.bfloat16))
        offs = _expert_groups(tokens, 8, seed=tokens)
        tgg.gemm_blockwise_grouped(a, sa, qw.transpose(1, 2), sw.transpose(1, 2), offs, torch.bfloat16)
    assert len(tgg._grouped_gemm_kernel_tuned.cache) == tuned + 1
    assert len(tgg._choice_cache) <= chosen + 1


def test_experts_train_in_fp8_on_cuda():
    """The MoE block of tests/test_moe.py on the GPU (the Triton grouped kernel): gradients against
    the stock backend's in bf16 within the CPU test's bounds."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import sqnr_db
    from test_moe import WITH_HEAD, MoEBlock, grads_of

    import fp8pass

    torch.manual_seed(0)
    model = MoEBlock().cuda().bfloat16()
    x = torch.randn(4000, 256, device="cuda", dtype=torch.bfloat16)
    bf16 = grads_of(model, x, "inductor")
    fp8 = grads_of(model, x, fp8pass.backend(config=WITH_HEAD))
    names = ["x"] + [n for n, _ in model.named_parameters()]
    sqnr = {n: sqnr_db(b, f) for n, b, f in zip(names, bf16, fp8)}
    assert sqnr["x"] >= 30.0, sqnr
    assert sqnr["moe.gate_up"] >= 22.0 and sqnr["moe.down"] >= 22.0, sqnr
