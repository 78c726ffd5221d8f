"""examples/hf_llama.py: an unmodified transformers LlamaForCausalLM trains under backend="fp8".

Skipped when transformers (the optional `hf` extra) is not installed.
"""

import math

import pytest
import torch

pytest.importorskip("transformers")

from conftest import hf_adamw_losses, load_example, sqnr_db  # noqa: E402

hf_llama = load_example("hf_llama")

TINY = ["--hidden", "128", "--layers", "1", "--heads", "2", "--kv-heads", "2", "--intermediate", "384",
        "--seq", "64", "--batch", "4", "--steps", "30", "--lr", "3e-3", "--warmup", "5", "--corpus-mb", "1",
        "--device", "cpu", "--dtype", "fp32", "--quiet"]
DECODER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def roles(report, path):
    recs = [m for m in report.matmuls if m.module == path]
    return sorted(m.role for m in recs if m.fp8), recs


@pytest.fixture(scope="module")
def run():
    torch._dynamo.reset()
    return hf_llama.main(TINY)


def test_example_trains_and_loss_falls(run):
    losses = run["losses"]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"loss must fall: {first:.3f} -> {last:.3f}"
    assert run["heldout"] < 0.8 * math.log(256)


def test_decoder_layers_fp8_head_and_embedding_high_precision(run):
    report = run["report"]
    joints = [name for name in report.graphs if name.endswith("_joint")]
    assert len(joints) == 1, f"graph breaks in the HF model: {list(report.graphs)}"
    for linear in DECODER_LINEARS:
        fp8, recs = roles(report, f"model.layers.0.{linear}")
        assert fp8 == ["dgrad", "fprop", "wgrad"], (linear, [(r.role, r.reason) for r in recs])
    fp8, recs = roles(report, "lm_head")
    assert recs and not fp8 and all("output head" in r.reason for r in recs)
    assert len(report.fp8_matmuls) == 3 * len(DECODER_LINEARS)

    # the embedding is no matmul: its table goes to aten.embedding as it is, never quantized
    joint = report.graphs[joints[0]]
    embeddings = [n for n in joint.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.embedding.default]
    assert len(embeddings) == 1
    table = embeddings[0].args[0]
    assert table.op == "placeholder" and table.meta["val"].dtype == torch.float32
    assert embeddings[0].meta["val"].dtype == torch.float32
    quantized = {n.args[0] for n in joint.graph.nodes
                 if n.op == "call_function" and "quantize" in str(n.target) and n.args}
    assert table not in quantized
    assert not any("embed" in m.module for m in report.matmuls)


def test_example_with_experts_trains_a_qwen3_moe_with_fp8_experts():
    """`examples/hf_llama.py --experts 4`: a Qwen3-MoE in bf16 whose experts run in FP8 (the example
    sets grouped_gemms=True), trained a few steps; --dtype fp32 is refused with the reason."""
    torch._dynamo.reset()
    tiny = [a for a in TINY if a not in ("--dtype", "fp32")] + ["--experts", "4", "--intermediate", "128"]
    tiny[tiny.index("--steps") + 1] = "4"
    result = hf_llama.main(tiny)
    experts = [m for m in result["report"].matmuls if ".mlp.experts." in m.weight]
    assert sorted(m.role for m in experts if m.fp8) == ["dgrad", "dgrad", "fprop", "fprop", "wgrad", "wgrad"]
    assert all(math.isfinite(v) for v in result["losses"]) and result["losses"][-1] < result["losses"][0]
    with pytest.raises(SystemExit):
        hf_llama.main(tiny + ["--dtype", "fp32"])


def test_report_names_modules_from_the_model_root(run):
    names = {m.module for m in run["report"].matmuls}
    assert "model.layers.0.mlp.up_proj" in names and "lm_head" in names, sorted(names)


def test_kv_cache_outputs_do_not_make_k_v_projections_heads():
    import fp8pass

    model = hf_llama.make_model(hidden=128, layers=1, heads=2, kv_heads=2, intermediate=384, seq=64)
    model.config.use_cache = True  # the LlamaConfig default
    x = torch.randint(0, 256, (2, 64))
    report = fp8pass.explain(model, input_ids=x, labels=x)
    for linear in ("self_attn.k_proj", "self_attn.v_proj"):
        fp8, recs = roles(report, f"model.layers.0.{linear}")
        assert fp8 == ["dgrad", "fprop", "wgrad"], (linear, [(r.role, r.reason) for r in recs])


def test_fuse_swiglu_matches_the_unmodified_llama_mlp():
    # LlamaMLP computes down_proj(act_fn(gate_proj(x)) * up_proj(x)) with act_fn an nn.SiLU-like
    # module: the rewrite must find it in the graph Dynamo hands the backend
    import fp8pass
    from transformers import LlamaConfig, LlamaForCausalLM

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 256, (2, 64))
    report = fp8pass.explain(model, ids, labels=ids, fp8_config=fp8pass.Config(fuse_swiglu=True))
    # per layer: forward w2's 1x128 copy; backward the two input gradients' kernels and, with
    # recompute_fp8_activations (on by default), w2's 128x1 copy
    assert report.fused_swiglu == {"forward": 2, "backward": 6}


