"""Multi-GPU (or multi-process CPU) training with backend="fp8": DDP or FSDP2, optionally with
FSDP2's FP8 weight all-gather. The model is examples/train_gpt.py's GPT on the bytes of Python's
standard library; every rank takes its contiguous slice of the same global batch.

    torchrun --nproc-per-node 2 examples/train_fsdp.py                      # FSDP2 + FP8 all-gather (CPU: gloo)
    torchrun --nproc-per-node 2 examples/train_fsdp.py --mode ddp
    torchrun --nproc-per-node 2 examples/train_fsdp.py --fp8-all-gather off
    torchrun --nproc-per-node 2 examples/train_fsdp.py --device cuda --size gpu --steps 200
    torchrun --nproc-per-node 1 examples/train_fsdp.py --device cuda --size gpu --steps 200   # 1-GPU reference

On CUDA the master weights stay fp32 and compute runs in BF16 (FSDP2: MixedPrecisionPolicy
param_dtype=bf16, reduce_dtype=fp32; DDP and --mode single: autocast). --compile whole compiles
the model after sharding (dynamo breaks the graph at each block's FSDP hooks and compiles every
block's forward); --compile block compiles each block on its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_gpt import GPT, GPTConfig, batches, load_corpus  # noqa: E402

import fp8pass  # noqa: E402
from fp8pass.distributed import CollectiveBytes, enable_fp8_all_gather  # noqa: E402

SIZES = {
    # small enough for 2 CPU processes; every block weight has a multiple of 128 rows per shard on 2 ranks
    "cpu": dict(dim=256, n_layers=2, n_heads=4, mlp_hidden=768, seq_len=128),
    # one H200 pair: 8 Llama-3-8B-shaped blocks (dim 4096, SwiGLU 14336), about 1.75B parameters
    "gpu": dict(dim=4096, n_layers=8, n_heads=32, mlp_hidden=14336, seq_len=2048),
    # a quicker GPU size for the 200-step loss comparison
    "gpu-small": dict(dim=2048, n_layers=8, n_heads=16, mlp_hidden=5632, seq_len=2048),
}


def setup(device: str):
    """Process group from torchrun's environment (gloo on CPU, nccl on CUDA); a 1-process group when
    run without torchrun."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=os.environ.get("MASTER_PORT", "29517"))
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


@dataclasses.dataclass
class RunResult:
    label: str
    losses: list
    tokens_per_s: float
    peak_mem_gib: float  # max over ranks, CUDA only (0 on CPU)
    all_gather_bytes_per_step: float  # input bytes of one rank
    reduce_scatter_bytes_per_step: float
    fp8_all_gather_weights: int


def build(cfg: GPTConfig, mode: str, backend: str, fp8_all_gather: bool, compile_mode: str, device: str,
          bf16: bool, seed: int = 0, verbose: bool = False):
    """The model (same initial weights for every mode) wrapped for `mode` and compiled; returns
    (module to call, parameters for the optimizer, autocast flag, number of FP8-all-gathered weights)."""
    torch.manual_seed(seed)
    model = GPT(cfg).to(device)
    n_fp8 = 0
    autocast = False
    world = dist.get_world_size()
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if fp8_all_gather:
            decisions = enable_fp8_all_gather(model, world_size=world, verbose=verbose)
            n_fp8 = sum(d.fp8 for d in decisions)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
            MixedPrecisionPolicy()
        for block in model.blocks:
            fully_shard(block, mp_policy=mp)
            if compile_mode == "block":
                block.compile(backend=backend)
        fully_shard(model, mp_policy=mp)
        runner = torch.compile(model, backend=backend) if compile_mode == "whole" else model
    elif mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        autocast = bf16
        runner = torch.compile(DDP(model), backend=backend)
    else:  # single: no wrapper (run with one process)
        autocast = bf16
        runner = torch.compile(model, backend=backend)
    return runner, list(model.parameters()), autocast, n_fp8


