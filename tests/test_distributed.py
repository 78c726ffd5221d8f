"""backend="fp8" under DDP and FSDP2, and FSDP2's FP8 weight all-gather (fp8pass.distributed).

The 2-process tests share one torchrun of tests/dist_worker.py (2 ranks, gloo on the CPU),
started before the first test so that the one-process tests, which check the pieces, run alongside
it."""

import json
import logging
import math
import os
import pathlib
import signal
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn

import fp8pass
from fp8pass.distributed import (Fp8AllGatherWeight, Fp8GatheredWeight, enable_fp8_all_gather,
                                 fp8_all_gather_weights)

TESTS = pathlib.Path(__file__).resolve().parent


class _Mesh:
    """Stands in for FSDP2's DeviceMesh in the hooks (they read only its size)."""

    def __init__(self, size):
        self._size = size

    def size(self):
        return self._size


def _gather_like_fsdp(weight: torch.Tensor, world_size: int):
    """Run the extension hooks of `weight`'s shards as FSDP2 does: pre-all-gather on each rank's
    dim-0 shard, concatenate each input over ranks (the all-gather), post-all-gather."""
    shards = weight.chunk(world_size)
    wrapped = [Fp8AllGatherWeight(s.clone()) for s in shards]
    results = [w.fsdp_pre_all_gather(_Mesh(world_size), weight.shape, weight.stride(), None, None) for w in wrapped]
    inputs, metadata = zip(*results)
    outputs = tuple(torch.cat([inp[i] for inp in inputs]) for i in range(len(inputs[0])))
    gathered, _ = wrapped[0].fsdp_post_all_gather(outputs, metadata[0], weight.dtype)
    return gathered, inputs


def test_fp8_all_gather_of_aligned_shards_equals_quantizing_the_full_weight():
    torch.manual_seed(0)
    weight = torch.randn(512, 384) * torch.logspace(-2, 2, 512)[:, None]  # a different amax per block
    for world_size in (2, 4):  # 256 and 128 rows per shard
        gathered, inputs = _gather_like_fsdp(weight, world_size)
        assert isinstance(gathered, Fp8GatheredWeight)
        assert gathered.shape == weight.shape and gathered.dtype == weight.dtype
        assert [t.dtype for t in inputs[0]] == [torch.float8_e4m3fn, torch.float32]
        q, s = torch.ops.fp8pass.quantize_128x128(weight)
        assert torch.equal(gathered._data.view(torch.uint8), q.view(torch.uint8))
        assert torch.equal(gathered._scale, s)
        # every op reads the gathered weight as its dequantized value
        torch.testing.assert_close(gathered + 0, torch.ops.fp8pass.dequantize(q, s, 128, 128, weight.dtype),
                                   rtol=0, atol=0)


