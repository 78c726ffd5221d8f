"""One digest of the backend's own source, for the cache keys of its graph passes and partitioner:
an edited pass, lowering or kernel never reuses a graph cached by Inductor with the old code."""

from __future__ import annotations

import functools
import hashlib
import pathlib

import fp8pass
import fp8pass.kernels


@functools.cache
def source_digest() -> str:
    """sha256 of every .py file of lowering/, kernels/ and fp8pass/ (computed once per process)."""
    h = hashlib.sha256()
    for pkg in (pathlib.Path(__file__).parent, pathlib.Path(fp8pass.kernels.__file__).parent,
                pathlib.Path(fp8pass.__file__).parent):
        for path in sorted(pkg.glob("*.py")):
            h.update(path.read_bytes())
    return h.hexdigest()
