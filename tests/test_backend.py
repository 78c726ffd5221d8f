"""The backend's front doors: backend="fp8" by entry point, options=, fp8pass.backend(**options)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fp8pass
from conftest import MLP


def test_backend_fp8_by_name_without_importing_fp8pass():
    code = textwrap.dedent("""
        import sys, torch
        m = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128))
        y = torch.compile(m, backend="fp8")(torch.randn(8, 256))
        assert "fp8pass" in sys.modules, "the entry point loaded the backend"
        assert y.shape == (8, 128)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ""}, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok" in out.stdout


def test_backend_is_listed():
    from torch._dynamo import list_backends
    assert "fp8" in list_backends()


def test_options_reach_the_pass(capsys):
    model = MLP()
    x = torch.randn(8, 256)
    torch.compile(model, backend="fp8", options={"fprop": False, "log_decisions": True})(x)
    out = capsys.readouterr().out
    assert "Config(fprop=False)" in out
    assert "[fp8pass]" in out


def test_backend_callable_with_options(capsys):
    model = MLP()
    with torch.no_grad():  # inference: one GEMM per Linear
        torch.compile(model, backend=fp8pass.backend(fp8_output_head=True, log_decisions=True))(torch.randn(8, 256))
    out = capsys.readouterr().out
    assert out.count(": FP8 (") == 3


def test_unknown_option_is_a_clear_error():
    with pytest.raises(TypeError, match="unknown option.*fp8_head"):
        fp8pass.backend(fp8_head=True)
    with pytest.raises(Exception, match="unknown option"):
        torch.compile(MLP(), backend="fp8", options={"bogus": 1})(torch.randn(8, 256))


def test_bad_config_values():
    with pytest.raises(ValueError, match="recipe"):
        fp8pass.Config(recipe="tensorwise")
    with pytest.raises(ValueError, match="fp8_format"):
        fp8pass.Config(fp8_format="e5m2")
    with pytest.raises(TypeError, match="module_filter"):
        fp8pass.Config(module_filter="attn")
    # a string must not switch a boolean option on ("false" is truthy)
    with pytest.raises(TypeError, match="fuse_quantization must be True or False"):
        fp8pass.Config(fuse_quantization="false")
    with pytest.raises(TypeError, match="min_bytes must be a non-negative int"):
        fp8pass.Config(fp8_saved_activations_min_bytes=-1)


def test_command_line_options_parse_booleans_by_word():
    from fp8pass.config import parse_option

    assert parse_option("fuse_quantization=false") == ("fuse_quantization", False)
    assert parse_option("wgrad=Off") == ("wgrad", False)
    assert parse_option("fp8_output_head=TRUE") == ("fp8_output_head", True)
    assert parse_option("fp8_saved_activations_min_bytes=0") == ("fp8_saved_activations_min_bytes", 0)
    with pytest.raises(ValueError, match="takes true or false"):
        parse_option("wgrad=maybe")


def test_config_is_frozen_and_cache_key_tracks_options():
    cfg = fp8pass.Config()
    with pytest.raises(Exception):
        cfg.fprop = False
    assert cfg.cache_key() == fp8pass.Config().cache_key()
    assert cfg.cache_key() != fp8pass.Config(wgrad=False).cache_key()
    assert fp8pass.Config(module_filter=lambda f, m: True).cache_key() != \
        fp8pass.Config(module_filter=lambda f, m: f != "x").cache_key()

    def skipping(names):
        return lambda fqn, module: fqn not in names

    # same source, different captured values: different keys
    assert fp8pass.Config(module_filter=skipping({"a"})).cache_key() != \
        fp8pass.Config(module_filter=skipping({"b"})).cache_key()


def test_gpus_without_fp8_names_each_card_below_sm89():
    import importlib

    gpus_without_fp8 = importlib.import_module("fp8pass.lowering.backend").gpus_without_fp8

    caps = {"cuda:0": (8, 0), "cuda:1": (9, 0), "cuda:2": (8, 9)}
    names = {"cuda:0": "NVIDIA A100", "cuda:1": "NVIDIA H100", "cuda:2": "NVIDIA L4"}
    devices = ["cuda:0", torch.device("cuda:1"), "cpu", "cuda:2", "cuda:0"]
    found = gpus_without_fp8(devices, capability=lambda d: caps[str(d)], name=lambda d: names[str(d)])
    assert found == ["NVIDIA A100 (cuda:0, sm80)"]  # once, and not the sm89/sm90 cards or the CPU
    assert gpus_without_fp8(["cpu"], capability=lambda d: 1 / 0) == []  # no CUDA query for CPU inputs


def test_a_gpu_without_fp8_gets_inductor_without_the_pass_and_a_warning(monkeypatch, caplog):
    """On a card below sm89 (an A100, say) the FP8 kernels could not compile: the backend compiles
    the graph without the pass instead and says so once (here the check is made to report the CPU
    inputs' device as such a card)."""
    import importlib
    import logging

    from torch._inductor.utils import run_and_get_code

    from fp8pass import logs

    backend_mod = importlib.import_module("fp8pass.lowering.backend")  # (the package exports a function so named)

    monkeypatch.setattr(backend_mod, "gpus_without_fp8", lambda devices: ["NVIDIA A100 (cuda:0, sm80)"])
    monkeypatch.setattr(logs, "_warned", set())
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(32, 256)
    with caplog.at_level(logging.WARNING, logger="fp8pass"):
        y, codes = run_and_get_code(lambda: torch.compile(model, backend="fp8")(x))
    assert not any("fp8pass" in code for code in codes)  # no FP8 op in what Inductor generated
    torch.testing.assert_close(y, model(x))
    warned = [r.getMessage() for r in caplog.records if "compute capability 8.9" in r.getMessage()]
    assert len(warned) == 1 and "NVIDIA A100 (cuda:0, sm80)" in warned[0] and "without the FP8 pass" in warned[0]
    torch._dynamo.reset()
