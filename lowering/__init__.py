"""The `fp8` Inductor backend (import name fp8pass.lowering)."""

from .backend import backend, compile_with_fp8, fp8_backend  # noqa: F401
from .recorder import Recorder  # noqa: F401
