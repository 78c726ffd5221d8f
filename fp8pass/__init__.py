"""fp8pass: `torch.compile(model, backend="fp8")` trains unmodified models in FP8 with
DeepSeek-V3 fine-grained scaling (1x128 activation/gradient tiles, 128x128 weight blocks).

Public surface:
    fp8pass.Config            all options (frozen dataclass)
    fp8pass.backend(**opts)   a backend callable with options bound
    fp8pass.high_precision    keep functions / modules / regions out of FP8
    fp8pass.explain(m, *a)    compile, run once, report what became FP8 and why
    fp8pass.enable_fp8_all_gather(m)  FSDP2 all-gathers Linear weights as 128x128-block FP8
"""

from . import logs
from .config import Config
from .distributed import enable_fp8_all_gather
from .graph_pass import MatmulRecord
from .markers import high_precision
from .report import Report, SavedTensor, explain
from . import kernels  # noqa: F401  (registers torch.ops.fp8pass.*)
from .lowering import backend

logs.register_with_torch_logging()

__all__ = ["Config", "MatmulRecord", "Report", "SavedTensor", "backend", "enable_fp8_all_gather", "explain",
           "high_precision"]
__version__ = "0.1.0"
