"""Shared measuring helpers for the GPU benchmarks (fwd+bwd time, peak memory, kernel count)."""

from __future__ import annotations

import platform
import statistics
import time

import torch


def versions(device: str | None = None) -> str:
    """Card (or "cpu" when the run is on the CPU) and software versions, for the first line of a log."""
    import triton

    on_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    card = torch.cuda.get_device_name() if on_cuda else "cpu"
    return f"{card}, torch {torch.__version__}, triton {triton.__version__}, python {platform.python_version()}"


def dispatch_choices() -> str:
    """The GEMM dispatcher's choice per measured (M, N, K, pairing, layout) key, with its timings."""
    try:
        from fp8pass.kernels import cuda
    except Exception as exc:  # noqa: BLE001 - a diagnostic only
        return f"(no dispatcher: {exc})"
    lines = ["GEMM dispatcher (ms per candidate; the choice first):"]
    for key, timings in cuda.dispatch_report().items():
        choice = cuda._choice.get(key, "?")
        times = ", ".join(f"{n}={v:.4f}" if isinstance(v, float) else f"{n}: {v}" for n, v in timings.items())
        lines.append(f"  M,N,K={key[:3]} b128x128={key[3]} A_kmajor={key[5]} B_kmajor={key[6]}: {choice} ({times})")
    return "\n".join(lines)


_CHURN = ("num_device_alloc", "num_device_free", "num_alloc_retries")


def _allocator_counts() -> dict:
    stats = torch.cuda.memory_stats()
    return {k: stats.get(k, 0) for k in _CHURN}


def step_ms(step, warmup: int = 5, iters: int = 20, stats: dict | None = None,
            max_settle: int = 50) -> tuple[float, float]:
    """(back-to-back, synced) time of `step()` in ms, CUDA events, after `warmup` untimed calls
    and then more (up to `max_settle`) until a step makes no cudaMalloc.

    back-to-back: `iters` steps enqueued one after another, the elapsed time over all of them /
    iters, as a training loop runs them: the host prepares step i+1 while the GPU runs step i,
    so host time is hidden where the GPU is the slower side and counted where it is not.
    synced: the median over steps each followed by a synchronize, so each step's time also holds
    the host's lead-in to its first kernel (the latency of one step, not the loop's rate).

    Settling: while the caching allocator still grows its pool, a step calls cudaMalloc (slow, and
    a cudaFree to make room synchronizes the device); that is the start of a run, not the steady
    state a training loop runs in. (In session 16 the Llama block's fp8 variant made 13 cudaMallocs
    over its warm-up, timed and profiled steps, following a variant of other buffer sizes, and ran
    0.4-1.2 ms slower than the same model timed right after it, which made none: the suspected
    cause, not yet confirmed.) `stats`, if given, gets the settling steps taken and the allocator's
    cudaMalloc / cudaFree / retry counts over the timed steps."""
    for _ in range(warmup):
        step()
    settle = 0
    while settle < max_settle:
        before = _allocator_counts()["num_device_alloc"]
        step()
        settle += 1
        if _allocator_counts()["num_device_alloc"] == before:
            break
    torch.cuda.synchronize()
    counts = _allocator_counts()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    back_to_back = start.elapsed_time(end) / iters
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    if stats is not None:
        after = _allocator_counts()
        stats.update(settle_steps=settle, **{k: after[k] - counts[k] for k in _CHURN})
    return back_to_back, times[len(times) // 2]


def host_enqueue_ms(step, iters: int = 10) -> float:
    """Median host time to issue one `step()` that starts on an idle GPU (a synchronize before
    each, none after): the host's cost of a step. Where it is near the back-to-back step time,
    the host, not the GPU, sets the training loop's rate."""
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def peak_step_bytes(step) -> int:
    """Peak memory of one `step()` above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def kernel_count(step) -> int:
    """CUDA kernels launched by one `step()` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA" and "memcpy" not in e.name.lower()
               and "memset" not in e.name.lower())


