"""MoE experts in FP8: torch._grouped_mm over a [num_experts, out, in] weight stack, as transformers'
"grouped_mm" experts (the default for bf16 models) and examples/train_gpt.py's Experts run them.
The pass converts their three GEMMs to fp8pass.gemm_blockwise_grouped (kernels/reference.py has the
numerics)."""

import pytest
import torch
from torch import nn

import fp8pass
from conftest import hf_adamw_losses, load_example, sqnr_db

train_gpt = load_example("train_gpt")


class MoEBlock(nn.Module):
    """The experts of examples/train_gpt.py (4 SwiGLU experts of width 256, top-2) on a residual
    stream, then a Linear (the output head: converted with fp8_output_head=True)."""

    def __init__(self):
        super().__init__()
        self.moe = train_gpt.Experts(train_gpt.GPTConfig(dim=256, mlp_hidden=256, n_experts=4, top_k=2))
        self.proj = nn.Linear(256, 256)

    def forward(self, x):
        h = x + self.moe(x)
        return h + self.proj(h)


WITH_HEAD = fp8pass.Config(fp8_output_head=True, grouped_gemms=True)
EXPERTS = fp8pass.Config(grouped_gemms=True)


def _roles(report, module):
    return sorted(m.role for m in report.matmuls if m.module == module and m.fp8)


def grads_of(model, x, backend):
    torch._dynamo.reset()
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.compile(model, backend=backend)(x).float().square().mean().backward()
    return [x.grad] + [p.grad.clone() for p in model.parameters()]


def test_experts_grouped_gemms_run_in_fp8_and_match_bf16():
    """Both projections of the experts run Fprop, Dgrad and Wgrad as FP8 grouped GEMMs (six in the
    generated code; Dgrad's weights quantized straight into each expert's transpose). Gradients
    against the stock backend's in bf16 (the router reads the block's input in bf16 in both, so
    both route every token alike; against a float32 model some tokens
    would go to other experts, a routing difference, not the GEMMs' error): >= 22 dB for the expert
    weights (23.5 / 23.6 dB measured; a dense SwiGLU of the same width 23.0-23.3 dB in the same
    comparison), >= 30 dB for the input's (33.0). The router (4 outputs, not a multiple of 128)
    stays in high precision, with that reason."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = MoEBlock().bfloat16()
    x = torch.randn(400, 256, dtype=torch.bfloat16)
    report = fp8pass.explain(model, x.clone().requires_grad_(), fp8_config=WITH_HEAD, baseline=False)
    assert _roles(report, "moe") == ["dgrad", "dgrad", "fprop", "fprop", "wgrad", "wgrad"]
    assert _roles(report, "proj") == ["dgrad", "fprop", "wgrad"]
    experts = [m for m in report.matmuls if m.module == "moe" and m.fp8]
    assert {m.weight for m in experts} == {"moe.gate_up", "moe.down"}
    assert {m.shape for m in experts if m.role == "fprop"} == {(800, 256, 512), (800, 256, 256)}
    router = next(m for m in report.matmuls if m.module == "moe.router")
    assert not router.fp8 and "N (out_features)=4 not a multiple of 128" in router.reason

    bf16 = grads_of(model, x, "inductor")
    fp8, code = run_and_get_code(lambda: grads_of(model, x, fp8pass.backend(config=WITH_HEAD)))
    assert sum(c.count("= torch.ops.fp8pass.gemm_blockwise_grouped.default(") for c in code) == 6
    # Dgrad's K-major weights: one transposed quantization per stack in backward (and the head's),
    # not a quantization and a transposed copy of it
    assert sum(c.count("torch.ops.fp8pass.quantize_128x128_transposed") for c in code) == 3
    names = ["x"] + [n for n, _ in model.named_parameters()]
    sqnr = {n: sqnr_db(b, f) for n, b, f in zip(names, bf16, fp8)}
    assert sqnr["x"] >= 30.0, sqnr
    assert sqnr["moe.gate_up"] >= 22.0 and sqnr["moe.down"] >= 22.0, sqnr


def test_experts_opt_out_by_config_or_module_filter_with_a_reason():
    torch.manual_seed(0)
    x = torch.randn(200, 256, dtype=torch.bfloat16, requires_grad=True)
    model = MoEBlock().bfloat16()
    off = fp8pass.explain(model, x, fp8_config=fp8pass.Config(fp8_output_head=True), baseline=False)  # the default
    experts = [m for m in off.matmuls if m.module == "moe"]
    assert len(experts) == 6 and not any(m.fp8 for m in experts)
    assert all("Config(grouped_gemms=False)" in m.reason for m in experts)
    assert _roles(off, "proj") == ["dgrad", "fprop", "wgrad"]
    torch._dynamo.reset()
    no_moe = fp8pass.Config(grouped_gemms=True, module_filter=lambda fqn, module: not fqn.startswith("moe"))
    filtered = fp8pass.explain(model, x, fp8_config=no_moe, baseline=False)
    experts = [m for m in filtered.matmuls if m.module == "moe"]
    assert len(experts) == 6 and all("module_filter" in m.reason and not m.fp8 for m in experts)


def test_experts_in_fp8_with_dynamic_token_counts_compile_once():
    """dynamic=True: the routed-token count is symbolic; four batch sizes run one compiled graph,
    with the experts' grouped GEMMs in FP8 in it."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = MoEBlock().bfloat16()
    compiled = torch.compile(model, backend=fp8pass.backend(config=EXPERTS), dynamic=True)
    step = lambda x: compiled(x).float().square().mean().backward()  # noqa: E731
    x = torch.randn(200, 256, dtype=torch.bfloat16, requires_grad=True)
    _, code = run_and_get_code(step, x)  # (which resets dynamo first)
    assert sum(c.count("= torch.ops.fp8pass.gemm_blockwise_grouped.default(") for c in code) == 6
    counters.clear()
    for tokens in (256, 384, 130):
        x = torch.randn(tokens, 256, dtype=torch.bfloat16, requires_grad=True)
        step(x)
        assert torch.isfinite(x.grad).all()
    assert counters["stats"]["unique_graphs"] == 0  # no recompile


