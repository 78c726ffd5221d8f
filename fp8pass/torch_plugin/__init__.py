"""Registers the log name "fp8" with torch while `import torch` runs, so TORCH_LOGS="fp8" works.

torch validates TORCH_LOGS at import, against the names registered by then. torch 2.13 first calls
the `torch.backends` entry points (its hook for out-of-tree extensions) and parses TORCH_LOGS after
them, "so backends can register their log names" (its comment). This package is that
entry point, installed as the top-level module `fp8pass_torch_plugin` so that loading it does
not import fp8pass itself (and with it half of torch, in the middle of `import torch`). It must
never fail: an exception here would break `import torch` for the whole environment.
A torch that parses TORCH_LOGS before its entry points (not checked for 2.11) rejects "fp8";
TORCH_LOGS="fp8pass" works everywhere.
"""


def register() -> None:
    try:
        from torch._logging._internal import log_registry, register_log

        if not log_registry.is_log("fp8"):
            register_log("fp8", "fp8pass")
    except Exception:  # noqa: BLE001  (private API moved: TORCH_LOGS="fp8pass" still works)
        pass