def top_kernels(step, n: int = 12, steps: int = 1) -> str:
    """The `n` CUDA kernels that take the most time over `steps` calls of `step()` run back to
    back, as a table (its totals are over all the steps)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=n, max_name_column_width=70)


def gpu_gaps(intervals, top: int = 5):
    """(busy, span, the `top` longest idle gaps) of the GPU from its activity intervals
    [(start_us, end_us, name)]: busy is the union of the intervals, span first start to last end,
    each gap (length_us, offset_us from the first start, name before, name after)."""
    intervals = sorted(intervals)
    if not intervals:
        return 0.0, 0.0, []
    busy, gaps = 0.0, []
    cur_start, cur_end, cur_name = intervals[0]
    first = cur_start
    for start, end, name in intervals[1:]:
        if start > cur_end:
            busy += cur_end - cur_start
            gaps.append((start - cur_end, cur_end - first, cur_name, name))
            cur_start, cur_end, cur_name = start, end, name
        elif end > cur_end:
            cur_end, cur_name = end, name
    busy += cur_end - cur_start
    gaps.sort(key=lambda g: -g[0])
    return busy, cur_end - first, gaps[:top]


_RUNTIME_CALLS = ("cudaMalloc", "cudaFree", "cudaStreamSynchronize", "cudaDeviceSynchronize",
                  "cudaEventSynchronize", "cudaMemcpy", "cudaMemset", "cudaLaunchKernel", "cuLaunchKernel",
                  "cudaStreamWaitEvent", "cudaHostAlloc", "cudaFreeHost")


def host_timeline(step, steps: int = 5, top: int = 5, trace_path: str | None = None) -> str:
    """Where a GPU that should be busy waits: over `steps` calls of `step()` back to back, the GPU's
    busy time against the span of its work, its longest idle gaps (with the kernels around them),
    and the CUDA runtime calls the host made (synchronizations and cudaMalloc/cudaFree stall the
    queue; launches show the host's pace). With `trace_path`, the profile is also written there as
    a Chrome trace (gzipped when the name ends in .gz) for a look at the host around each gap."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    if trace_path:
        prof.export_chrome_trace(trace_path)
    device_work, calls = [], {}
    for e in prof.events():
        if e.device_type.name == "CUDA":
            device_work.append((e.time_range.start, e.time_range.end, e.name))
        elif e.name.startswith(_RUNTIME_CALLS):
            key = e.name.split("_v")[0]
            n, us = calls.get(key, (0, 0.0))
            calls[key] = (n + 1, us + e.time_range.elapsed_us())
    busy, span, gaps = gpu_gaps(device_work, top)
    lines = [f"GPU busy {busy / 1e3 / steps:.3f} ms a step of a {span / 1e3 / steps:.3f} ms span "
             f"({100 * (1 - busy / span) if span else 0:.1f}% idle) over {steps} steps back to back"]
    for length, offset, before, after in gaps:
        lines.append(f"  idle {length:8.1f} us at {offset / 1e3:8.3f} ms: after {before[:60]} / before {after[:60]}")
    for name, (n, us) in sorted(calls.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  host {name:28} {n:6d} calls {us / 1e3:9.3f} ms")
    return "\n".join(lines)


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.double(), x.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - x).pow(2).sum().clamp_min(1e-300)))


def grads_after(step, tensors) -> list[torch.Tensor]:
    """Run `step()` once from cleared grads; the grads of `tensors` (cloned)."""
    for t in tensors:
        t.grad = None
    step()
    out = [t.grad.detach().clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out


def peak_breakdown(step, top: int = 15) -> str:
    """What is allocated at the peak of one `step()`: the live allocations at the highest point of
    the CUDA caching allocator's trace, grouped by the line that allocated them (for compiled code,
    a line of Inductor's output code, which names the buffer), largest first."""
    torch.cuda.synchronize()
    torch.cuda.memory._record_memory_history(stacks="python", max_entries=1_000_000)
    try:
        step()
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    trace = snapshot["device_traces"][torch.cuda.current_device()]
    live, total, peak, at_peak = {}, 0, -1, {}
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]

    def site(event) -> str:
        for frame in event.get("frames", []):
            name = frame.get("filename", "")
            if name.endswith(".py") and "/torch/" not in name and "/triton/" not in name:
                return f"{name.rsplit('/', 1)[-1]}:{frame.get('line')} {frame.get('name', '')}"
        return "(torch internals)"

    groups: dict[str, list[int]] = {}
    for event in at_peak.values():
        groups.setdefault(site(event), []).append(event["size"])
    rows = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]
    lines = [f"allocations made during the step and live at its peak: {peak / 2**20:.0f} MiB"]
    lines += [f"  {sum(sizes) / 2**20:9.1f} MiB  {len(sizes):4d} x  {where}" for where, sizes in rows]
    return "\n".join(lines)