def test_fp8_all_gather_falls_back_when_shard_rows_are_not_a_multiple_of_128():
    torch.manual_seed(0)
    weight = torch.randn(384, 256)
    # Why: 192-row shards quantized on their own put block boundaries at row 192, not 128/256,
    # so their scales differ from the full weight's 128x128 blocks.
    q_full, _ = torch.ops.fp8pass.quantize_128x128(weight)
    q_shards = torch.cat([torch.ops.fp8pass.quantize_128x128(s)[0] for s in weight.chunk(2)])
    assert not torch.equal(q_full.view(torch.uint8), q_shards.view(torch.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gathered, inputs = _gather_like_fsdp(weight, 2)
    assert any("192 rows per shard" in str(w.message) and "BF16 all-gather" in str(w.message) for w in caught)
    assert [t.dtype for t in inputs[0]] == [weight.dtype]  # the ordinary high-precision all-gather
    assert type(gathered) is torch.Tensor and torch.equal(gathered, weight)


def test_in_place_ops_on_the_wrapper_return_the_wrapper():
    w = Fp8AllGatherWeight(torch.zeros(128, 128))
    assert w.copy_(torch.ones(128, 128)) is w and w.mul_(2) is w
    assert torch.equal(w._tensor, torch.full((128, 128), 2.0))


def test_fp8_all_gather_of_a_shard_along_another_dim_is_a_clear_error():
    weight = torch.randn(256, 256)
    wrapped = Fp8AllGatherWeight(weight[:, :128].clone())  # what a Shard(1) placement would hand over
    with pytest.raises(RuntimeError, match="dim-0 sharding.*module_filter"):
        wrapped.fsdp_pre_all_gather(_Mesh(2), weight.shape, weight.stride(), None, None)


def test_enable_fp8_all_gather_decisions_and_reasons():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(256, 256)
            self.a = nn.Linear(256, 512)        # FP8: 256 rows per shard
            self.b = nn.Linear(512, 384)        # 192 rows per shard
            self.c = nn.Linear(200, 256)        # K not a multiple of 128
            self.d = nn.Linear(256, 768)        # 384 rows per shard on 2 ranks, 192 on 4
            self.skip = nn.Linear(256, 256)     # module_filter
            self.marked = fp8pass.high_precision(nn.Linear(256, 256))
            self.router = nn.Linear(256, 128)   # an MoE router (by its name; the pass keeps it high precision)
            self.head = nn.Linear(256, 256)     # last Linear: the head

    torch.manual_seed(0)
    net = Net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    cfg = fp8pass.Config(module_filter=lambda fqn, m: fqn != "skip")
    decisions = {d.weight: d for d in enable_fp8_all_gather(net, world_size=2, config=cfg)}
    assert decisions["a.weight"].fp8 and decisions["d.weight"].fp8
    assert "192 rows per shard" in decisions["b.weight"].reason
    assert "not multiples of 128" in decisions["c.weight"].reason
    assert "module_filter" in decisions["skip.weight"].reason
    assert "high_precision" in decisions["marked.weight"].reason
    assert "output head" in decisions["head.weight"].reason
    assert "MoE router" in decisions["router.weight"].reason
    assert not any(d.fp8 for name, d in decisions.items() if name not in ("a.weight", "d.weight"))
    assert fp8_all_gather_weights(net) == ["a.weight", "d.weight"]
    assert isinstance(net.a.weight, nn.Parameter) and isinstance(net.a.weight, Fp8AllGatherWeight)
    for name, p in net.named_parameters():  # values untouched, and ops see plain tensors
        assert torch.equal(p.detach() + 0, before[name]) and type(p.detach() + 0) is torch.Tensor
    # on 4 ranks d has 192 rows per shard
    d4 = {d.weight: d for d in enable_fp8_all_gather(Net(), world_size=4)}
    assert "192 rows per shard" in d4["d.weight"].reason and d4["a.weight"].fp8
    # a weight shared with an embedding
    tied = Net()
    tied.emb = nn.Embedding(512, 256)
    tied.emb.weight = tied.a.weight
    assert "tied to an embedding" in {d.weight: d for d in enable_fp8_all_gather(tied, 2)}["a.weight"].reason
    # ... converted as a head (fp8_output_head=True), or two Linears sharing one weight: the
    # weight is refused, not wrapped for one owner (which would untie it)
    for other in ("emb", "d"):
        shared = Net()
        shared.emb = nn.Embedding(512, 256)
        getattr(shared, other).weight = shared.a.weight
        found = {d.weight: d for d in enable_fp8_all_gather(shared, 2, config=fp8pass.Config(fp8_output_head=True))}
        assert not found["a.weight"].fp8 and "tied" in found["a.weight"].reason
        assert getattr(shared, other).weight is shared.a.weight
        assert not isinstance(shared.a.weight, Fp8AllGatherWeight)


def test_state_dict_of_wrapped_weights_is_plain_and_loading_keeps_the_wrapper():
    """Without FSDP2 (one process): the state dict holds the plain master tensor (an alias), not
    the wrapper; load_state_dict copies into it, and assign=True gets wrapped again."""
    import io

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128))
    enable_fp8_all_gather(net, world_size=2)
    assert fp8_all_gather_weights(net) == ["0.weight"]
    sd = net.state_dict()
    assert all(type(v) is torch.Tensor and v.dtype == torch.float32 for v in sd.values())
    assert sd["0.weight"].data_ptr() == net[0].weight._tensor.data_ptr()  # an alias of the master tensor
    assert isinstance(net.state_dict(keep_vars=True)["0.weight"], Fp8AllGatherWeight)  # the parameter itself
    buf = io.BytesIO()
    torch.save(sd, buf)
    assert b"fp8pass" not in buf.getvalue()
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    for assign in (False, True):
        other = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128))
        enable_fp8_all_gather(other, world_size=2)
        other.load_state_dict({k: v.clone() for k, v in loaded.items()}, assign=assign)
        assert isinstance(other[0].weight, Fp8AllGatherWeight) and isinstance(other[0].weight, nn.Parameter)
        assert fp8_all_gather_weights(other) == ["0.weight"]
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), sd.values()))


