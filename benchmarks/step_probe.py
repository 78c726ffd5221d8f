"""Why a timed Linear step is slower than its kernels: a diagnostic for benchmarks/linear.py.

    python benchmarks/step_probe.py [--shape 16384x4096x14336] [--rounds 3]

In session 6 the fp8 Linear step timed 6.19 ms back to back while the profiler saw its GPU busy
5.42 ms a step with 1% idle. Per variant and round this prints: the back-to-back time per step
(as step_ms), the host's time to enqueue those steps (a host-bound loop shows it equal to the
back-to-back time), each step's own GPU time from events recorded between steps, and the SM clock
and power the driver reports (NVML through torch.cuda) before and after, to tell host stalls,
slow single steps and clock throttling apart.
"""

from __future__ import annotations

import argparse
import time

import torch

import fp8pass
from linear import linear_and_inputs, make_step
from common import versions


def gpu_state() -> str:
    try:
        return (f"sm clock {torch.cuda.clock_rate()} MHz, power {torch.cuda.power_draw() / 1e3:.0f} W, "
                f"temperature {torch.cuda.temperature()} C")
    except Exception as exc:  # noqa: BLE001  (NVML missing: the rest of the probe still answers)
        return f"(no NVML: {type(exc).__name__})"


def probe(step, iters: int) -> str:
    events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
    torch.cuda.synchronize()
    host_start = time.perf_counter()
    events[0].record()
    for i in range(iters):
        step()
        events[i + 1].record()
    host_enqueue = (time.perf_counter() - host_start) * 1e3
    torch.cuda.synchronize()
    per_step = [events[i].elapsed_time(events[i + 1]) for i in range(iters)]
    total = events[0].elapsed_time(events[-1])
    return (f"back-to-back {total / iters:.3f} ms/step, host enqueue {host_enqueue / iters:.3f} ms/step; "
            f"per step min {min(per_step):.3f} median {sorted(per_step)[iters // 2]:.3f} max {max(per_step):.3f}: "
            + " ".join(f"{t:.2f}" for t in per_step))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="16384x4096x14336")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args(argv)
    print(versions())
    m, k, n = (int(v) for v in args.shape.split("x"))
    lin, x, dy = linear_and_inputs(m, k, n)
    variants = {
        "bf16 compiled": torch.compile(lin),
        "fp8": torch.compile(lin, backend=fp8pass.backend(fp8_output_head=True)),
    }
    for name, model in variants.items():
        step = make_step(model, x, dy, [lin.weight])
        for _ in range(5):
            step()
        for r in range(args.rounds):
            print(f"{name:>14} round {r}: {gpu_state()}")
            print(f"{name:>14} round {r}: {probe(step, args.iters)}")
        print(f"{name:>14} after: {gpu_state()}", flush=True)


if __name__ == "__main__":
    main()
