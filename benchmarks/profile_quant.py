"""Run each quantization kernel a few times on one input, for a kernel profiler to attach to:

    ncu --clock-control none -k regex:_quant --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats python benchmarks/profile_quant.py [--shape 16384x4096]

Without a profiler it prints each kernel's median time (CUDA events), as a check that it ran.
"""

from __future__ import annotations

import argparse

import torch
import triton.testing

from fp8pass.kernels import triton_quantize as tq


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="16384x4096", help="MxK of the bf16 input")
    p.add_argument("--reps", type=int, default=2, help="launches of each kernel (the first compiles)")
    args = p.parse_args()
    m, k = map(int, args.shape.split("x"))
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    kernels = {
        "quantize_1x128": lambda: tq.quantize_1x128(x),
        "quantize_128x1(q^T)": lambda: tq.quantize_128x1(x, layout="transposed"),
        "quantize_1x128_128x1(col^T)": lambda: tq.quantize_1x128_128x1(x, col_layout="transposed"),
    }
    for name, fn in kernels.items():
        for _ in range(args.reps):
            fn()
        torch.cuda.synchronize()
        print(f"{name:30} {triton.testing.do_bench(fn, rep=20) * 1e3:8.1f} us", flush=True)


if __name__ == "__main__":
    main()
