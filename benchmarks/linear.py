"""Linear fwd+bwd: BF16 eager, BF16 torch.compile and backend="fp8", side by side on one card.

    python benchmarks/linear.py [--shapes 16384x4096x14336,16384x14336x4096] [--profile]

Prints, per M x K x N (tokens x in x out): median time of forward + backward (ms), the kernels
launched per step, and the peak memory of a step above what was allocated before it.
"""

from __future__ import annotations

import argparse
import sys

import torch

from common import grads_after, kernel_count, median_ms, peak_step_bytes, sqnr_db, top_kernels, versions


def make_step(model, x, dy):
    def step():
        y = model(x)
        y.backward(dy)
    return step


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="16384x4096x14336,16384x14336x4096")
    p.add_argument("--profile", action="store_true", help="print the top kernels of the fp8 step")
    args = p.parse_args(argv)
    import fp8pass  # noqa: F401

    print(versions())
    print(f"{'M x K x N':>20} {'variant':>14} {'ms':>8} {'TFLOP/s':>8} {'kernels':>8} {'peak MiB':>9} {'vs bf16 compiled':>17}")
    for shape in args.shapes.split(","):
        m, k, n = (int(v) for v in shape.split("x"))
        flops = 3 * 2 * m * k * n
        torch.manual_seed(0)
        lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        variants = {
            "bf16 eager": lin,
            "bf16 compiled": torch.compile(lin),
            # a lone Linear is its graph's output head; convert it, as it would be inside a model
            "fp8": torch.compile(lin, backend=fp8pass.backend(fp8_output_head=True)),
        }
        ref_ms, ref_grads = None, None
        for name, model in variants.items():
            step = make_step(model, x, dy)
            try:
                ms = median_ms(step)
                kernels = kernel_count(step)
                peak = peak_step_bytes(step) / 2**20
            except Exception as exc:  # noqa: BLE001  (report and go on with the other variants)
                print(f"{shape:>20} {name:>14} FAILED: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            if name == "bf16 compiled":
                ref_ms = ms
            ratio = f"{ref_ms / ms:.2f}x" if ref_ms and name == "fp8" else ""
            print(f"{shape:>20} {name:>14} {ms:8.3f} {flops / ms / 1e9:8.0f} {kernels:8d} {peak:9.0f} {ratio:>17}",
                  flush=True)
            grads = grads_after(step, [x, lin.weight])
            if name == "bf16 compiled":
                ref_grads = grads
            elif name == "fp8":
                print(f"{'':>20} fp8 vs bf16 compiled, SQNR dB of dx, dW: "
                      + ", ".join(f"{sqnr_db(r, g):.1f}" for r, g in zip(ref_grads, grads)), flush=True)
            if args.profile and name == "fp8":
                print(top_kernels(step))
            lin.weight.grad = None
            x.grad = None


if __name__ == "__main__":
    sys.exit(main())
