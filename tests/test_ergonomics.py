"""Training-loop ergonomics under backend="fp8" (issue 6, item 4), on the example GPT (CPU).

Each test exercises one thing real training loops do with a compiled model: gradient
accumulation, autocast, fp32/bf16 models, frozen parts, both zero_grad modes, checkpoints,
eval/no_grad inference and back to training. Each one also checks that FP8 really ran, so that a
test cannot pass because the pass silently stood aside.
"""

import contextlib
import functools

import pytest
import torch

import fp8pass
from conftest import MLP, load_example, sqnr_db

train_gpt = load_example("train_gpt")

CFG = train_gpt.GPTConfig(dim=128, n_layers=1, n_heads=4, mlp_hidden=384, seq_len=64)
BATCH = 4
LINEARS = ("blocks.0.attn.wqkv", "blocks.0.attn.wo", "blocks.0.mlp.w1", "blocks.0.mlp.w3", "blocks.0.mlp.w2")
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz)


@pytest.fixture(scope="module")
def corpus():
    return train_gpt.load_corpus(1 << 20)


@pytest.fixture
def data(corpus):
    """A function steps -> list of (x, y) batches, the same for every call."""
    return lambda steps, seed=1: list(train_gpt.batches(corpus, BATCH, CFG.seq_len, steps, seed, "cpu"))


def make_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return train_gpt.GPT(CFG).to(dtype)


def fp8_roles(report, module):
    return sorted(m.role for m in report.matmuls if m.module == module and m.fp8)


def assert_fully_converted(report, graph_kind="joint", roles=("dgrad", "fprop", "wgrad")):
    """Every Linear of the block in FP8 (all `roles`), the head kept high precision."""
    for name in LINEARS:
        assert fp8_roles(report, name) == sorted(roles), f"{name}: {report}"
    assert not fp8_roles(report, "head")
    assert all(m.graph.endswith("_" + graph_kind) for m in report.matmuls), {m.graph for m in report.matmuls}


def gemm_out_dtypes(report) -> set:
    dtypes = set()
    for name, gm in report.graphs.items():
        if name.endswith(("_joint", "_inference")):
            for node in gm.graph.nodes:
                if node.op == "call_function" and node.target is torch.ops.fp8pass.gemm_blockwise.default:
                    dtypes.add(node.meta["val"].dtype)
    return dtypes


