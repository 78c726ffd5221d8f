"""2-process worker for tests/test_distributed.py (run with torchrun, gloo, CPU).

Trains the same small model with backend="fp8" four ways from the same initial weights and the
same global batches: in one process (rank 0 alone, the reference), under DDP
(both orders: compile(DDP(m)) with DDPOptimizer's graph split, and DDP(compile(m))), under FSDP2
(fully_shard per block + root, whole model compiled) and FSDP2 with the FP8 weight all-gather;
and a bf16 variant with MoE blocks (experts' grouped GEMMs in FP8) in one process and under FSDP2.
The last run is then checkpointed (model and optimizer state dicts, torch.save) and loaded into
freshly prepared models, which go on training next to the original.
Rank 0 writes what the test checks to the JSON file given as argv[1]."""

from __future__ import annotations

import io
import json
import pathlib
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import fp8pass
import fp8pass.kernels.reference as reference
from fp8pass.distributed import CollectiveBytes, Fp8GatheredWeight, enable_fp8_all_gather, fp8_all_gather_weights

STEPS = 10
MORE_STEPS = 2  # after the checkpoint
MOE_STEPS = 6
BATCH, SEQ, DIM, HIDDEN, CLASSES = 4, 64, 256, 512, 128

GEMMS = [0]
GROUPED_GEMMS = [0]
_gemm = reference.gemm_blockwise
_grouped_gemm = reference.gemm_blockwise_grouped


def _counting_gemm(*args, **kwargs):  # the CPU kernel of torch.ops.fp8pass.gemm_blockwise
    GEMMS[0] += 1
    return _gemm(*args, **kwargs)


def _counting_grouped_gemm(*args, **kwargs):  # ... of torch.ops.fp8pass.gemm_blockwise_grouped
    GROUPED_GEMMS[0] += 1
    return _grouped_gemm(*args, **kwargs)


reference.gemm_blockwise = _counting_gemm
reference.gemm_blockwise_grouped = _counting_grouped_gemm


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.w1 = nn.Linear(DIM, HIDDEN)
        self.w2 = nn.Linear(HIDDEN, DIM)

    def forward(self, x):
        return x + self.w2(F.relu(self.w1(self.norm(x))))


class Tail(nn.Module):
    """`proj` has 384 rows (192 per shard on 2 ranks: the FP8 all-gather falls back for it);
    `head` is the output head (high precision)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(DIM, 384)
        self.head = nn.Linear(384, CLASSES)

    def forward(self, x):
        return self.head(F.gelu(self.proj(x)))


class Model(nn.Module):
    """Two residual blocks (w1: 512 rows, w2: 256 rows: multiples of 128 per shard on 2 ranks)
    and the tail. The tail is a module of its own because, under FSDP2, dynamo breaks the graph at
    each block's FSDP hooks, and a graph break inside the `for` loop makes it run the rest of
    this forward eagerly; submodules called from there still get compiled frames of their own."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block() for _ in range(2)])
        self.tail = Tail()

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.tail(x)


def batches(steps: int = STEPS + MORE_STEPS):
    """Fresh inputs every step; targets from a fixed linear teacher, so the loss has something to learn."""
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(DIM, CLASSES, generator=g)
    xs = [torch.randn(BATCH, SEQ, DIM, generator=g) for _ in range(steps)]
    return [(x, (x @ teacher).argmax(-1)) for x in xs]


BATCHES = batches()


def new_model():
    torch.manual_seed(0)
    return Model()


class MoEBlock(nn.Module):
    """A residual block whose MLP is examples/train_gpt.py's experts (4 of width 256, top-2)."""

    def __init__(self):
        super().__init__()
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
        from train_gpt import Experts, GPTConfig

        self.norm = nn.LayerNorm(DIM)
        self.experts = Experts(GPTConfig(dim=DIM, mlp_hidden=256, n_experts=4, top_k=2))

    def forward(self, x):
        return x + self.experts(self.norm(x))


class MoEModel(Model):
    """Model with MoE blocks, in bf16 (torch._grouped_mm under torch.compile takes bf16 only)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([MoEBlock() for _ in range(2)])

    def forward(self, x):
        return super().forward(x.bfloat16()).float()


def new_moe_model():
    torch.manual_seed(0)
    return MoEModel().bfloat16()


def train_moe(model, shard: bool) -> dict:
    """train() of an MoE model, its experts' grouped GEMMs in FP8, counting them per step."""
    GROUPED_GEMMS[0] = 0
    compiled = torch.compile(model, backend=fp8pass.backend(grouped_gemms=True))
    result = train(compiled, model.parameters(), shard=shard, data=BATCHES[:MOE_STEPS])
    return {**result, "grouped_gemms_per_step": GROUPED_GEMMS[0] / MOE_STEPS}


