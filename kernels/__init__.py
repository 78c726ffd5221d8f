"""FP8 ops (torch.library custom ops with CPU reference kernels) and their Triton CUDA kernels."""

from . import ops, reference  # noqa: F401  (importing ops registers torch.ops.fp8pass.*)
from .reference import AMAX_EPS, FP8_DTYPE, FP8_MAX, TILE  # noqa: F401
