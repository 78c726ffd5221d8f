"""cProfile of the host side of a small Linear fwd+bwd under backend="fp8" (shapes so small that
the GPU waits for the host): where the host time of a step goes, by function.

    python benchmarks/host_profile.py [--steps 200] [--top 45] [--device cpu]

(On the CPU the FP8 ops run their plain-torch kernels, so the profile shows those too.)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import fp8pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--top", type=int, default=45)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    lin = torch.nn.Linear(512, 512, bias=False, device=args.device, dtype=torch.bfloat16)
    xin = torch.randn(256, 512, device=args.device, dtype=torch.bfloat16, requires_grad=True)
    model = torch.compile(lin, backend=fp8pass.backend(fp8_output_head=True))

    def step():
        xin.grad = lin.weight.grad = None
        model(xin).sum().backward()

    for _ in range(10):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    print(f"{(time.perf_counter() - t0) / args.steps * 1e6:.1f} us/step without the profiler", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        step()
    prof.disable()
    sync()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumtime").print_stats(args.top)


if __name__ == "__main__":
    main()