def train(label: str, cfg: GPTConfig, mode: str, backend: str, fp8_all_gather: bool, compile_mode: str,
          device: str, bf16: bool, steps: int, global_batch: int, lr: float, corpus, warmup: int = 3,
          log_every: int = 0, seed: int = 0, verbose: bool = False) -> RunResult:
    """Train `steps` steps; tokens/s, memory and bytes are measured over the steps after `warmup`."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if global_batch % world:
        raise SystemExit(f"--batch {global_batch} must be a multiple of the world size {world}")
    torch._dynamo.reset()
    runner, params, autocast, n_fp8 = build(cfg, mode, backend, fp8_all_gather, compile_mode, device, bf16,
                                            seed, verbose)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    per_rank = global_batch // world
    comm = CollectiveBytes()
    losses, start = [], None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step, (x, y) in enumerate(batches(corpus, global_batch, cfg.seq_len, steps, seed, device)):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            comm.reset()
            comm.__enter__()
        x, y = x[rank * per_rank:(rank + 1) * per_rank], y[rank * per_rank:(rank + 1) * per_rank]
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = runner(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = loss.detach().float()
        dist.all_reduce(loss)  # the global batch's mean loss
        losses.append(loss.item() / world)
        if log_every and rank == 0 and (step % log_every == 0 or step == steps - 1):
            print(f"  [{label}] step {step:4d}  loss {losses[-1]:.4f}", flush=True)
    if device == "cuda":
        torch.cuda.synchronize()
    timed = steps - warmup
    elapsed = time.perf_counter() - start if start is not None else float("nan")
    comm.__exit__(None, None, None)
    # on the device: NCCL reduces CUDA tensors only
    peak = torch.tensor(torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0, device=device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return RunResult(label, losses, timed * global_batch * cfg.seq_len / elapsed if timed > 0 else float("nan"),
                     peak.item(), comm.all_gather / max(timed, 1), comm.reduce_scatter / max(timed, 1), n_fp8)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["fsdp", "ddp", "single"], default="fsdp")
    p.add_argument("--fp8-all-gather", choices=["on", "off"], default="on", help="FSDP2 only")
    p.add_argument("--backend", default="fp8", help="'fp8', or 'inductor' for the BF16 baseline")
    p.add_argument("--compile", dest="compile_mode", choices=["whole", "block"], default="whole")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="default: cpu, or gpu on --device cuda")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="compute dtype; default bf16 on cuda")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=None, help="global batch (sequences); default 8 cpu, 16 gpu")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--json", default=None, help="write the result (losses, tokens/s, bytes) here (rank 0)")
    args = p.parse_args()

    rank, world = setup(args.device)
    size = args.size or ("gpu" if args.device == "cuda" else "cpu")
    cfg = GPTConfig(**SIZES[size])
    bf16 = (args.dtype or ("bf16" if args.device == "cuda" else "fp32")) == "bf16"
    batch = args.batch or (16 if args.device == "cuda" else 8)
    corpus = load_corpus()
    if rank == 0:
        print(f"{args.mode} on {world} x {args.device}, backend={args.backend!r}, "
              f"fp8 all-gather {args.fp8_all_gather if args.mode == 'fsdp' else 'n/a'}, {cfg}, "
              f"global batch {batch} x {cfg.seq_len}, {'bf16' if bf16 else 'fp32'} compute", flush=True)
    result = train(args.mode, cfg, args.mode, args.backend, args.fp8_all_gather == "on", args.compile_mode,
                   args.device, bf16, args.steps, batch, args.lr, corpus, log_every=args.log_every,
                   seed=args.seed, verbose=rank == 0)
    if rank == 0:
        print(f"final loss {result.losses[-1]:.4f}; {result.tokens_per_s:,.0f} tokens/s; "
              f"all-gather {result.all_gather_bytes_per_step / 2**20:.2f} MiB/step/rank; "
              f"reduce-scatter {result.reduce_scatter_bytes_per_step / 2**20:.2f} MiB/step/rank; "
              f"peak {result.peak_mem_gib:.2f} GiB", flush=True)
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(dataclasses.asdict(result), indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
