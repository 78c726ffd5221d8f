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
"""

from __future__ import annotations

import os
import warnings

import torch
import triton

__all__ = ["FastLauncher", "fast_launch_enabled"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_ENABLED = os.environ.get("FP8PASS_FAST_LAUNCH", "1") != "0" and not _INTERPRET

try:  # the launch hooks JITFunction.run passes on (HookChain objects in Triton >= 3.5)
    from triton import knobs as _knobs
except Exception:  # older Triton: no knobs
    _knobs = None

_I32_MIN, _I32_MAX = -(2 ** 31), 2 ** 31 - 1


def fast_launch_enabled() -> bool:
    return _ENABLED


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


class FastLauncher:
    """`FastLauncher(jit_fn)(grid, *runtime_args, **constexprs_and_options)` launches like
    `jit_fn[grid](*runtime_args, **constexprs_and_options)`. Runtime (non-constexpr) arguments are
    passed positionally, constexprs and num_warps/num_stages by keyword, as every call site here
    does; `grid` is a tuple (not a callable)."""

    def __init__(self, fn: triton.JITFunction):
        self.fn = fn
        self._cache: dict = {}
        # (under the interpreter `fn` is an InterpretedFunction, without `params`)
        self._enabled = _ENABLED and hasattr(fn, "params")
        params = fn.params if self._enabled else ()
        self._names = [p.name for p in params]
        self._defaults = {p.name: p.default for p in params if p.has_default}

    def __call__(self, grid, *args, **kwargs):
        if not self._enabled or _hooks_in_use():
            self.fn[grid](*args, **kwargs)
            return
        device = torch.cuda.current_device()
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
            return
        kernel, tail = entry
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        stream = torch._C._cuda_getCurrentRawStream(device)
        try:
            kernel.run(grid[0], g1, g2, stream, kernel.function, kernel.packed_metadata, None,
                       None, None, *args, *tail)
        except TypeError as exc:  # this Triton's launcher takes other arguments: plain path for good
            self._enabled = False
            warnings.warn(f"fp8pass: direct launch of {self.fn.fn.__name__} failed on triton "
                          f"{triton.__version__} ({exc}); using the standard Triton launch "
                          f"(slower on the host)", RuntimeWarning, stacklevel=2)
            self.fn[grid](*args, **kwargs)
