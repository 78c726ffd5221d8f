"""A converted Linear against float64, and the inputs users actually pass (bad ones included)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fp8pass
from conftest import MLP, fp8_counts, sqnr_db


def _linear_case(dtype, shape=(4, 64, 512), out_features=256, bias=True):
    torch.manual_seed(0)
    lin = nn.Linear(shape[-1], out_features, bias=bias).to(dtype)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    dy = torch.randn(*shape[:-1], out_features, dtype=dtype)
    return lin, x, dy


def _reference64(lin, x, dy):
    w = lin.weight.detach().double().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    y = F.linear(x64, w, None if lin.bias is None else lin.bias.detach().double())
    y.backward(dy.double())
    return y, x64.grad, w.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_converted_linear_sqnr(dtype, bias):
    lin, x, dy = _linear_case(dtype, bias=bias)
    report = fp8pass.explain(lin, x, fp8_config=fp8pass.Config(fp8_output_head=True))
    assert len(report.fp8_matmuls) == 3
    y = torch.compile(lin, backend=fp8pass.backend(fp8_output_head=True))(x)
    assert y.dtype == dtype
    y.backward(dy)
    y_ref, dx_ref, dw_ref = _reference64(lin, x, dy)
    assert x.grad.dtype == dtype and lin.weight.grad.dtype == dtype
    assert sqnr_db(y_ref, y) >= 25
    assert sqnr_db(dx_ref, x.grad) >= 25
    assert sqnr_db(dw_ref, lin.weight.grad) >= 25


def test_fp8_differs_from_high_precision():
    """Guards the tests above: the compiled Linear really runs through FP8 (not bit-equal to fp32)."""
    lin, x, dy = _linear_case(torch.float32)
    y = torch.compile(lin, backend=fp8pass.backend(fp8_output_head=True))(x)
    assert not torch.allclose(y, lin(x), rtol=1e-4, atol=1e-4)


def test_zero_size_batch():
    model = MLP()
    compiled = torch.compile(model, backend="fp8")
    x = torch.randn(0, 256, requires_grad=True)
    y = compiled(x)
    assert y.shape == (0, 128)
    y.sum().backward()
    assert model.fc1.weight.grad is not None and (model.fc1.weight.grad == 0).all()


def test_frozen_weights_have_no_wgrad():
    model = MLP()
    model.fc1.weight.requires_grad_(False)
    model.fc1.bias.requires_grad_(False)
    x = torch.randn(32, 256, requires_grad=True)
    report = fp8pass.explain(model, x)
    assert sorted(m.role for m in report.matmuls if m.module == "fc1" and m.fp8) == ["dgrad", "fprop"]
    y = torch.compile(model, backend="fp8")(x)
    y.sum().backward()
    assert model.fc1.weight.grad is None and model.fc2.weight.grad is not None
    assert sqnr_db(model(x), y) >= 25


def test_non_contiguous_input():
    model = MLP()
    base = torch.randn(256, 48, requires_grad=True)
    x = base.t()  # (48, 256), strides (1, 48)
    assert not x.is_contiguous()
    report = fp8pass.explain(model, x)
    assert fp8_counts(report) == {"fc1": 3, "fc2": 3, "fc3": 0}
    y = torch.compile(model, backend="fp8")(x)
    y.sum().backward()
    ref = model(x)
    assert sqnr_db(ref, y) >= 25
    assert base.grad is not None and torch.isfinite(base.grad).all()


def test_weight_shared_by_two_linears_quantized_once():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(256, 256, bias=False)
            self.head = nn.Linear(256, 128)

        def forward(self, x):
            return self.head(torch.relu(self.shared(torch.relu(self.shared(x)))))

    torch.manual_seed(0)
    model = Shared()
    x = torch.randn(64, 256, requires_grad=True)
    report = fp8pass.explain(model, x)
    assert fp8_counts(report)["shared"] == 6
    joint = next(g for n, g in report.graphs.items() if n.endswith("_joint"))
    weight_quants = [n for n in joint.graph.nodes if n.op == "call_function"
                     and n.target is torch.ops.fp8pass.quantize_128x128.default]
    assert len(weight_quants) == 1, "one 128x128 copy per weight per step"
    y = torch.compile(model, backend="fp8")(x)
    y.sum().backward()
    w_grad = model.shared.weight.grad.clone()
    model.zero_grad()
    model(x).sum().backward()
    assert sqnr_db(model.shared.weight.grad, w_grad) >= 20


def test_nan_input_propagates():
    model = MLP()
    x = torch.randn(64, 256)
    x[5, 7] = float("nan")
    y = torch.compile(model, backend="fp8")(x)
    assert torch.isnan(y[5]).all()
    assert torch.isfinite(y[torch.arange(64) != 5]).all()


def test_inf_input_propagates_as_nan():
    model = MLP()
    x = torch.randn(64, 256)
    x[9, 0] = float("inf")
    y = torch.compile(model, backend="fp8")(x)
    assert torch.isnan(y[9]).all()


def test_float64_model_is_left_in_float64_with_reason():
    model = MLP().double()
    x = torch.randn(16, 256, dtype=torch.float64, requires_grad=True)
    report = fp8pass.explain(model, x)
    assert not report.fp8_matmuls
    assert all("torch.float64 is not supported" in m.reason for m in report.matmuls if m.module != "fc3")
    y = torch.compile(model, backend="fp8")(x)
    torch.testing.assert_close(y, model(x))