def train(step_model, params, shard: bool, opt=None, data=BATCHES[:STEPS]):
    """Losses of the global batch per step, FP8 GEMMs per step, collective bytes per step.
    `opt`: an AdamW of `params` to go on with (default: a new one)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    start = time.perf_counter()
    params = list(params)
    opt = opt or torch.optim.AdamW(params, lr=1e-3)
    losses, gemms = [], []
    with CollectiveBytes() as comm:
        for x, y in data:
            if shard:  # contiguous halves: each rank's 128 tokens are the same 128-token Wgrad groups
                n = BATCH // world
                x, y = x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]
            GEMMS[0] = 0
            loss = F.cross_entropy(step_model(x).flatten(0, 1), y.flatten())
            loss.backward()
            opt.step()
            grad_types = sorted({type(getattr(p.grad, "_local_tensor", p.grad)).__name__ for p in params})
            # the gradients DDP buckets and FSDP2 reduce-scatters: the parameter's dtype and layout
            layout_ok = all(p.grad.dtype == p.dtype and p.grad.shape == p.shape and p.grad.stride() == p.stride()
                            for p in params)
            opt.zero_grad()
            gemms.append(GEMMS[0])
            loss = loss.detach()
            if shard:
                dist.all_reduce(loss, op=dist.ReduceOp.SUM)
                loss /= world
            losses.append(loss.item())
        bytes_per_step = {"all_gather": comm.all_gather / len(data), "reduce_scatter": comm.reduce_scatter / len(data)}
    state_types = sorted({type(getattr(v, "_local_tensor", v)).__name__ for st in opt.state.values()
                          for v in st.values() if isinstance(v, torch.Tensor) and v.dim() > 0})
    param_types = sorted({type(getattr(p, "_local_tensor", p)).__name__ for p in params})
    if rank == 0:
        print(f"[dist_worker] {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return {"losses": losses, "gemms": gemms, "bytes": bytes_per_step, "grad_types": grad_types,
            "grad_layout_ok": layout_ok,
            "state_types": state_types, "param_types": param_types}


def gathered_weight_checks(model) -> dict:
    """Unshard blocks.0 and compare its gathered FP8 weights across ranks and with the full
    master weight quantized in one process."""
    block = model.blocks[0]
    block.unshard()
    out = {}
    for name in ("w1", "w2"):
        weight = getattr(block, name).weight
        out[f"{name}_type"] = type(weight).__name__
        if not isinstance(weight, Fp8GatheredWeight):
            continue
        data, scale = weight._data.view(torch.uint8), weight._scale
        all_data = [torch.empty_like(data) for _ in range(dist.get_world_size())]
        all_scale = [torch.empty_like(scale) for _ in range(dist.get_world_size())]
        dist.all_gather(all_data, data.contiguous())
        dist.all_gather(all_scale, scale.contiguous())
        out[f"{name}_same_on_every_rank"] = all(torch.equal(d, all_data[0]) for d in all_data) and all(
            torch.equal(s, all_scale[0]) for s in all_scale)
        shards = [torch.empty_like(weight_shard(model, name)) for _ in range(dist.get_world_size())]
        dist.all_gather(shards, weight_shard(model, name))
        full = torch.cat(shards)
        q, s = torch.ops.fp8pass.quantize_128x128(full)
        out[f"{name}_equals_full_quantization"] = torch.equal(q.view(torch.uint8), data) and torch.equal(s, scale)
    block.reshard()
    return out


def weight_shard(model, name) -> torch.Tensor:
    """The rank's shard of blocks.0.<name>.weight (the master tensor inside the wrapper)."""
    fsdp_param = next(p for p in model.blocks[0]._get_fsdp_state()._fsdp_param_group.fsdp_params
                      if p._module_info.module is getattr(model.blocks[0], name))
    local = fsdp_param.sharded_param._local_tensor
    return getattr(local, "_tensor", local).detach().clone()


def prepare_fp8_all_gather(model=None):
    """FSDP2 (per block + root) with the FP8 weight all-gather; returns the decisions."""
    from torch.distributed.fsdp import fully_shard

    model = model if model is not None else new_model()
    decisions = enable_fp8_all_gather(model)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model, decisions


def _local(t):
    return getattr(t, "_local_tensor", t)


def _types(state: dict) -> dict:
    """{key: [type, type of the local tensor, dtype]} of a (nested) state dict's tensors."""
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in _types(value).items()})
        elif isinstance(value, torch.Tensor):
            out[str(key)] = [type(value).__name__, type(_local(value)).__name__, str(value.dtype)]
    return out


def _same_params(a, b) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(
        type(_local(pa[k])) is type(_local(pb[k])) and pa[k].dtype == pb[k].dtype
        and torch.equal(_local(pa[k]) + 0, _local(pb[k]) + 0) for k in pa)


def _same_optimizer_state(a, b) -> bool:
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    return sa.keys() == sb.keys() and all(
        sa[i].keys() == sb[i].keys() and all(torch.equal(_local(sa[i][k]), _local(sb[i][k])) for k in sa[i])
        for i in sa)