_HF_MOE = {  # tiny configs: 1 layer, hidden 256, 8 experts of width 256, top-2
    "Qwen3Moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                 dict(intermediate_size=512, moe_intermediate_size=256, num_experts=8, num_experts_per_tok=2,
                      head_dim=128)),
    # experts with biases and a clamped SwiGLU of its own, attention sinks
    "GptOss": ("GptOssConfig", "GptOssForCausalLM",
               dict(intermediate_size=256, num_local_experts=8, num_experts_per_tok=2, head_dim=128,
                    layer_types=["full_attention"])),
}


@pytest.mark.parametrize("family", sorted(_HF_MOE))
def test_hf_moe_experts_convert_and_train(family):
    """Unmodified Hugging Face MoEs in bf16 (transformers then runs the experts as
    torch._grouped_mm): every expert projection runs all three GEMMs in FP8, and the loss falls over
    a few AdamW steps. (Session 19's CPU probe: also Mixtral, Qwen2-MoE, DeepSeek-V3, OLMoE and
    Granite-MoE.)"""
    transformers = pytest.importorskip("transformers")
    cfg_name, model_name, extra = _HF_MOE[family]
    if not hasattr(transformers, cfg_name):
        pytest.skip(f"this transformers has no {family}")
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_name)(hidden_size=256, num_hidden_layers=1, num_attention_heads=2,
                                          num_key_value_heads=2, vocab_size=512, **extra)
    model = getattr(transformers, model_name)(cfg).bfloat16()
    if getattr(model.config, "_experts_implementation", None) != "grouped_mm":
        pytest.skip("this transformers does not run its experts as torch._grouped_mm")
    ids = torch.randint(0, 512, (2, 128))
    report = fp8pass.explain(model, input_ids=ids, labels=ids, fp8_config=EXPERTS, baseline=False)
    for name in ("gate_up_proj", "down_proj"):
        records = [m for m in report.matmuls if m.weight == f"model.layers.0.mlp.experts.{name}"]
        assert sorted(m.role for m in records if m.fp8) == ["dgrad", "fprop", "wgrad"], (name, str(report))
    torch._dynamo.reset()
    losses = hf_adamw_losses(model, torch.compile(model, backend=fp8pass.backend(config=EXPERTS)), 3, ids)
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0] - 1.0, losses


