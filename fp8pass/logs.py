"""The `fp8pass` logger, wired into torch's logging controls.

    TORCH_LOGS="fp8pass"  python train.py   # each compiled graph's decisions (INFO)
    TORCH_LOGS="+fp8pass" python train.py   # ... and each rewritten graph's code (DEBUG)
    torch._logging.set_logs(modules={"fp8": logging.INFO})  # from code ("fp8" is an alias)

TORCH_LOGS accepts any importable module name, which is how "fp8pass" works with no
registration. The short name "fp8" is registered when fp8pass is imported, so it works in
`set_logs`; it cannot work in TORCH_LOGS, which torch validates at `import torch`, before any
other package can register a name.
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
