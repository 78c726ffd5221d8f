"""What the pass does to whole graphs: which sites convert, which skip and why, what is saved."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fp8pass
from conftest import MLP, fp8_counts, load_example

train_gpt = load_example("train_gpt")
GPT_BLOCK_LINEARS = ["attn.wqkv", "attn.wo", "mlp.w1", "mlp.w3", "mlp.w2"]


def _gemm_nodes(graph_module):
    return [n for n in graph_module.graph.nodes if n.op == "call_function"
            and n.target is torch.ops.fp8pass.gemm_blockwise.default]


def _roles(report, module):
    return sorted(m.role for m in report.matmuls if m.module == module and m.fp8)


def test_mlp_training_three_fp8_gemms_per_linear():
    torch.manual_seed(0)
    model = MLP()
    x = torch.randn(64, 256, requires_grad=True)
    report = fp8pass.explain(model, x)
    assert _roles(report, "fc1") == ["dgrad", "fprop", "wgrad"]
    assert _roles(report, "fc2") == ["dgrad", "fprop", "wgrad"]
    assert fp8_counts(report)["fc3"] == 0
    head = [m for m in report.matmuls if m.module == "fc3"]
    assert len(head) == 3 and all("output head" in m.reason and "fp8_output_head=True" in m.reason for m in head)
    joint = report.graphs["graph_0_joint"] if "graph_0_joint" in report.graphs else next(
        g for n, g in report.graphs.items() if n.endswith("_joint"))
    assert len(_gemm_nodes(joint)) == 6


def test_mlp_inference_one_fp8_gemm_per_linear():
    torch.manual_seed(0)
    model = MLP()
    with torch.no_grad():
        report = fp8pass.explain(model, torch.randn(64, 256))
    assert fp8_counts(report) == {"fc1": 1, "fc2": 1, "fc3": 0}
    assert {m.role for m in report.matmuls} == {"fprop"}
    inference = next(g for n, g in report.graphs.items() if n.endswith("_inference"))
    assert len(_gemm_nodes(inference)) == 2


def test_fp8_output_head_option_converts_the_head():
    model = MLP()
    report = fp8pass.explain(model, torch.randn(64, 256, requires_grad=True),
                             fp8_config=fp8pass.Config(fp8_output_head=True))
    assert fp8_counts(report) == {"fc1": 3, "fc2": 3, "fc3": 3}


def test_gpt_block_every_linear_converted_and_fp8_saved():
    torch.manual_seed(0)
    cfg = train_gpt.GPTConfig(dim=256, n_heads=4, mlp_hidden=768, seq_len=64)
    block = train_gpt.Block(cfg)
    x = torch.randn(2, 64, 256, requires_grad=True)
    # the 128x1 copies saved from forward (by default they are made in backward from what
    # backward holds anyway: recompute_fp8_activations, tests/test_lowering.py)
    report = fp8pass.explain(block, x, fp8_config=fp8pass.Config(recompute_fp8_activations=False))
    for name in GPT_BLOCK_LINEARS:
        assert _roles(report, name) == ["dgrad", "fprop", "wgrad"], name
    assert len(report.fp8_matmuls) == 15
    # attention's own matmuls (SDPA) are not Linear-like and stay in high precision
    _check_saved_activations_are_fp8(report, GPT_BLOCK_LINEARS)


def _check_saved_activations_are_fp8(report, converted_modules, weight_copies_saved=False):
    """At converted sites the forward saves FP8 copies (plus fp32 scales) for backward, never the
    high-precision input of the Linear. The 128x128 weight copy for Dgrad is saved only with
    recompute_fp8_weights=False; by default backward quantizes the weight again."""
    assert report.saved, "no partitioned graphs were captured"
    for name in converted_modules:
        weight_copies = [s for s in report.saved if s.module == name and s.fp8 and "128x128" in s.producer]
        assert bool(weight_copies) == weight_copies_saved, name
    # the 128x1 copies of the inputs, for Wgrad (Linears reading the same input share one)
    assert [s for s in report.saved if s.fp8 and "quantize_1x128_128x1" in s.producer]
    saved_names = {s.name for s in report.saved}
    fw = report.graphs[next(n for n in report.graphs if n.endswith("_forward"))]
    quantized_inputs = [n.args[0] for n in fw.graph.nodes if n.op == "call_function"
                        and n.target is torch.ops.fp8pass.quantize_1x128_128x1.default]
    assert quantized_inputs
    for node in quantized_inputs:
        chain = [node]
        while chain[-1].op == "call_function" and chain[-1].target in (
                torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default):
            chain.append(chain[-1].args[0])
        assert not saved_names & {n.name for n in chain}, f"high-precision input {node} saved for backward"


@pytest.mark.parametrize("recompute_weights", [True, False])
def test_mlp_saves_fp8_at_converted_sites(recompute_weights):
    torch.manual_seed(0)
    report = fp8pass.explain(MLP(), torch.randn(64, 256, requires_grad=True),
                             fp8_config=fp8pass.Config(recompute_fp8_weights=recompute_weights,
                                                       recompute_fp8_activations=False))
    _check_saved_activations_are_fp8(report, ["fc1", "fc2"], weight_copies_saved=not recompute_weights)
    partitioned = [n for n in report.graphs if n.endswith("_forward")]
    assert partitioned, "the partitioned forward graph must be recorded"
    fw = report.graphs[partitioned[0]]
    outputs = next(n for n in fw.graph.nodes if n.op == "output").all_input_nodes
    # the 128x1 copies of x and of fc2's input, plus (not recomputed) the two weights' copies
    assert sum(1 for n in outputs if n.meta["val"].dtype == torch.float8_e4m3fn) == (2 if recompute_weights else 4)
    # Dgrad's K-major weight: quantized again straight into that layout in backward when weights
    # are recomputed (no transposing copy of FP8 data), else a transposed copy of the kept one
    bw = report.graphs[partitioned[0].replace("_forward", "_backward")]
    transposed_quants = bw.graph.find_nodes(op="call_function",
                                            target=torch.ops.fp8pass.quantize_128x128_transposed.default)
    fp8_copies = [n for g in (fw, bw) for n in g.graph.find_nodes(op="call_function", target=torch.ops.aten.clone.default)
                  if n.meta["val"].dtype == torch.float8_e4m3fn]
    assert (len(transposed_quants), len(fp8_copies)) == ((2, 0) if recompute_weights else (0, 2))


class ThreeD(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(256, 384)
        self.out = nn.Linear(384, 128)

    def forward(self, x):
        return self.out(F.gelu(self.proj(x)))


def test_rank4_input_folds_batch_dims_into_m():
    x = torch.randn(2, 3, 5, 256, requires_grad=True)
    report = fp8pass.explain(ThreeD(), x)
    proj = {m.role: m for m in report.matmuls if m.module == "proj"}
    assert proj["fprop"].fp8 and proj["fprop"].shape == (30, 256, 384)
    assert proj["wgrad"].fp8 and proj["wgrad"].shape == (384, 30, 256)
    assert proj["dgrad"].fp8 and proj["dgrad"].shape == (30, 384, 256)


def test_non_multiple_of_128_is_skipped_with_reason():
    model = nn.Sequential(nn.Linear(200, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 130))
    report = fp8pass.explain(model, torch.randn(32, 200, requires_grad=True))
    first = [m for m in report.matmuls if m.module == "0"]
    assert first and not any(m.fp8 for m in first)
    assert all("K (in_features)=200" in m.reason and "multiple of 128" in m.reason for m in first)
    assert "'0'" in first[0].reason  # names the module
    assert _roles(report, "2") == ["dgrad", "fprop", "wgrad"]


def test_functional_linear_and_matmul_with_parameter():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w_t = nn.Parameter(torch.randn(256, 256) / 16)   # used as x @ w_t.t()
            self.w_kn = nn.Parameter(torch.randn(256, 384) / 16)  # used as x @ w_kn (K x N layout)
            self.head = nn.Linear(384, 128)

        def forward(self, x):
            h = torch.relu(F.linear(x, self.w_t))
            h = torch.relu(x @ self.w_t.t() + h)
            h = torch.matmul(h, self.w_kn)
            return self.head(h)

    torch.manual_seed(0)
    model = Functional()
    x = torch.randn(4, 16, 256, requires_grad=True)
    report = fp8pass.explain(model, x)
    fp8 = [m for m in report.matmuls if m.fp8]
    assert sorted(m.weight for m in fp8 if m.role == "fprop") == ["w_kn", "w_t", "w_t"]
    assert len(fp8) == 9
    # and the numbers are right
    y = torch.compile(model, backend="fp8")(x)
    from conftest import sqnr_db
    assert sqnr_db(model(x), y) >= 25


def test_tied_embedding_head_stays_high_precision():
    cfg = train_gpt.GPTConfig(dim=128, n_layers=1, n_heads=2, mlp_hidden=384, seq_len=32, tied_head=True)
    model = train_gpt.GPT(cfg)
    tokens = torch.randint(0, 256, (2, 32))
    report = fp8pass.explain(model, tokens, tokens)
    head = [m for m in report.matmuls if m.weight == "embed.weight"]
    assert head and not any(m.fp8 for m in head)
    assert all("tied to an embedding" in m.reason for m in head)
    assert len(report.fp8_matmuls) == 15
