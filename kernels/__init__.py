"""FP8 ops (torch.library custom ops with CPU reference kernels) and their Triton CUDA kernels."""

from . import ops, reference  # noqa: F401  (importing ops registers torch.ops.fp8pass.*)
from .reference import AMAX_EPS, FP8_DTYPE, FP8_MAX, TILE  # noqa: F401


def _register_cuda_kernels() -> bool:
    """Make the Triton kernels the CUDA kernels of torch.ops.fp8pass.* when Triton imports and
    torch is a CUDA build. Touches no GPU (no CUDA initialisation at import)."""
    import torch

    if torch.version.cuda is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # no Triton: the reference kernels serve every device
        return False
    from . import cuda

    return cuda.register()


CUDA_KERNELS_REGISTERED = _register_cuda_kernels()
