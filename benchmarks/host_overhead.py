"""Host time per call of the FP8 path's pieces, on shapes so small that the GPU waits for the
host: each figure is wall time per call over many calls enqueued without a synchronize, so it
is what the host spends to issue one call (a training step issues hundreds of them).

    python benchmarks/host_overhead.py
    python benchmarks/host_overhead.py --busy 8192,2048,5632   # real shapes, the GPU held busy

With --busy M,K,N the calls are issued at the given GEMM shape while the GPU sleeps
(torch.cuda._sleep) behind them, so what is timed is still only the host's work, at the sizes of
a real step (the tiny-shape rows can miss costs that grow with the problem, e.g. a GEMM
library's heuristics).
"""

from __future__ import annotations

import argparse
import time

import torch
import triton
import triton.language as tl

import fp8pass  # noqa: F401  (registers the ops and their CUDA kernels)
from fp8pass.kernels import cuda, launch, triton_quantize as tq


@triton.jit
def _noop_kernel(x_ptr):
    pass


_noop_fast = launch.FastLauncher(_noop_kernel)


def per_call_us(fn, calls: int = 2000, warmup: int = 20, sleep_cycles: int = 0) -> float:
    """Wall time per call over `calls` calls issued without a synchronize. sleep_cycles > 0: the
    GPU sleeps (torch.cuda._sleep) behind the calls, so its queue never drains and, with `calls`
    x a few kernels far below the launch queue's depth, never fills: host time at any shape."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    if sleep_cycles:
        torch.cuda._sleep(sleep_cycles)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


def per_call_busy_us(fn) -> float:
    return per_call_us(fn, calls=100, warmup=5, sleep_cycles=400_000_000)  # ~0.2 s of sleep on an H200


def print_rows(rows: dict, timer) -> None:
    """One line per row: `timer(fn)` in us, or why the call failed (the other rows still run)."""
    for name, fn in rows.items():
        try:
            print(f"  {name:45} {timer(fn):8.1f} us/call", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"  {name:45} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)


def busy_rows(m: int, k: int, n: int) -> None:
    dev = "cuda"
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
    qa, sa = tq.quantize_1x128(x)
    qb, sb = tq.quantize_128x128(w)
    qb, sb = qb.t(), sb.t()  # B = w.T
    ops = torch.ops.fp8pass
    rows = {
        "torch.empty (the FP8 copy)": lambda: torch.empty((m, k), device=dev, dtype=torch.float8_e4m3fn),
        f"torch.mm bf16 {m}x{k}x{n}": lambda: torch.mm(x, w.t()),
        "cuda.cublas_gemm_blockwise (_scaled_mm_v2)": lambda: cuda.cublas_gemm_blockwise(qa, sa, qb, sb, torch.bfloat16),
        "torch.ops.fp8pass.gemm_blockwise": lambda: ops.gemm_blockwise(qa, sa, qb, sb, torch.bfloat16),
        f"tq.quantize_1x128_128x1 {m}x{k} (col^T)": lambda: tq.quantize_1x128_128x1(x, col_layout="transposed"),
        "torch.ops.fp8pass.quantize_1x128_128x1": lambda: ops.quantize_1x128_128x1(x),
        "torch.ops.fp8pass.quantize_128x1": lambda: ops.quantize_128x1(x),
        f"torch.ops.fp8pass.quantize_128x128 {n}x{k}": lambda: ops.quantize_128x128(w),
        "torch.ops.fp8pass.quantize_128x128_transposed": lambda: ops.quantize_128x128_transposed(w),
        # what Inductor's code calls (lowering/allocated_outputs.py), against the wrapper those
        # calls ran every time before launch plans (kernels/cuda.py op_impls)
        "tq.quantize_1x128_128x1(out=) (the wrapper)": lambda: tq.quantize_1x128_128x1(
            x, col_layout="transposed", out=dual_bufs),
        "ops.quantize_1x128_128x1_out (launch plan)": lambda: ops.quantize_1x128_128x1_out(x, *dual_bufs),
        "tq.quantize_1x128(out=) (the wrapper)": lambda: tq.quantize_1x128(x, out=row_bufs),
        "ops.quantize_1x128_out (launch plan)": lambda: ops.quantize_1x128_out(x, *row_bufs),
        "tq.quantize_128x128(out=) (the wrapper)": lambda: tq.quantize_128x128(w, out=w_bufs),
        "ops.quantize_128x128_out (launch plan)": lambda: ops.quantize_128x128_out(w, *w_bufs),
        "cuda.gemm_blockwise + checks (before plans)": lambda: (cuda.ops.check_gemm_operands(qa, sa, qb, sb),
                                                                cuda.gemm_blockwise(qa, sa, qb, sb, torch.bfloat16)),
    }
    dual_bufs = ops.quantize_1x128_128x1(x)
    row_bufs = ops.quantize_1x128(x)
    w_bufs = ops.quantize_128x128(w)
    print(f"host time per call at {m}x{k}x{n}, the GPU held busy:")
    print_rows(rows, per_call_busy_us)
    print(f"dispatcher's choice for that GEMM: {cuda.dispatch_choice(qa, sa, qb, sb, torch.bfloat16)}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--busy", default=None, metavar="M,K,N", help="only the real-shape rows, GPU held busy")
    args = p.parse_args()
    if args.busy:
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
        busy_rows(*map(int, args.busy.split(",")))
        return
    dev = "cuda"
    x = torch.randn(128, 256, device=dev, dtype=torch.bfloat16)
    qa, sa = tq.quantize_1x128(torch.randn(128, 512, device=dev, dtype=torch.bfloat16))
    w = torch.randn(256, 512, device=dev, dtype=torch.bfloat16)
    qb, sb = tq.quantize_128x128(w)  # B = w.T: [K, N] column-major view
    qb, sb = qb.t(), sb.t()
    a16, b16 = torch.randn(128, 512, device=dev, dtype=torch.bfloat16), w.t()
    ops = torch.ops.fp8pass
    rows = {
        "torch x.add_(1) (one native kernel)": lambda: x.add_(1),
        "Triton empty kernel launch": lambda: _noop_kernel[(1,)](x),
        "Triton empty kernel, FastLauncher": lambda: _noop_fast((1,), x),
        "tq.quantize_1x128 (Python wrapper)": lambda: tq.quantize_1x128(x),
        "torch.ops.fp8pass.quantize_1x128": lambda: ops.quantize_1x128(x),
        "tq.quantize_1x128_128x1 (col^T)": lambda: tq.quantize_1x128_128x1(x, col_layout="transposed"),
        "torch.ops.fp8pass.quantize_1x128_128x1": lambda: ops.quantize_1x128_128x1(x),
        "tq.quantize_128x128": lambda: tq.quantize_128x128(w),
        "torch.mm bf16 128x512x256": lambda: torch.mm(a16, b16),
        "cuda.cublas_gemm_blockwise 128x512x256": lambda: cuda.cublas_gemm_blockwise(qa, sa, qb, sb, torch.bfloat16),
        "cuda.gemm_blockwise (dispatcher)": lambda: cuda.gemm_blockwise(qa, sa, qb, sb, torch.bfloat16),
        "torch.ops.fp8pass.gemm_blockwise": lambda: ops.gemm_blockwise(qa, sa, qb, sb, torch.bfloat16),
        "cuda._run('triton') (autotuned Triton GEMM)": lambda: cuda._run("triton", qa, sa, qb, sb, torch.bfloat16),
    }
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"registered on the CUDA key: {cuda.registered()}; FastLauncher on: {launch.fast_launch_enabled()}")
    print_rows(rows, per_call_us)
    # (the dispatcher measures the backends at a key's first call; its pick sets the rows above)
    print(f"dispatcher's choice for the GEMM above: {cuda.dispatch_choice(qa, sa, qb, sb, torch.bfloat16)}")
    # whole steps: a small Linear, forward + backward
    lin = torch.nn.Linear(512, 512, bias=False, device=dev, dtype=torch.bfloat16)
    xin = torch.randn(256, 512, device=dev, dtype=torch.bfloat16, requires_grad=True)
    for label, model in (("bf16 compiled", torch.compile(lin)),
                         ("fp8", torch.compile(lin, backend=fp8pass.backend(fp8_output_head=True))),
                         ("fp8, outputs from the ops", torch.compile(lin, backend=fp8pass.backend(
                             fp8_output_head=True, inductor_buffers=False)))):
        def step(model=model):
            xin.grad = lin.weight.grad = None
            model(xin).sum().backward()
        print(f"  Linear 256x512x512 fwd+bwd, {label:26} {per_call_us(step, 300):8.1f} us/step", flush=True)
    print("dispatcher's choices:", {k[:3]: v for k, v in cuda._choice.items()})


if __name__ == "__main__":
    main()