def _gemm_b_inputs(graph):
    """For each gemm_blockwise node, the node its B operand comes from (through permutes/clones)."""
    out = []
    for node in graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.fp8pass.gemm_blockwise.default:
            b = node.args[2]
            while b.op == "call_function" and b.target in (torch.ops.aten.permute.default,
                                                           torch.ops.aten.clone.default):
                b = b.args[0]
            out.append(b)
    return out


def test_a_gathered_weight_in_a_high_precision_site_is_warned_about(caplog):
    """enable_fp8_all_gather and the pass judge sites apart: where the pass keeps a gathered
    weight's GEMMs in high precision, they read the FP8-rounded weight, which the user hears."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512, bias=False), nn.ReLU(), nn.Linear(512, 256))
    q, s = torch.ops.fp8pass.quantize_128x128(model[0].weight.detach())
    model[0].weight = nn.Parameter(Fp8GatheredWeight(q, s, torch.float32), requires_grad=True)
    config = fp8pass.Config(module_filter=lambda fqn, module: fqn != "0")
    with caplog.at_level(logging.WARNING, logger="fp8pass"):
        report = fp8pass.explain(model, torch.randn(128, 256, requires_grad=True), fp8_config=config, baseline=False)
    assert not any(m.fp8 for m in report.matmuls if m.module == "0")
    assert any("arrives FP8-all-gathered" in r.getMessage() and "0.weight" in r.getMessage() for r in caplog.records)


def test_pass_feeds_a_gathered_fp8_weight_straight_to_the_gemms():
    """A Linear whose weight arrives FP8-all-gathered: no quantize and no dequantize of it in the
    graph, and the same outputs and gradients, bit for bit, as the pass quantizing the plain
    weight itself (the gathered data and scales are what it would compute)."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(256, 512, bias=False), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                          nn.Linear(256, 128))
    gathered = nn.Sequential(*[m for m in __import__("copy").deepcopy(plain)])
    q, s = torch.ops.fp8pass.quantize_128x128(plain[0].weight.detach())
    gathered[0].weight = nn.Parameter(Fp8GatheredWeight(q, s, torch.float32), requires_grad=True)
    x = torch.randn(256, 256)

    report = fp8pass.explain(gathered, x.clone().requires_grad_(), baseline=False)
    rows = [m for m in report.matmuls if m.module == "0"]
    assert {m.role for m in rows if m.fp8} == {"fprop", "dgrad", "wgrad"} and rows[0].weight == "0.weight"
    joint = next(g for n, g in report.graphs.items() if n.endswith("_joint"))
    targets = [n.target for n in joint.graph.nodes if n.op == "call_function"]
    assert torch.ops.fp8pass.dequantize.default not in targets
    assert targets.count(torch.ops.fp8pass.quantize_128x128.default) == 1  # layer 2 only (4 is the head)
    b_inputs = _gemm_b_inputs(joint.graph)
    # Fprop and Dgrad of layer 0 read the gathered FP8 data input itself
    assert sum(b.op == "placeholder" and b.meta["val"].dtype == torch.float8_e4m3fn for b in b_inputs) == 2

    results = []
    for model in (plain, gathered):
        torch._dynamo.reset()
        xi = x.clone().requires_grad_()
        out = torch.compile(model, backend="fp8")(xi)
        out.square().sum().backward()
        results.append((out.detach(), xi.grad, model[0].weight.grad, model[2].weight.grad))
        assert type(model[0].weight.grad) is torch.Tensor and model[0].weight.grad.dtype == torch.float32
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def _two_process_launch(tmp_path_factory):
    """torchrun of tests/dist_worker.py, started (not waited for)."""
    tmp = tmp_path_factory.mktemp("dist")
    out, log = tmp / "results.json", open(tmp / "torchrun.log", "w+")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(TESTS / "dist_worker.py"), str(out)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    yield proc, out, log
    if proc.poll() is None:  # a failed or interrupted session: end torchrun and its ranks
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


