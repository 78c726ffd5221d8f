"""Run the warp-specialized Gluon GEMM and cuBLAS blockwise on one problem a few times, for a
kernel profiler to attach to (issue 3: where the WS kernel's remaining gap to cuBLAS goes):

    ncu --clock-control none -k regex:"gemm_ws|nvjet|sm90" --launch-skip 2 --launch-count 4 \\
        --section SpeedOfLight --section WarpStateStats --section SchedulerStats \\
        python benchmarks/profile_gemm.py --no-time [--shape 16384x14336x4096] [--role fprop]

(--reps launches of the WS kernel, then of cuBLAS: with the skip and count above, the WS kernel's
last two and cuBLAS's first two are profiled.) Without --no-time it also prints both medians
(triton.testing.do_bench), as a check that they ran.
Operands as benchmarks/gemm.py makes them (K-major, the layout both read without copies).
"""

from __future__ import annotations

import argparse

import torch
import triton.testing


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="16384x14336x4096", help="M x K x N of the GEMM")
    p.add_argument("--role", default="fprop", choices=["fprop", "dgrad", "wgrad"])
    p.add_argument("--config", default="ws2/6/8", help="the WS kernel's kind/stages/GROUP_M")
    p.add_argument("--reps", type=int, default=4, help="launches of each (the first compiles)")
    p.add_argument("--no-time", action="store_true", help="only the --reps launches (under a profiler)")
    args = p.parse_args()
    import gemm  # benchmarks/gemm.py, for its operand sets
    from fp8pass.kernels import cuda, triton_gemm_gluon as G

    m, k, n = map(int, args.shape.split("x"))
    a, sa, b, sb = gemm.make_sets(args.role, m, k, n, 1)[0]["kmajor"]
    kind, stages, group_m = args.config.split("/")
    cfg = (128, 128, 4, int(stages), kind, int(group_m))
    out = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
    runs = {"ws": lambda: G.gemm_blockwise(a, sa, b, sb, torch.bfloat16, config=cfg, out=out),
            "cublas": lambda: cuda.cublas_gemm_blockwise(a, sa, b, sb, torch.bfloat16)}
    for name, fn in runs.items():
        for _ in range(args.reps):
            fn()
        torch.cuda.synchronize()
        if args.no_time:
            continue
        ms = triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median")
        print(f"{name:>7} {args.role} {args.shape}: {ms:.4f} ms, {2 * m * n * k / ms / 1e9:.1f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
