"""fp8pass.high_precision in each of its forms, and Config.module_filter."""

import inspect

import torch
import torch.nn as nn

import fp8pass
from conftest import fp8_counts


def _reasons(report, module):
    return [m.reason for m in report.matmuls if m.module == module]


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(256, 256)
        self.b = nn.Linear(256, 256)
        self.head = nn.Linear(256, 128)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def _x():
    return torch.randn(32, 256, requires_grad=True)


def test_unmarked_baseline():
    assert fp8_counts(fp8pass.explain(Body(), _x())) == {"a": 3, "b": 3, "head": 0}


def test_module_instance_mark():
    model = Body()
    fp8pass.high_precision(model.a)
    report = fp8pass.explain(model, _x())
    assert fp8_counts(report) == {"a": 0, "b": 3, "head": 0}
    reasons = _reasons(report, "a")
    assert len(reasons) == 3
    assert all("Linear instance marked at" in r and "test_markers.py" in r for r in reasons), reasons
    assert fp8_counts(fp8pass.explain(Body(), _x()))["a"] == 3, "other instances stay unmarked"


def test_module_class_mark():
    @fp8pass.high_precision
    class Marked(nn.Linear):
        pass

    model = Body()
    model.b = Marked(256, 256)
    report = fp8pass.explain(model, _x())
    assert fp8_counts(report) == {"a": 3, "b": 0, "head": 0}
    assert all("class " in r and "Marked" in r and "test_markers.py" in r for r in _reasons(report, "b"))


@fp8pass.high_precision
def gate(layer, x):
    return torch.sigmoid(layer(x))


def test_function_mark():
    class Gated(Body):
        def forward(self, x):
            return self.head(gate(self.a, x) * self.b(x))

    report = fp8pass.explain(Gated(), _x())
    assert fp8_counts(report) == {"a": 0, "b": 3, "head": 0}
    assert all("function gate marked at" in r for r in _reasons(report, "a"))


def test_context_manager_mark():
    class Ctx(Body):
        def forward(self, x):
            h = torch.relu(self.a(x))
            with fp8pass.high_precision():
                h = torch.relu(self.b(h))
            return self.head(h)

    report = fp8pass.explain(Ctx(), _x())
    assert fp8_counts(report) == {"a": 3, "b": 0, "head": 0}
    # the reason names the line of the `with` statement, found from the matmul's stack trace
    lines, start = inspect.getsourcelines(Ctx.forward)
    with_line = start + next(i for i, ln in enumerate(lines) if "with fp8pass.high_precision()" in ln)
    reasons = _reasons(report, "b")
    assert all(f"context at tests/test_markers.py:{with_line}" in r for r in reasons), reasons


def test_module_filter_gets_fqn_and_module():
    seen = []

    def only_a(fqn, module):
        seen.append((fqn, type(module).__name__))
        return fqn == "a"

    report = fp8pass.explain(Body(), _x(), fp8_config=fp8pass.Config(module_filter=only_a))
    assert fp8_counts(report) == {"a": 3, "b": 0, "head": 0}
    assert ("b", "Linear") in seen, "the filter receives the module instance"
    line = only_a.__code__.co_firstlineno
    assert all(f"module_filter test_module_filter_gets_fqn_and_module.<locals>.only_a "
               f"(tests/test_markers.py:{line}) returned False" in r for r in _reasons(report, "b"))


def test_marked_model_still_trains_identically_to_eager_at_marked_sites():
    torch.manual_seed(0)
    model = Body()
    fp8pass.high_precision(model)
    x = _x()
    y = torch.compile(model, backend="fp8")(x)
    torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)
