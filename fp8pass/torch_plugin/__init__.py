"""Registers the log name "fp8" with torch while `import torch` runs, so TORCH_LOGS="fp8" works.

torch validates TORCH_LOGS at import, against the names registered by then. torch 2.13 first calls
the `torch.backends` entry points (its hook for out-of-tree extensions) and parses TORCH_LOGS after
them, "so backends can register their log names" (its comment). `register` is that entry point,
in the top-level module `fp8pass_torch_plugin` so that loading it does not import fp8pass (and
with it half of torch, in the middle of `import torch`). It acts only when TORCH_LOGS names "fp8":
a registered name makes torch take over its logger (own handler, no propagation to the root
logger), which no one who did not ask for these logs should get. It never raises: an exception
here would fail `import torch` for the whole environment (TORCH_DEVICE_BACKEND_AUTOLOAD=0 turns
all such entry points off). A torch that parses TORCH_LOGS before its entry points (not checked
for 2.11) rejects "fp8"; TORCH_LOGS="fp8pass" works everywhere.
"""

import os


def register_log_name() -> None:
    """Make "fp8" a torch log name for the `fp8pass` logger (idempotent, never raises)."""
    try:
        from torch._logging._internal import log_registry, register_log

        if not log_registry.is_log("fp8"):
            register_log("fp8", "fp8pass")
    except Exception:  # noqa: BLE001  (private API moved: TORCH_LOGS="fp8pass" still works)
        pass


def register() -> None:
    """The `torch.backends` entry point: register the name if TORCH_LOGS asks for it."""
    settings = os.environ.get("TORCH_LOGS", "")
    if any(part.strip().lstrip("+-") == "fp8" for part in settings.split(",")):
        register_log_name()
