"""A cheaper launch of the project's @triton.jit kernels: the compiled kernel is looked up by a
key computed here and started through its launcher directly.

Why: a training step issues hundreds of FP8 op calls, and each `kernel[grid](...)` costs the host
15-19 us for an empty kernel (Triton 3.6 on an H200; 10 us this way; benchmarks/RESULTS.md,
sessions 5 and 6), most of it in `JITFunction.run` before the C launcher runs: knob and
environment reads, binding the arguments, the cache-key string of the options, a check of every
global the kernel reads, a launch-metadata dict for the (empty) launch hooks. A 1B-parameter FP8
step spent ~30 ms a step with the GPU waiting for the host.

Correctness rests on the key being at least as fine as Triton's specialization: Triton compiles
one kernel per (dtype and 16-byte alignment of each pointer; i32/i64 range, divisibility by 16
and equality to 1 of each integer; the constexprs and options). The key here holds all of those
for every argument plus the current device, so two calls with one key always meet the same
compiled kernel. The first call of each key goes through `JITFunction.run` (which compiles if
needed and launches) and keeps the kernel it returns.

The plain path is kept: under TRITON_INTERPRET=1, when Triton's launch hooks are in use (a
profiler such as proton), with FP8PASS_FAST_LAUNCH=0, and for good if the launcher of the installed
Triton rejects the call (its argument list is not a public API; checked on Triton 3.6).

Launch plans go one step further for the registered ops (kernels/cuda.py): a wrapper call made
under `recording()` leaves the launches it made, and `plan_from` turns them into a `LaunchPlan`
that repeats them for another call whose key (the caller's: every input's shape, strides, dtype
and 16-byte alignment) is the same, with only the tensors' addresses changed. The wrapper's
Python (checks, shape arithmetic, this module's key) then runs once per key instead of once per
call. (A 1B-parameter train step makes ~370 quantizer calls; under the profiler each took 68-123
us of the H200 machine's host, an Inductor kernel launch 42-45 us. A 0.17B model whose step is
host-bound ran 29.48 ms a step with plans against 42.08 ms without; benchmarks/RESULTS.md, session
13.) A launch whose arguments cannot be mapped back to the call's tensors (a tensor the wrapper
allocated or copied, an argument of another kind) makes no plan: such calls keep the full path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings

import torch
import triton

__all__ = ["FastLauncher", "fast_launch_enabled", "recording", "plan_from", "LaunchPlan", "sm_count", "size_bucket"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_ENABLED = os.environ.get("FP8PASS_FAST_LAUNCH", "1") != "0" and not _INTERPRET

try:  # the launch hooks JITFunction.run passes on (HookChain objects in Triton >= 3.5)
    from triton import knobs as _knobs
except Exception:  # older Triton: no knobs
    _knobs = None

_I32_MIN, _I32_MAX = -(2 ** 31), 2 ** 31 - 1


def fast_launch_enabled() -> bool:
    return _ENABLED


def size_bucket(n: int) -> int:
    """A GEMM size as a kernel choice's cache key: n rounded up to a quarter-octave step (n <= 1024
    as it is). Token counts that vary with the sequence length (dynamic shapes) then share one
    measurement of the candidates instead of timing them all again at every new length, while a
    model's widths mostly stay apart (4096, 5632 -> 6144, 8192, 14336 are all their own)."""
    if n <= 1024:
        return n
    step = 1 << (n.bit_length() - 3)  # a quarter of the power of two below n
    return -(-n // step) * step


def sm_count(device: torch.device) -> int:
    """The SMs of a CUDA device (the current one for an index-less device): persistent grids'
    size, looked up once per device (a launch is host-bound at small shapes)."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _hooks_in_use() -> bool:
    if _knobs is None:
        return True  # cannot tell: take the standard path
    runtime = _knobs.runtime  # read at each call: a profiler may set or replace the hooks any time
    for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook):
        if hook is None:
            continue
        calls = getattr(hook, "calls", None)
        if calls is None or calls:  # a plain callable, or a chain with hooks in it
            return True
    return False


def _arg_key(a):
    """What of one runtime argument can change the compiled kernel (finer than Triton's key)."""
    if isinstance(a, torch.Tensor):
        return a.dtype, a.data_ptr() % 16 == 0
    if isinstance(a, bool):  # before int: bool is an int
        return bool
    if isinstance(a, int):
        return a == 1, a % 16 == 0, _I32_MIN <= a <= _I32_MAX
    if a is None:
        return None
    return type(a)


# Compile options every launch of the project's kernels passes. FMA contraction: the kernels' code,
# and every speed measured in benchmarks/, was compiled with it (the default of Triton <= 3.9; e.g. the
# GEMMs' per-block promotion acc + partial * scale is one FFMA). Triton 3.10 turns the default off and
# 3.9 warns at every compile that leaves it unset. (The quantizers' arithmetic uses explicit FMAs and
# is the same either way.)
COMPILE_OPTIONS = {"enable_fp_fusion": True}


class FastLauncher:
    """`FastLauncher(jit_fn)(grid, *runtime_args, **constexprs_and_options)` launches like
    `jit_fn[grid](*runtime_args, **constexprs_and_options)`. Runtime (non-constexpr) arguments are
    passed positionally, constexprs and num_warps/num_stages by keyword, as every call site here
    does; `grid` is a tuple (not a callable). COMPILE_OPTIONS are added unless given."""

    def __init__(self, fn: triton.JITFunction):
        self.fn = fn
        self._cache: dict = {}
        # (under the interpreter `fn` is an InterpretedFunction, without `params`)
        self._enabled = _ENABLED and hasattr(fn, "params")
        params = fn.params if self._enabled else ()
        self._names = [p.name for p in params]
        self._defaults = {p.name: p.default for p in params if p.has_default}

    def __call__(self, grid, *args, **kwargs):
        kwargs = {**COMPILE_OPTIONS, **kwargs}
        record = getattr(_RECORDING, "record", None)
        if not self._enabled or _hooks_in_use():
            if record is not None:
                record.complete = False  # a launch not through a cached kernel: nothing to replay
            self.fn[grid](*args, **kwargs)
            return
        device = torch._C._cuda_getDevice()
        key = (device, tuple(kwargs.items()), *map(_arg_key, args))
        entry = self._cache.get(key)
        if entry is None:
            kernel = self.fn[grid](*args, **kwargs)  # compiles if needed, launches
            if hasattr(kernel, "result"):  # an asynchronous compile's future (JITFunction.run does the same)
                kernel = kernel.result()
            # the arguments after the positional ones, in the kernel's order (the launcher's)
            tail = tuple(kwargs[name] if name in kwargs else self._defaults[name]
                         for name in self._names[len(args):])
            self._cache[key] = (kernel, tail)
            if record is not None:
                record.launches.append((kernel, _grid3(grid), device, (*args, *tail)))
            return
        kernel, tail = entry
        g0, g1, g2 = _grid3(grid)
        stream = torch._C._cuda_getCurrentRawStream(device)
        try:
            kernel.run(g0, g1, g2, stream, kernel.function, kernel.packed_metadata, None,
                       None, None, *args, *tail)
        except TypeError as exc:  # this Triton's launcher takes other arguments: plain path for good
            self._enabled = False
            if record is not None:
                record.complete = False
            warnings.warn(f"fp8pass: direct launch of {self.fn.fn.__name__} failed on triton "
                          f"{triton.__version__} ({exc}); using the standard Triton launch "
                          f"(slower on the host)", RuntimeWarning, stacklevel=2)
            self.fn[grid](*args, **kwargs)
            return
        if record is not None:
            record.launches.append((kernel, (g0, g1, g2), device, (*args, *tail)))


def _grid3(grid) -> tuple:
    return grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1


# --------------------------------------------------------------------------------------------
# launch plans
# --------------------------------------------------------------------------------------------
_RECORDING = threading.local()


class LaunchRecord:
    """The launches made through FastLauncher inside one `recording()`: (kernel, grid, device,
    arguments in the launcher's order); `complete` is False if any launch took another path."""

    def __init__(self):
        self.launches: list = []
        self.complete = True


@contextlib.contextmanager
def recording():
    """Collect the FastLauncher launches made inside the block (this thread's) into a LaunchRecord."""
    record = LaunchRecord()
    previous = getattr(_RECORDING, "record", None)
    _RECORDING.record = record
    try:
        yield record
    finally:
        _RECORDING.record = previous


_PLAIN_TYPES = (int, float, bool, str, type(None))


class LaunchPlan:
    """Replays recorded launches with other tensors: `plan(tensors)` launches each kernel with
    the tensor arguments taken from `tensors` (by position) and everything else as recorded.
    Returns False, launching nothing, when the direct launch is not to be used now (a profiler's
    launch hooks installed), so the caller takes its full path."""

    __slots__ = ("launches",)

    def __init__(self, launches):
        # each: (kernel, g0, g1, g2, device, argument template with None for tensors, (position, index) pairs)
        self.launches = launches

    def __call__(self, tensors) -> bool:
        if _hooks_in_use():
            return False
        for kernel, g0, g1, g2, device, template, slots in self.launches:
            args = list(template)
            for pos, idx in slots:
                args[pos] = tensors[idx]
            kernel.run(g0, g1, g2, torch._C._cuda_getCurrentRawStream(device), kernel.function,
                       kernel.packed_metadata, None, None, None, *args)
        return True


def plan_from(record: LaunchRecord, tensors) -> "LaunchPlan | None":
    """A LaunchPlan repeating `record`'s launches for other calls with the same key, or None if a
    launch cannot be replayed: one took the plain path, or one of its tensor arguments is not
    (a view at the same address and dtype of) one of the call's `tensors`, or an argument is of a
    kind whose contents could change between calls (a TMA descriptor, say)."""
    if not record.complete:
        return None
    addresses = [(t.data_ptr(), t.dtype) for t in tensors]
    launches = []
    for kernel, (g0, g1, g2), device, args in record.launches:
        template, slots = list(args), []
        for pos, arg in enumerate(args):
            if isinstance(arg, torch.Tensor):
                idx = next((i for i, t in enumerate(tensors) if t is arg), None)
                if idx is None:
                    idx = next((i for i, a in enumerate(addresses) if a == (arg.data_ptr(), arg.dtype)), None)
                if idx is None:
                    return None
                template[pos], slots = None, slots + [(pos, idx)]
            elif not isinstance(arg, _PLAIN_TYPES) and not isinstance(arg, triton.language.dtype):
                return None
        launches.append((kernel, g0, g1, g2, device, tuple(template), tuple(slots)))
    return LaunchPlan(launches)