def float8_leaves(obj, path="") -> list[str]:
    """Paths of float8 tensors anywhere in a (nested) state dict."""
    if isinstance(obj, torch.Tensor):
        return [path] if obj.dtype in FP8_DTYPES else []
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in float8_leaves(v, f"{path}/{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in float8_leaves(v, f"{path}/{i}")]
    return []


def train_steps(compiled, opt, batches, ctx=contextlib.nullcontext, set_to_none=True) -> list[float]:
    losses = []
    for x, y in batches:
        with ctx():
            loss = compiled(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=set_to_none)
        losses.append(loss.item())
    return losses


# --- gradient accumulation ------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["fp8", "inductor"])
def test_gradient_accumulation(backend, data):
    """Three micro-batches before one optimizer step: the grads are the sum of the three
    micro-batch grads (accumulated, not overwritten) and match fp32 eager within FP8 tolerance."""
    micro = data(3)
    model = make_model()
    compiled = torch.compile(model, backend=backend)
    params = dict(model.named_parameters())

    separate = []  # each micro-batch's grads on its own
    for x, y in micro:
        (compiled(x, y) / len(micro)).backward()
        separate.append({n: p.grad.clone() for n, p in params.items()})
        model.zero_grad(set_to_none=True)

    for x, y in micro:  # the accumulation loop users write
        (compiled(x, y) / len(micro)).backward()
    accumulated = {n: p.grad.clone() for n, p in params.items()}

    model.zero_grad(set_to_none=True)
    for x, y in micro:  # the fp32 eager reference, same accumulation
        (model(x, y) / len(micro)).backward()
    reference = {n: p.grad.clone() for n, p in params.items()}

    for name in params:
        summed = separate[0][name] + separate[1][name] + separate[2][name]
        torch.testing.assert_close(accumulated[name], summed, msg=f"{name}: grads not accumulated")
        assert sqnr_db(summed, separate[-1][name]) < 20, f"{name}: the micro-batches' grads hardly differ"
        floor = 20 if backend == "fp8" else 60
        assert sqnr_db(reference[name], accumulated[name]) >= floor, name
    if backend == "fp8":  # FP8 really ran: the block's grads are not fp32-exact
        assert sqnr_db(reference["blocks.0.mlp.w1.weight"], accumulated["blocks.0.mlp.w1.weight"]) < 60


# --- precisions: fp32 model, bf16 autocast -------------------------------------------------
# (bf16 parameters are covered by test_linear.py; a bf16 GPT step costs ~20x an fp32 one on CPU)

PRECISIONS = {
    # name: (parameter dtype, context around the forward, dtype the FP8 GEMMs produce)
    "fp32": (torch.float32, contextlib.nullcontext, torch.float32),
    "autocast_bf16": (torch.float32, lambda: torch.autocast("cpu", dtype=torch.bfloat16), torch.bfloat16),
}


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_training_precision(precision, data):
    """The matmuls run in FP8 under each precision and training runs: loss finite and falling,
    parameters and grads keep the model's dtype."""
    param_dtype, ctx, gemm_dtype = PRECISIONS[precision]
    model = make_model(param_dtype)
    x, y = data(1, seed=7)[0]
    with ctx():
        report = fp8pass.explain(model, x, y)
    assert_fully_converted(report)
    assert gemm_out_dtypes(report) == {gemm_dtype}

    compiled = torch.compile(model, backend="fp8")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for x, y in data(20):
        with ctx():
            loss = compiled(x, y)
        loss.backward()
        assert all(p.grad.dtype == param_dtype for p in model.parameters())
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, f"loss must fall: {losses}"
    assert all(p.dtype == param_dtype for p in model.parameters())


# --- frozen parts (fine-tuning) --------------------------------------------------------------

FROZEN = ("embed", "pos", "blocks.0.attn")


def _freeze(model):
    for name in FROZEN:
        module_or_param = model.get_parameter(name) if name == "pos" else model.get_submodule(name)
        module_or_param.requires_grad_(False)


@pytest.mark.parametrize("when", ["before_compile", "after_first_step"])
def test_frozen_parts(when, data):
    """Fine-tuning: frozen weights get no grad and stay bit-identical through optimizer steps
    (AdamW with weight decay); the trainable ones update; the frozen Linears skip only Wgrad."""
    model = make_model()
    batches = data(4)
    if when == "before_compile":
        _freeze(model)
    compiled = torch.compile(model, backend="fp8")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    if when == "after_first_step":
        train_steps(compiled, opt, batches[:1])
        _freeze(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert set(frozen) == {"embed.weight", "pos", "blocks.0.attn.wqkv.weight", "blocks.0.attn.wo.weight"}

    for x, y in batches[1:]:
        compiled(x, y).backward()
        for name, p in model.named_parameters():
            assert (p.grad is None) == (name in frozen), name
        opt.step()
        opt.zero_grad()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"frozen {name} changed"
        else:
            assert not torch.equal(p, trainable[name]), f"trainable {name} did not update"

    report = fp8pass.explain(model, *batches[0])
    for name in ("blocks.0.attn.wqkv", "blocks.0.attn.wo"):
        assert fp8_roles(report, name) == ["dgrad", "fprop"]  # no Wgrad for a frozen weight
    for name in ("blocks.0.mlp.w1", "blocks.0.mlp.w3", "blocks.0.mlp.w2"):
        assert fp8_roles(report, name) == ["dgrad", "fprop", "wgrad"]


# --- zero_grad modes -------------------------------------------------------------------------

@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none, data):
    """zero_grad(set_to_none=True) leaves None, False leaves the same grad tensors zeroed; either
    way the next backward's grads are that batch's alone (nothing stale from the last step)."""
    model = make_model()
    compiled = torch.compile(model, backend="fp8")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = data(3)
    train_steps(compiled, opt, batches[:1], set_to_none=set_to_none)
    grads = [p.grad for p in model.parameters()]
    if set_to_none:
        assert all(g is None for g in grads)
    else:
        assert all(g is not None and not g.any() for g in grads)

    x, y = batches[1]
    compiled(x, y).backward()
    if not set_to_none:  # the grad buffers are reused in place
        assert all(p.grad is g for p, g in zip(model.parameters(), grads))
    after_zero = [p.grad.clone() for p in model.parameters()]

    model.zero_grad(set_to_none=True)
    compiled(x, y).backward()
    fresh = [p.grad for p in model.parameters()]
    for (name, _), a, b in zip(model.named_parameters(), after_zero, fresh):
        # (not bit-equal: Inductor's CPU embedding backward accumulates in a thread-dependent order)
        torch.testing.assert_close(a, b, msg=f"{name}: stale gradient survived zero_grad(set_to_none={set_to_none})")
    assert model.blocks[0].mlp.w1.weight.grad.abs().sum() > 0


# --- checkpoints ---------------------------------------------------------------------------

def _checkpoint_model(seed=0):
    # The embedding is frozen here only to make runs bit-reproducible: Inductor's CPU embedding
    # backward accumulates with atomic adds (ulp-level run-to-run differences, which FP8 rounding
    # can then amplify), and this test compares two runs bit for bit.
    model = make_model(seed=seed)
    model.embed.weight.requires_grad_(False)
    return model


def test_state_dict_round_trip(data, tmp_path):
    """After FP8 steps, model and optimizer state dicts hold no float8 tensors and the same keys
    and dtypes as an untouched model; a fresh model + optimizer loaded from the checkpoint
    continues exactly (bit for bit) as the original does."""
    batches = data(6)
    model = _checkpoint_model()
    compiled = torch.compile(model, backend="fp8")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    train_steps(compiled, opt, batches[:3])

    fresh_keys = {k: v.dtype for k, v in make_model(seed=1).state_dict().items()}
    for state in (model.state_dict(), compiled.state_dict(), opt.state_dict()):
        assert not float8_leaves(state), float8_leaves(state)
    assert {k: v.dtype for k, v in model.state_dict().items()} == fresh_keys
    assert {k.removeprefix("_orig_mod."): v.dtype for k, v in compiled.state_dict().items()} == fresh_keys

    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    model2 = _checkpoint_model(seed=1)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, weight_decay=0.1)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    compiled2 = torch.compile(model2, backend="fp8")

    losses = train_steps(compiled, opt, batches[3:])
    losses2 = train_steps(compiled2, opt2, batches[3:])
    assert losses2 == losses
    for (name, p), p2 in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p2, p), name
    assert not float8_leaves(opt2.state_dict())
    assert not float8_leaves(model2.state_dict())