def test_moe_gate_stays_high_precision_unless_asked():
    """A router wide enough for FP8 (128 experts): its output picks experts through topk, so it stays
    in high precision by default, as DeepSeek-V3 keeps its gating modules, with the reason and the
    option that converts it; the experts themselves convert either way."""
    torch.manual_seed(0)
    experts = train_gpt.Experts(train_gpt.GPTConfig(dim=128, mlp_hidden=128, n_experts=128, top_k=2)).bfloat16()
    x = torch.randn(64, 128, dtype=torch.bfloat16, requires_grad=True)
    report = fp8pass.explain(experts, x, fp8_config=WITH_HEAD, baseline=False)
    router = [m for m in report.matmuls if m.module == "router"]
    assert router and not any(m.fp8 for m in router)
    assert "MoE gate" in router[0].reason and "Config(fp8_moe_gates=True)" in router[0].reason
    assert "MoE gate" in str(report)
    assert _roles(report, "") == ["dgrad", "dgrad", "fprop", "fprop", "wgrad", "wgrad"]
    torch._dynamo.reset()
    report = fp8pass.explain(experts, x, fp8_config=fp8pass.Config(fp8_output_head=True, fp8_moe_gates=True,
                                                                   grouped_gemms=True), baseline=False)
    assert _roles(report, "router") == ["dgrad", "fprop", "wgrad"]


def test_numerics_report_covers_the_experts_grouped_gemms():
    """Report.numerics() observes the grouped GEMMs too: each of the six, run on its real operands
    in FP8 and in float64 group by group, near the ~28-29 dB of two E4M3 operands (>= 25 dB; 28.6-31.5
    measured). (A flag may still come from a real outlier tile: the SwiGLU gradients here have two.)"""
    torch.manual_seed(0)
    model = MoEBlock().bfloat16()
    x = torch.randn(400, 256, dtype=torch.bfloat16, requires_grad=True)
    report = fp8pass.explain(model, x, fp8_config=WITH_HEAD, baseline=False)
    numerics = report.numerics()
    experts = [s for s in numerics.sites if s.module == "moe"]
    assert sorted(s.role for s in experts) == ["dgrad", "dgrad", "fprop", "fprop", "wgrad", "wgrad"], str(numerics)
    assert {s.shape for s in experts if s.role == "fprop"} == {(800, 256, 512), (800, 256, 256)}
    assert {s.shape for s in experts if s.role == "wgrad"} == {(512, 800, 256), (256, 800, 256)}
    assert all(s.sqnr_db >= 25.0 for s in experts), str(numerics)