def checkpoint_checks(model, opt) -> dict:
    """Save `model` (FSDP2 + FP8 all-gather, trained STEPS steps) and `opt`, load them into freshly
    prepared models, check what was saved and what was restored, then train the original and a
    restored copy MORE_STEPS more steps each."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict, set_model_state_dict,
                                                         set_optimizer_state_dict)

    out = {"param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
           "fp8_weights": fp8_all_gather_weights(model)}
    # 1. nn.Module / Optimizer state dicts through torch.save and torch.load(weights_only=True)
    model_sd, opt_sd = model.state_dict(), opt.state_dict()
    out["model_state_dict"], out["optim_state_dict"] = _types(model_sd), _types(opt_sd["state"])
    buf = io.BytesIO()
    torch.save({"model": model_sd, "optim": opt_sd}, buf)
    out["pickle_names_fp8pass"] = b"fp8pass" in buf.getvalue() or b"Fp8AllGatherWeight" in buf.getvalue()
    buf.seek(0)
    try:
        ckpt = torch.load(buf, weights_only=True)
        out["weights_only_load"] = True
    except Exception as e:  # noqa: BLE001  (reported to the test)
        out["weights_only_load"] = f"{type(e).__name__}: {str(e)[-300:]}"
        buf.seek(0)
        ckpt = torch.load(buf, weights_only=False)
    out["loaded_state_dict"] = _types(ckpt["model"])

    restored, _ = prepare_fp8_all_gather()
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    out["fresh_differs"] = not _same_params(restored, model)
    restored.load_state_dict(ckpt["model"])
    restored_opt.load_state_dict(ckpt["optim"])
    out["restored_params_equal"] = _same_params(restored, model)
    out["restored_optim_equal"] = _same_optimizer_state(restored_opt, opt)
    out["restored_fp8_weights"] = fp8_all_gather_weights(restored)

    # 2. torch.distributed.checkpoint's state dicts (sharded), set_* into another fresh model
    dcp_model, dcp_optim = get_model_state_dict(model), get_optimizer_state_dict(model, opt)
    out["dcp_model_state_dict"], out["dcp_optim_state_dict"] = _types(dcp_model), _types(dcp_optim["state"])
    other, _ = prepare_fp8_all_gather()
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-3)
    set_model_state_dict(other, dcp_model)
    set_optimizer_state_dict(other, other_opt, dcp_optim)
    out["dcp_restored_params_equal"] = _same_params(other, model)
    out["dcp_restored_optim_equal"] = _same_optimizer_state(other_opt, opt)
    out["dcp_restored_fp8_weights"] = fp8_all_gather_weights(other)

    # 3. a full state dict broadcast from rank 0 into a model built on the meta device
    #    (torch.distributed.checkpoint loads it with assign=True: the parameters are replaced)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    out["full_state_dict"] = _types(full)
    with torch.device("meta"):
        meta = Model()
    meta, _ = prepare_fp8_all_gather(meta)
    set_model_state_dict(meta, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    out["meta_restored_params_equal"] = _same_params(meta, model)
    out["meta_restored_fp8_weights"] = fp8_all_gather_weights(meta)

    # 4. both go on training (the same compiled code: torch.compile of an identical model)
    more = BATCHES[STEPS:]
    out["original_more"] = train(torch.compile(model, backend="fp8"), model.parameters(), True, opt, more)
    out["restored_more"] = train(torch.compile(restored, backend="fp8"), restored.parameters(), True,
                                 restored_opt, more)
    out["params_equal_after_more"] = _same_params(restored, model)
    return out


def main(out_path: str) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {}

    if rank == 0:  # the references; rank 1 goes on to wait in DDP's first collective meanwhile
        model = new_model()
        results["single"] = train(torch.compile(model, backend="fp8"), model.parameters(), shard=False)
        torch._dynamo.reset()
        results["single_moe"] = train_moe(new_moe_model(), shard=False)

    # which graphs the backend judged to be DDPOptimizer pieces whose outputs are not the model's
    import importlib
    backend = importlib.import_module("fp8pass.lowering.backend")
    pieces, judge = [], backend._outputs_are_model_outputs
    backend._outputs_are_model_outputs = lambda gm: pieces.append(judge(gm)) or pieces[-1]

    torch._dynamo.reset()
    model = new_model()
    ddp = DDP(model, bucket_cap_mb=1)  # small buckets: DDPOptimizer splits the graph inside a block
    results["ddp_compile_outside"] = train(torch.compile(ddp, backend="fp8"), ddp.parameters(), shard=True)

    backend._outputs_are_model_outputs = judge
    results["ddp_pieces_are_whole"] = pieces

    torch._dynamo.reset()
    model = new_model()
    ddp = DDP(torch.compile(model, backend="fp8"))
    results["ddp_compile_inside"] = train(ddp, ddp.parameters(), shard=True)

    torch._dynamo.reset()
    model = new_model()
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    results["fsdp"] = train(torch.compile(model, backend="fp8"), model.parameters(), shard=True)

    torch._dynamo.reset()
    model = new_moe_model()
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    results["fsdp_moe"] = train_moe(model, shard=True)

    torch._dynamo.reset()
    model, decisions = prepare_fp8_all_gather()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    results["fsdp_fp8_all_gather"] = train(torch.compile(model, backend="fp8"), model.parameters(), True, opt)
    results["decisions"] = [[d.weight, d.fp8, d.reason] for d in decisions]
    results["gathered"] = gathered_weight_checks(model)
    results["checkpoint"] = checkpoint_checks(model, opt)

    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
