"""Seeing inside: saved-tensor accounting, per-GEMM numerics, readable graphs, logs and the CLI."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fp8pass
from conftest import MLP, load_example

train_gpt = load_example("train_gpt")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpt_block_report(**options):
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = train_gpt.GPTConfig(dim=256, n_heads=4, mlp_hidden=768, seq_len=64)
    block = train_gpt.Block(cfg)
    x = torch.randn(4, 64, 256, requires_grad=True)
    return fp8pass.explain(block, x, fp8_config=fp8pass.Config(**options))


@pytest.fixture(scope="module")
def block_report():
    return _gpt_block_report()


@pytest.mark.parametrize("recompute", [True, False], ids=["recompute_fp8_activations", "fp8_saves"])
def test_saved_bytes_match_the_partitioned_forward_outputs(recompute):
    report = _gpt_block_report(recompute_fp8_activations=recompute)
    fw = report.graphs["graph_0_forward"]
    bw = report.graphs["graph_0_backward"]
    needed = {n.name for n in bw.graph.nodes if n.op == "placeholder" and not n.name.startswith("tangents")}
    outputs = next(n for n in fw.graph.nodes if n.op == "output").all_input_nodes
    expect = sum(n.meta["val"].numel() * n.meta["val"].element_size() for n in outputs
                 if n.name in needed and n.op != "placeholder")
    assert expect > 0 and report.saved_bytes == expect
    fp8 = [s for s in report.saved if s.fp8]
    if recompute:  # (the default) Wgrad's copies are made in backward from what it holds anyway
        assert not fp8 and "(none of it FP8)" in str(report)
    else:  # the forward's 128x1 copies are saved
        assert fp8 and all(s.dtype == torch.float8_e4m3fn for s in fp8)
        assert f"({sum(s.bytes for s in fp8) / 2**20:.2f} MiB of it FP8)" in str(report)
    # either way less than the same block compiled without the pass saves
    assert report.baseline_saved_bytes > report.saved_bytes
    assert "without the pass" in str(report)


def test_numerics_on_random_data_clears_25db(block_report):
    numerics = block_report.numerics()
    assert len(numerics.sites) == len(block_report.fp8_matmuls) == 15
    for site in numerics.sites:
        assert site.sqnr_db >= 25, site
        assert site.calc_diff < 1e-2, site
        assert site.a.nonfinite == 0 and site.a.outlier_tiles == 0, site
    assert not numerics.flagged
    assert "0 of 15 GEMMs flagged" in str(numerics)


def test_numerics_flags_a_planted_outlier_tile():
    torch.manual_seed(0)
    model = MLP()
    x = torch.randn(64, 256)
    x[3, 5] = 1e4 * x.abs().mean()  # one value 1e4 times the rest, in one 1x128 tile of fc1's input
    report = fp8pass.explain(model, x.requires_grad_())
    numerics = report.numerics()
    flagged = {(s.module, s.role) for s in numerics.flagged}
    assert ("fc1", "fprop") in flagged
    site = next(s for s in numerics.sites if (s.module, s.role) == ("fc1", "fprop"))
    assert site.a.outlier_tiles == 1 and "outlier tile" in site.why
    assert ("fc2", "fprop") not in flagged, "a clean site is not flagged"


def test_numerics_quant_stats_count_underflow_and_nonfinite():
    from fp8pass.numerics import quant_stats

    x = torch.randn(4, 256)
    x[0, :128] = 1e-3
    x[0, 0] = 1e4  # the rest of this tile underflows to 0
    x[1, 200] = float("nan")
    q, _ = torch.ops.fp8pass.quantize_1x128(x)
    st = quant_stats(x, q, "1x128")
    assert st.underflow == 127 and st.nonfinite == 1 and st.outlier_tiles == 1 and st.tiles == 8


def test_numerics_partial_tiles_are_not_outliers():
    """A token count that is not a multiple of 128 leaves a partial last tile along the tokens
    (Wgrad's operands): its padding is no value, so random data flags no tile (the padding once
    counted as zeros, made the tile's median 0 and flagged every such tile)."""
    from fp8pass.numerics import quant_stats

    torch.manual_seed(0)
    x = torch.randn(150, 256)  # 128x1 tiles: 22 rows in each column's last tile (under half of it)
    q_t, _ = torch.ops.fp8pass.quantize_128x1(x)
    st = quant_stats(x, q_t.t(), "128x1")
    assert st.tiles == 2 * 256 and st.outlier_tiles == 0, st
    y = torch.randn(3, 140)  # 1x128 tiles along a 140-wide row: 12 values in the last
    st = quant_stats(y, torch.ops.fp8pass.quantize_1x128(y)[0], "1x128")
    assert st.tiles == 6 and st.outlier_tiles == 0, st


def test_readable_diff_and_dict(block_report):
    text = block_report.readable("graph_0_joint")
    assert "# <-- FP8 GEMM, fprop of mlp.w1" in text and "# <-- quantize of" in text
    diff = block_report.diff()
    assert diff.startswith("--- graph_0_joint (before)")
    assert "-    mm = torch.ops.aten.mm.default" in diff and "+    gemm_blockwise" in diff
    data = json.loads(json.dumps(block_report.to_dict()))
    assert data["fp8_matmuls"] == 15 and data["saved_bytes"] == block_report.saved_bytes
    assert {m["role"] for m in data["matmuls"]} == {"fprop", "dgrad", "wgrad"}


def test_str_is_compact():
    cfg = train_gpt.GPTConfig(dim=128, n_layers=6, n_heads=2, mlp_hidden=384, seq_len=32)
    tokens = torch.randint(0, 256, (2, 32))
    report = fp8pass.explain(train_gpt.GPT(cfg), tokens, tokens, baseline=False)
    text = str(report)
    assert len(text.splitlines()) <= 15, text  # 6 layers x 5 Linears x 3 GEMMs fold into one screen
    assert "blocks.*.mlp.w1  6" in text.replace("  ", " ").replace("  ", " ") or "blocks.*.mlp.w1" in text
    assert "90 of 93 GEMMs in FP8" in text
    # the Linears whose Wgrad copy backward makes, folded by layer like the table
    assert "(recompute_fp8_activations): blocks.*.attn.wqkv (x6), blocks.*.attn.wo (x6)" in text, text


class _ExpertLoop(torch.nn.Module):
    """A Linear, then a loop over data-dependent rows (as HF's MoE experts loop over the experts a
    batch hit) using a 3-D weight, then another Linear: dynamo breaks the graph at the nonzero and
    runs the loop and the rest of forward eagerly."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(128, 128)
        self.b = torch.nn.Linear(128, 128)
        self.experts = torch.nn.Parameter(torch.randn(3, 128, 128) / 16)

    def forward(self, x):
        x = self.a(x)
        for i in (x.sum(-1) > 0).nonzero()[:2]:
            x = x + torch.nn.functional.linear(x, self.experts[i[0] % 3])
        return self.b(x)


def test_report_names_graph_breaks_and_weights_left_to_eager_code():
    torch._dynamo.reset()
    torch.manual_seed(0)
    report = fp8pass.explain(_ExpertLoop(), torch.randn(256, 128), baseline=False)
    assert len(report.graph_breaks) == 1 and "nonzero" in report.graph_breaks[0], report.graph_breaks
    # b's Linear and the experts never reached the pass: named, not silently left in high precision
    assert sorted(report.weights_outside_graphs) == ["b.weight", "experts"]
    assert [m.module for m in report.matmuls if m.role == "fprop"] == ["a"]
    text = str(report)
    assert "graph breaks (1 reason;" in text and "aten.nonzero" in text
    assert "weights no compiled graph used" in text and "b.weight" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["graph_breaks"] == report.graph_breaks
    assert sorted(data["weights_outside_graphs"]) == ["b.weight", "experts"]


def test_explain_of_an_already_compiled_model_names_its_modules():
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 128),
                                torch.nn.Linear(128, 128))
    x = torch.randn(256, 128, requires_grad=True)
    torch._dynamo.reset()
    plain = fp8pass.explain(model, x, baseline=False)
    torch._dynamo.reset()
    compiled = fp8pass.explain(torch.compile(model, backend="fp8"), x, baseline=False)
    fprops = lambda r: [(m.module, m.shape, m.fp8) for m in r.matmuls if m.role == "fprop"]  # noqa: E731
    assert fprops(compiled) == fprops(plain) == [("0", (256, 128, 256), True), ("2", (256, 256, 128), True),
                                                 ("3", (256, 128, 128), False)]


def test_report_of_a_model_without_breaks_has_no_such_lines(block_report):
    assert block_report.graph_breaks == [] and block_report.weights_outside_graphs == []
    assert "graph breaks" not in str(block_report) and "no compiled graph" not in str(block_report)


class _Experts(torch.nn.Module):
    """MoE-style expert weights in one 3-D parameter, used batched (bmm) and one slice at a time
    (F.linear on w[1]), beside a router Linear too narrow for FP8 and a Linear that converts."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(2, 128, 256) / 16)
        self.router = torch.nn.Linear(128, 4, bias=False)
        self.proj = torch.nn.Linear(256, 128, bias=False)

    def forward(self, x):
        batched = torch.bmm(x.view(2, -1, 128), self.w).view(-1, 256)
        one_expert = torch.nn.functional.linear(x, self.w[1].t())
        return x + self.proj(batched + one_expert) * self.router(x).sum(-1, keepdim=True)


def test_expert_weights_read_batched_or_sliced_are_reported_not_silently_skipped():
    """Matmuls that read a 3-D parameter (or a slice of one) are not Linear-like sites and stay in
    high precision; the report names each with its parameter and why, instead of leaving it out
    (a batched one) or saying neither operand is a parameter (a slice)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(_Experts() for _ in range(4)), torch.nn.Linear(128, 256))
    report = fp8pass.explain(model, torch.randn(512, 128, requires_grad=True), baseline=False)
    experts = [m for m in report.matmuls if "3-D parameter" in m.reason]
    assert len(experts) == 8 and not any(m.fp8 for m in experts)
    assert {(m.module, m.weight) for m in experts} == {(str(i), f"{i}.w") for i in range(4)}
    assert {m.reason.split(" reads")[0] for m in experts} == {"not Linear-like: aten.bmm", "not Linear-like: aten.mm"}
    assert all(m.shape == (512, 128, 256) for m in experts), [m.shape for m in experts]
    assert not any("neither operand is a parameter" in m.reason for m in report.matmuls)
    assert all(m.fp8 for m in report.matmuls if m.module.endswith("proj"))
    text = str(report)
    assert "*.w " in text and "batched/grouped or sliced weight" in text
    # one summary line per reason and module pattern, whatever the number of layers
    assert sum("more like it" in line for line in text.splitlines()) == 2, text
    assert "0.router (and 3 more like it): N (out_features)=4" in text
    assert "0 (and 3 more like it): not Linear-like: aten.bmm reads the 3-D parameter '0.w'" in text
    sliced = [m for m in experts if m.reason.startswith("not Linear-like: aten.mm")]
    assert len(sliced) == 4 and all("reads one slice of the 3-D parameter" in m.reason for m in sliced)


def test_weight_on_the_left_is_named_not_called_a_non_parameter():
    class LeftWeight(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(256, 128) / 16)

        def forward(self, x):  # W @ x: the weight is the left operand
            return (self.w @ x).relu()

    torch._dynamo.reset()
    report = fp8pass.explain(LeftWeight(), torch.randn(128, 256, requires_grad=True), baseline=False)
    (record,) = [m for m in report.matmuls if m.role == "fprop"]
    assert not record.fp8 and record.weight == "w"
    assert "reads the 2-D parameter 'w' as its left operand (W @ x)" in record.reason


def test_to_dot_without_pydot_says_what_to_install(block_report, tmp_path):
    try:
        import pydot  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pydot"):
            block_report.to_dot(str(tmp_path / "g.svg"))
    else:
        files = block_report.to_dot(str(tmp_path / "g.dot"), name="graph_0_joint")
        assert os.path.getsize(files[0]) > 0


LOG_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from conftest import MLP
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(32, 256)
    y = torch.compile(model, backend="fp8")(x)
    print("RESULT", repr(y.double().sum().item()), repr(y[0, :4].tolist()))
""")