def test_moe_experts_are_accounted_for_in_the_report():
    """An unmodified MoE model (Qwen3-MoE, tiny, float32): its expert weights are 3-D parameters that
    the pass does not convert in float32, but none of them may vanish from the report. Each is either read by a matmul
    of a compiled graph, listed with the parameter and the reason it stays in high precision, or
    named among the weights no compiled graph used. The attention Linears still convert."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Qwen3MoeConfig"):
        pytest.skip("this transformers has no Qwen3-MoE")
    import fp8pass

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = transformers.Qwen3MoeConfig(hidden_size=128, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=2, head_dim=64, intermediate_size=256,
                                      moe_intermediate_size=128, vocab_size=256, num_experts=4,
                                      num_experts_per_tok=2)
    model = transformers.Qwen3MoeForCausalLM(cfg)
    ids = torch.randint(0, 256, (2, 32))
    report = fp8pass.explain(model, input_ids=ids, labels=ids, baseline=False)
    experts = [n for n, p in model.named_parameters() if p.dim() == 3]
    assert experts, "expected 3-D expert weights"
    listed = {m.weight for m in report.matmuls if not m.fp8 and "not Linear-like" in m.reason}
    unaccounted = [n for n in experts if n not in listed and n not in report.weights_outside_graphs]
    assert not unaccounted, (unaccounted, str(report))
    # fp32 experts: transformers' fallback op instead of torch._grouped_mm; the reason says to use bf16
    # (in bf16 they convert: tests/test_moe.py)
    fallback = [m for m in report.matmuls if "grouped_mm_fallback" in m.reason]
    assert fallback and all("keep the model in bf16" in m.reason for m in fallback), str(report)
    assert any(m.fp8 for m in report.matmuls if m.module.endswith("self_attn.q_proj"))


@pytest.mark.parametrize("family", ["Phi3", "GPTNeoX"])
def test_fused_projection_families_convert_and_train(family):
    """Two more unmodified families whose Linears are fused differently from Llama's: Phi-3 (one
    qkv_proj, one gate_up_proj whose output is chunked into SwiGLU's two inputs) and GPT-NeoX (one
    query_key_value, a GELU MLP). Every Linear but the output head runs all three GEMMs in FP8, and
    the loss falls over a few AdamW steps (the CPU probe of session 18 tried ten families)."""
    import transformers

    import fp8pass

    torch._dynamo.reset()
    torch.manual_seed(0)
    size = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=64)
    if family == "Phi3":
        model = transformers.Phi3ForCausalLM(transformers.Phi3Config(
            **size, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=1))
        linears = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
    else:
        model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**size))
        linears = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
    ids = torch.randint(0, 256, (2, 64))
    report = fp8pass.explain(model, input_ids=ids, labels=ids, baseline=False)
    layer = "model.layers.0." if family == "Phi3" else "gpt_neox.layers.0."
    for name in linears:
        assert roles(report, layer + name)[0] == ["dgrad", "fprop", "wgrad"], (name, str(report))
    assert len(report.fp8_matmuls) == 3 * len(linears), str(report)
    losses = hf_adamw_losses(model, torch.compile(model, backend="fp8"), 4, ids)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.3, losses


def test_hf_gradient_checkpointing_converts_once_dynamo_may_skip_its_side_effect():
    """Hugging Face's gradient_checkpointing_enable(): inside each checkpointed decoder layer a
    context variable is set (transformers' kernels hub), a side effect dynamo will not trace under
    torch.utils.checkpoint, so every layer runs eagerly in high precision, and the report says so
    with the way out. With torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint the
    layers compile: every decoder Linear converts, the backward runs their Fprops again, and the
    gradients are those of the same model without checkpointing (the recompute quantizes the
    same values)."""
    import copy

    import transformers

    import fp8pass

    torch._dynamo.reset()
    torch.manual_seed(0)
    plain = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, use_cache=False))
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable()
    ids = torch.randint(0, 256, (2, 64))

    report = fp8pass.explain(checkpointed, input_ids=ids, labels=ids, baseline=False)
    layer_weights = [n for n, p in checkpointed.named_parameters() if ".layers." in n and p.dim() == 2]
    assert set(layer_weights) <= set(report.weights_outside_graphs), str(report)
    assert "skip_fwd_side_effects_in_bwd_under_checkpoint = True" in str(report)

    def grads(model):
        torch._dynamo.reset()
        model.zero_grad(set_to_none=True)
        torch.compile(model, backend="fp8")(input_ids=ids, labels=ids).loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True):
        torch._dynamo.reset()
        report = fp8pass.explain(checkpointed, input_ids=ids, labels=ids, baseline=False)
        assert not report.graph_breaks and not report.weights_outside_graphs, str(report)
        assert len(report.fp8_matmuls) == 3 * len(layer_weights), str(report)
        # all Fprops run again but layer 0's down_proj: its output only feeds the residual sum that
        # layer 1's checkpoint saves as its input
        assert len(report.fprop_gemms_in_backward) == len(layer_weights) - 1, str(report)
        checkpointed_grads = grads(checkpointed)
    plain_grads = grads(plain)
    print(f"SQNR of the checkpointed model's gradients vs the plain model's: {sqnr_db(plain_grads, checkpointed_grads):.1f} dB")
    assert sqnr_db(plain_grads, checkpointed_grads) > 40