@pytest.fixture(scope="module", autouse=True)
def _start_two_process_run_first(request):
    """When a selected test needs the 2-process run, start it before this module's first test:
    the one-process tests run while it does."""
    if any("two_process_run" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("_two_process_launch")


@pytest.fixture(scope="module")
def two_process_run(_two_process_launch):
    proc, out, log = _two_process_launch
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.seek(0)
    assert proc.returncode == 0, log.read()[-8000:]
    return json.loads(out.read_text())


def _rel(a, b):
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("run", ["ddp_compile_outside", "ddp_compile_inside", "fsdp", "fsdp_fp8_all_gather"])
def test_two_processes_match_one_process_of_the_same_global_batch(two_process_run, run):
    single, dist_run = two_process_run["single"], two_process_run[run]
    assert len(dist_run["losses"]) == 10
    # the same GEMMs run in FP8 as in one process: 5 converted Linears x 3 (the head stays high precision)
    assert single["gemms"] == [15] * 10 and dist_run["gemms"] == single["gemms"]
    assert _rel(dist_run["losses"][-1], single["losses"][-1]) < 1e-3
    assert all(_rel(a, b) < 1e-3 for a, b in zip(dist_run["losses"], single["losses"]))
    assert single["losses"][-1] < single["losses"][0]  # it trains
    # gradients and optimizer state as in high-precision training: plain tensors, param dtype/layout
    assert dist_run["grad_types"] == ["Tensor"] and dist_run["state_types"] == ["Tensor"]
    assert dist_run["grad_layout_ok"]


def test_fsdp2_moe_experts_in_fp8_match_one_process(two_process_run):
    """FSDP2 shards the experts' 3-D weights along the experts; the compiled graphs get them whole and
    run their grouped GEMMs in FP8: 2 blocks x 2 projections x 3 roles a step on each rank. Each rank
    routes half the tokens, so Wgrad's 128-token tiles differ from one process's: losses within 0.2%
    (1e-4 measured on the CPU)."""
    single, fsdp = two_process_run["single_moe"], two_process_run["fsdp_moe"]
    assert single["grouped_gemms_per_step"] == fsdp["grouped_gemms_per_step"] == 12
    assert all(math.isfinite(v) for v in fsdp["losses"]) and single["losses"][-1] < single["losses"][0]
    assert all(_rel(a, b) < 2e-3 for a, b in zip(fsdp["losses"], single["losses"])), (fsdp["losses"], single["losses"])
    assert fsdp["grad_types"] == ["Tensor"] and fsdp["grad_layout_ok"]


def test_ddp_optimizer_pieces_do_not_lose_linears_to_the_output_head_rule(two_process_run):
    # bucket_cap_mb=1 makes DDPOptimizer compile several pieces; only the last one ends in the head
    pieces = two_process_run["ddp_pieces_are_whole"]
    assert len(pieces) >= 2 and pieces[-1] is True and False in pieces


def test_fp8_all_gather_two_processes(two_process_run):
    decisions = {w: (fp8, reason) for w, fp8, reason in two_process_run["decisions"]}
    assert [w for w, (fp8, _) in decisions.items() if fp8] == [
        "blocks.0.w1.weight", "blocks.0.w2.weight", "blocks.1.w1.weight", "blocks.1.w2.weight"]
    assert "192 rows per shard" in decisions["tail.proj.weight"][1]
    assert "output head" in decisions["tail.head.weight"][1]
    gathered = two_process_run["gathered"]
    assert gathered["w1_type"] == gathered["w2_type"] == "Fp8GatheredWeight"
    for name in ("w1", "w2"):  # bit-identical on both ranks, and equal to one-process quantization
        assert gathered[f"{name}_same_on_every_rank"] and gathered[f"{name}_equals_full_quantization"]
    run, plain = two_process_run["fsdp_fp8_all_gather"], two_process_run["fsdp"]
    # the master weights stay with FSDP2 (wrapped, unchanged in dtype); what travels is smaller:
    # the 4 block weights go as 1 byte per element instead of 4 (fp32 here; 2 with BF16 params)
    assert "Fp8AllGatherWeight" in run["param_types"]
    assert run["bytes"]["all_gather"] < 0.4 * plain["bytes"]["all_gather"]
    assert run["bytes"]["reduce_scatter"] == plain["bytes"]["reduce_scatter"]
    # with shard rows on block boundaries the gathered weights are what the pass would compute
    assert run["losses"] == plain["losses"]


def _plain(types: dict, dtype: str = "torch.float32") -> bool:
    """Every entry of a state dict's [type, local type, dtype] list is a plain tensor or a DTensor
    over one, of the parameters' dtype (no wrapper, no FP8)."""
    return bool(types) and all(t in ("Tensor", "DTensor") and local == "Tensor" and dt == dtype
                               for t, local, dt in types.values())


def test_checkpoints_of_fp8_all_gather_models_are_plain_and_restore_exactly(two_process_run):
    """FSDP2 + FP8 all-gather, 10 steps, then model/optimizer state dicts: plain DTensors of the
    parameters' dtype (nn.Module, torch.distributed.checkpoint sharded and full), torch.save
    without the wrapper class (weights_only load works); loaded into fresh models (load_state_dict,
    set_model_state_dict, and a meta-device model via a rank-0 broadcast, which assigns) they are
    bit-exact with the FP8 all-gather still on, and training on goes as the original's, bit for bit
    (the same compiled code on the same parameters, optimizer state and batches)."""
    ck = two_process_run["checkpoint"]
    assert ck["param_dtypes"] == ["torch.float32"] and len(ck["fp8_weights"]) == 4
    for name in ("model_state_dict", "optim_state_dict", "loaded_state_dict", "dcp_model_state_dict",
                 "dcp_optim_state_dict"):
        assert _plain(ck[name]), (name, ck[name])
        assert all(t[0] == "DTensor" for k, t in ck[name].items() if not k.endswith("step")), name
    assert _plain(ck["full_state_dict"]) and {t[0] for t in ck["full_state_dict"].values()} == {"Tensor"}
    assert "blocks.0.w1.weight" in ck["model_state_dict"] and "blocks.0.w1.weight.exp_avg" in ck["dcp_optim_state_dict"]
    assert ck["pickle_names_fp8pass"] is False and ck["weights_only_load"] is True
    assert ck["fresh_differs"]
    for prefix in ("restored", "dcp_restored", "meta_restored"):
        assert ck[f"{prefix}_params_equal"], prefix  # bit-exact, and the same local tensor types
        assert ck[f"{prefix}_fp8_weights"] == ck["fp8_weights"], prefix  # the wrapper is still in place
    assert ck["restored_optim_equal"] and ck["dcp_restored_optim_equal"]
    original, restored = ck["original_more"], ck["restored_more"]
    assert len(original["losses"]) == 2 and restored["losses"] == original["losses"]
    assert restored["gemms"] == original["gemms"] == [15, 15]
    # the restored model all-gathers in FP8 as the original does
    assert restored["bytes"] == original["bytes"]
    assert original["bytes"]["all_gather"] == two_process_run["fsdp_fp8_all_gather"]["bytes"]["all_gather"]
    assert ck["params_equal_after_more"]
