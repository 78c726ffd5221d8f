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
    """Make "fp8" a name for `torch._logging.set_logs(modules=...)` (fp8pass_torch_plugin does it
    during `import torch` only when TORCH_LOGS asks for it)."""
    try:
        from fp8pass_torch_plugin import register_log_name
    except ImportError:  # a source tree used without installing it: the module name still works
        return
    register_log_name()


def enabled() -> bool:
    """Logging asked of this logger itself (TORCH_LOGS, set_logs or setLevel), not inherited from
    the root logger: a script's logging.basicConfig(level=INFO) must not switch off Inductor's
    caches for every fp8 compile."""
    return log.level != logging.NOTSET and log.isEnabledFor(logging.INFO)


_warned: set = set()


def warn_once(key, message: str) -> None:
    """log.warning(message) the first time `key` is seen in this process: for what a user must
    hear about (not only in explain()) without a line per compiled graph."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message)
