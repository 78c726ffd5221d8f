"""`fp8pass.high_precision`: keep matmuls out of FP8.

The mark travels through tracing as `torch.fx.traceback.annotate({...})`, whose dict lands in
`node.meta["custom"]` of every node traced under it, forward and backward nodes of the joint
graph alike; the pass reads it there. Works as

    @fp8pass.high_precision            # a function, or an nn.Module subclass
    fp8pass.high_precision(model.head) # a module instance (its forward is wrapped)
    with fp8pass.high_precision():     # a region inside forward
"""

from __future__ import annotations

import functools
import os
import sys

import torch
from torch.fx.traceback import annotate

MARK_KEY = "fp8pass_high_precision"


def _caller_location(depth: int = 2) -> str:
    frame = sys._getframe(depth)
    return f"{os.path.relpath(frame.f_code.co_filename)}:{frame.f_lineno}"


def _marked(fn, what: str, location: str):
    label = f"{what} marked at {location}"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with annotate({MARK_KEY: label}):
            return fn(*args, **kwargs)

    wrapper.__fp8pass_high_precision__ = label
    return wrapper


def high_precision(target=None):
    """Mark a function, an nn.Module subclass or instance, or (called with no argument, as a
    context manager) a region of code: every matmul traced inside stays in high precision."""
    if target is None:
        if torch.compiler.is_compiling():
            # Frame inspection cannot be traced; the pass names the matmul's own source line.
            return annotate({MARK_KEY: "fp8pass.high_precision() context"})
        return annotate({MARK_KEY: f"fp8pass.high_precision() context at {_caller_location()}"})
    location = _caller_location()
    if isinstance(target, type) and issubclass(target, torch.nn.Module):
        target.forward = _marked(target.forward, f"class {target.__qualname__}", location)
        return target
    if isinstance(target, torch.nn.Module):
        target.forward = _marked(target.forward, f"{type(target).__name__} instance", location)
        return target
    if callable(target):
        return _marked(target, f"function {getattr(target, '__qualname__', target)}", location)
    raise TypeError(
        "fp8pass.high_precision expects a function, an nn.Module subclass or instance, or no argument "
        f"(as a context manager); got {type(target).__name__}"
    )