def _run_logged(torch_logs):
    env = {**os.environ, "TORCH_LOGS": torch_logs}
    if not torch_logs:
        env.pop("TORCH_LOGS")
    out = subprocess.run([sys.executable, "-c", LOG_SCRIPT.format(tests=os.path.join(REPO, "tests"))],
                         capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    result = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    return result, out.stderr


def test_torch_logs_fp8_prints_decisions_without_changing_results():
    """TORCH_LOGS="fp8" (the name fp8pass_torch_plugin registers during `import torch`) and the
    module name "+fp8pass" (always valid) print the decisions; results are unchanged."""
    plain, plain_err = _run_logged("")
    info, info_err = _run_logged("fp8")
    debug, debug_err = _run_logged("+fp8pass")
    assert plain == info == debug
    assert "GEMMs in FP8" not in plain_err
    assert "5 of 8 GEMMs in FP8" in info_err and "output head" in info_err
    assert "after the fp8 pass" not in info_err
    assert "after the fp8 pass" in debug_err and "torch.ops.fp8pass.gemm_blockwise" in debug_err


def test_set_logs_alias():
    import logging

    torch._logging.set_logs(modules={"fp8": logging.INFO})
    try:
        assert logging.getLogger("fp8pass").isEnabledFor(logging.INFO)
    finally:
        torch._logging.set_logs()
    assert not logging.getLogger("fp8pass").isEnabledFor(logging.INFO)


def test_cli_explain_text_numerics_and_json():
    cmd = [sys.executable, "-m", "fp8pass", "explain", "examples/train_gpt.py:explain_factory"]
    text = subprocess.run(cmd + ["--numerics"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert text.returncode == 0, text.stderr[-3000:]
    assert "30 of 33 GEMMs in FP8" in text.stdout and "GEMMs flagged" in text.stdout
    js = subprocess.run(cmd + ["--json", "-o", "fp8_output_head=True"], capture_output=True, text=True,
                        timeout=600, cwd=REPO)
    assert js.returncode == 0, js.stderr[-3000:]
    data = json.loads(js.stdout)
    assert data["fp8_matmuls"] == 33 and data["saved_bytes"] < data["baseline_saved_bytes"]


def test_cli_bad_target_is_a_clear_error():
    out = subprocess.run([sys.executable, "-m", "fp8pass", "explain", "no/such.py:f"], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert out.returncode != 0 and "no such file" in out.stderr