class _InOutExperts(nn.Module):
    """Experts stored [experts, in, out] (transformers' `is_transposed` layout): x @ W[g], no transpose."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 256, 384) / 16)
        self.proj = nn.Linear(384, 256)

    def forward(self, x, offs):
        return self.proj(torch._grouped_mm(x, self.w, offs=offs))


@pytest.mark.parametrize("last_end", [300, 290], ids=["all rows", "rows past the last group"])
def test_experts_stored_in_by_out_convert_too(last_end):
    """The other weight layout converts in all three roles (Dgrad then reads each expert's copy
    transposed). Gradients against the stock backend's: 25.1 dB (input) and 24.5 dB (weight)
    measured, gate 22 dB. Rows past the last group's end get a zero input gradient in FP8, where
    torch._grouped_mm leaves them unwritten (the stock backend's held values near 2e37 there)."""
    torch.manual_seed(0)
    model = _InOutExperts().bfloat16()
    x = torch.randn(300, 256, dtype=torch.bfloat16)
    offs = torch.tensor([50, 50, 200, last_end], dtype=torch.int32)
    report = fp8pass.explain(model, x.clone().requires_grad_(), offs, fp8_config=WITH_HEAD, baseline=False)
    assert sorted(m.role for m in report.matmuls if m.weight == "w" and m.fp8) == ["dgrad", "fprop", "wgrad"]
    grads = []
    for backend in ("inductor", fp8pass.backend(config=WITH_HEAD)):
        torch._dynamo.reset()
        model.zero_grad(set_to_none=True)
        x_in = x.clone().requires_grad_()
        torch.compile(model, backend=backend)(x_in, offs).float().square().mean().backward()
        grads.append((x_in.grad, model.w.grad.clone()))
    (dx_bf16, dw_bf16), (dx_fp8, dw_fp8) = grads
    assert sqnr_db(dx_bf16[:last_end], dx_fp8[:last_end]) >= 22.0
    assert sqnr_db(dw_bf16, dw_fp8) >= 22.0
    assert torch.equal(dx_fp8[last_end:], torch.zeros_like(dx_fp8[last_end:]))


def test_moe_benchmark_runs_on_the_cpu(capsys):
    """benchmarks/moe.py --tiny: the whole script (grouped GEMM table in every role, the experts
    layer under both backends, gradient SQNR) on the CPU, so the GPU run does not find its bugs."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
    import moe

    if torch.cuda.is_available():
        pytest.skip("on a GPU the script times the real configs (benchmarks/device_x2.sh s19a)")
    moe.main(["--tiny"])
    out = capsys.readouterr().out
    for proj in ("gate_up", "down"):
        for role in ("fprop", "dgrad", "wgrad"):
            assert any(line.split()[:2] == [proj, role] for line in out.splitlines()), (proj, role, out)
    assert "FAILED" not in out and " fp8 " in out
    sqnr = dict(part.rsplit(" ", 1) for part in out.split("gradient SQNR dB: ")[1].splitlines()[0].split(", "))
    assert float(sqnr["gate_up"]) >= 20.0 and float(sqnr["down"]) >= 20.0, sqnr


def test_grouped_op_leaves_out_a_ws_kernel_that_disagrees(monkeypatch):
    """The grouped op's choice between the plain-Triton and the warp-specialized kernel (on sm90, at
    the first call per shape): a WS config whose output differs from the plain kernel's is left out
    with a warning, however fast; of the agreeing ones the fastest is kept, and cached. (The kernels
    and the timer are stand-ins: this is the choice's logic, which otherwise runs only on a GPU.)"""
    from fp8pass.kernels import triton_gemm_gluon as wsg
    from fp8pass.kernels import triton_gemm_grouped as tgg

    right = torch.arange(12.0).reshape(3, 4)
    bad, good, slow = (128, 128, 4, 6, "ws2"), (128, 128, 4, 5, "ws"), (128, 128, 4, 4, "ws")
    speed = {None: 2.0, bad: 0.5, good: 1.0, slow: 1.5}  # ms: the disagreeing config would be the fastest
    last = {}

    def plain(*args, out, kernel, **kwargs):
        last["ran"] = None
        return out.copy_(right)

    def ws(a, sa, b, sb, groups, out, cfg):
        last["ran"] = cfg
        return out.copy_(right * (1.01 if cfg == bad else 1.0))

    def timer(run, **kwargs):
        run()
        timed.append(last["ran"])
        return speed[last["ran"]]

    timed = []
    monkeypatch.setattr(wsg, "grouped_supports", lambda a, b: True)
    monkeypatch.setattr(wsg, "GROUPED_WS_CONFIGS", [bad, good, slow])
    monkeypatch.setattr(wsg, "gemm_blockwise_grouped", ws)
    monkeypatch.setattr(tgg, "gemm_blockwise_grouped", plain)
    monkeypatch.setattr(tgg, "row_tile_table", lambda offs, rows, block_m: offs)
    monkeypatch.setattr(tgg.triton.testing, "do_bench", timer)
    monkeypatch.setattr(tgg.torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(tgg, "_choice_cache", {})
    a, b, offs = torch.zeros(3, 128), torch.zeros(2, 128, 4), torch.tensor([2, 3], dtype=torch.int32)
    out = torch.empty(3, 4)
    with pytest.warns(UserWarning, match="disagreed with the plain-Triton one"):
        choice = tgg._ws_choice(a, torch.ones(3, 1), b, torch.ones(2, 1, 1), offs, out)
    assert choice == good and sorted(map(str, timed)) == sorted(map(str, [None, good, slow]))
    timed.clear()
    assert tgg._ws_choice(a, torch.ones(3, 1), b, torch.ones(2, 1, 1), offs, out) == good and not timed  # cached