# --- eval / no_grad inference on the same compiled object ------------------------------------

@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
def test_eval_inference_and_back_to_train(grad_mode, data, capsys):
    """Train, then eval() + no_grad inference on the same compiled object: the inference graph's
    Linears are FP8 too and the logits track fp32 eager; then train() again and keep training."""
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[grad_mode]
    batches = data(4)
    model = make_model()
    compiled = torch.compile(model, backend="fp8", options={"log_decisions": True})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_steps(compiled, opt, batches[:2])
    capsys.readouterr()

    compiled.eval()
    x, y = batches[2]
    with ctx():
        logits = compiled(x)
        loss = compiled(x, y)
    assert not model.training and not logits.requires_grad
    # the inference graph compiled for this call logged FP8 decisions (fprop only)
    logged = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[fp8pass]")]
    fp8_lines = [ln for ln in logged if ": FP8 (" in ln]
    assert len(fp8_lines) >= len(LINEARS) and all(" fprop " in ln for ln in logged), logged
    with torch.no_grad():
        ref_logits, ref_loss = model(x), model(x, y)
    assert sqnr_db(ref_logits, logits) >= 20
    assert not torch.equal(ref_logits, logits)  # FP8, not the fp32 path
    assert abs(loss.item() - ref_loss.item()) < 0.02 * ref_loss.item()

    with ctx():
        report = fp8pass.explain(model, x)
    assert_fully_converted(report, graph_kind="inference", roles=("fprop",))

    compiled.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train_steps(compiled, opt, batches[3:])
    assert model.training and all(torch.isfinite(torch.tensor(losses)))
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    logged = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[fp8pass]")]
    assert all(": FP8 (" in ln or " head " in ln for ln in logged), logged  # a recompile, if any, is FP8


# --- a forward wrapped in a decorator (as Hugging Face models' are) --------------------------

def _passthrough(fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapped


class DecoratedMLP(MLP):
    @_passthrough
    def forward(self, x):
        return super().forward(x)


def test_decorated_forward_keeps_module_names():
    """Dynamo sees such a forward's module as L['args'][0]: names and module_filter must still
    be relative to the model ('fc2', not '0.fc2')."""
    model = DecoratedMLP()
    x = torch.randn(32, 256)
    report = fp8pass.explain(model, x, fp8_config=fp8pass.Config(module_filter=lambda fqn, module: fqn != "fc2"))
    assert {m.module for m in report.matmuls} == {"fc1", "fc2", "fc3"}
    assert fp8_roles(report, "fc2") == []
