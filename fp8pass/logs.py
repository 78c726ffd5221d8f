"""The `fp8pass` logger, wired into torch's logging controls.

    TORCH_LOGS="fp8"  python train.py   # each compiled graph's decisions (INFO)
    TORCH_LOGS="+fp8" python train.py   # ... and each rewritten graph's code (DEBUG)
    torch._logging.set_logs(modules={"fp8": logging.INFO})  # from code

"fp8" is a name registered with torch's logging: during `import torch` by the `torch.backends`
entry point fp8pass_torch_plugin (torch 2.13 parses TORCH_LOGS after loading those; a torch that
parses it before them rejects "fp8" at import: not checked on 2.11), and again when fp8pass is
imported. The module name "fp8pass" works in TORCH_LOGS on every torch version.
"""

from __future__ import annotations

import logging

log = logging.getLogger("fp8pass")


def register_with_torch_logging() -> None:
    try:
        from torch._logging._internal import log_registry, register_log
    except ImportError:  # private API moved: plain `logging` configuration still works
        return
    if not log_registry.is_log("fp8"):
        register_log("fp8", "fp8pass")


def enabled() -> bool:
    return log.isEnabledFor(logging.INFO)
