"""FP8 ops (torch.library custom ops with CPU reference kernels) and their Triton CUDA kernels.

This folder is the package `fp8pass.kernels`. With the repository root on sys.path (`python -m
pytest` and pytest-xdist's workers put it there, as does a notebook started in the root), it can
also be imported as a top-level `kernels`, the name of a PyPI package (Hugging Face's, which
transformers >= 5 imports): that import is handed to the installed package, or, with none
installed, gets an empty module; neither registers the ops a second time.
"""

if __name__ == "kernels":
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _spec = _machinery.PathFinder.find_spec(
        "kernels", [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _root])
    if _spec is not None:  # the installed package takes this import's place in sys.modules
        _installed = _util.module_from_spec(_spec)
        _sys.modules["kernels"] = _installed
        _spec.loader.exec_module(_installed)
else:
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
