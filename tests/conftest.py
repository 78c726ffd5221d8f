import pytest
import torch

import fp8pass  # noqa: F401  (registers the ops)


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB of x against ref (computed in float64)."""
    ref, x = ref.double(), x.double()
    return (10 * torch.log10(ref.pow(2).sum() / (ref - x).pow(2).sum().clamp_min(1e-300))).item()


def fp8_grads_and_code(model, x, **options):
    """One fwd+bwd (loss: mean square of the output) of `model` compiled with backend="fp8" and
    `options` from a fresh dynamo and no grads: ([x.grad, each parameter's grad], the code Inductor
    generated: forward, backward)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    model.zero_grad(set_to_none=True)
    x.grad = None
    compiled = torch.compile(model, backend=fp8pass.backend(**options))
    _, codes = run_and_get_code(lambda: compiled(x).square().mean().backward())
    return [x.grad.clone()] + [p.grad.clone() for p in model.parameters()], codes


def hf_adamw_losses(model, compiled, steps: int, ids: torch.Tensor) -> list[float]:
    """The losses of `steps` AdamW steps (lr 3e-3) of a Hugging Face causal LM, `compiled` being
    `model` under torch.compile, on the same batch (labels = ids)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = compiled(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles from scratch (no graph reused from another test's backend)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def load_example(name: str):
    """Import examples/<name>.py as a module (the examples are scripts, not a package)."""
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class MLP(torch.nn.Module):
    """fc1 and fc2 eligible; fc3 is the output head."""

    def __init__(self, dims=(256, 512, 256, 128), bias=True):
        super().__init__()
        self.fc1 = torch.nn.Linear(dims[0], dims[1], bias=bias)
        self.fc2 = torch.nn.Linear(dims[1], dims[2], bias=bias)
        self.fc3 = torch.nn.Linear(dims[2], dims[3], bias=bias)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def fp8_counts(report):
    """module -> number of FP8 GEMM sites."""
    counts = {}
    for m in report.matmuls:
        counts[m.module] = counts.get(m.module, 0) + int(m.fp8)
    return counts
