"""FSDP2 with backend="fp8": BF16 vs FP8 vs FP8 + FP8 weight all-gather, in one launch.

    torchrun --nproc-per-node 2 benchmarks/fsdp.py                         # 2 GPUs: the table
    torchrun --nproc-per-node 2 benchmarks/fsdp.py --device cpu --steps 6  # gloo CPU smoke (small model)

Each configuration trains the same model (examples/train_fsdp.py's GPT, fully_shard per block
+ root, fp32 master weights, BF16 compute through MixedPrecisionPolicy on CUDA) from the same
weights on the same global batches; tokens/s, peak memory (max over ranks) and the bytes one
rank puts into all-gathers / reduce-scatters are measured over the steps after --warmup.

Loss comparison (FSDP2 + FP8 all-gather on N GPUs vs FP8 on one GPU, same global batch):

    torchrun --nproc-per-node 1 benchmarks/fsdp.py --loss-run 200 --json single.json
    torchrun --nproc-per-node 2 benchmarks/fsdp.py --loss-run 200 --json fsdp2.json --reference single.json

(--loss-run trains FP8 FSDP2 for that many steps: with FP8 all-gather on more than one rank,
without it on one rank, where FSDP2 does not shard; --reference prints the relative difference of
the final losses, averaged over the last --loss-window steps, and PASS/FAIL at --tolerance.)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import sys

import torch
import torch.distributed as dist

from common import versions

_EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "train_fsdp.py"
_spec = importlib.util.spec_from_file_location("train_fsdp", _EXAMPLE)
train_fsdp = importlib.util.module_from_spec(_spec)
sys.modules["train_fsdp"] = train_fsdp
_spec.loader.exec_module(train_fsdp)

CONFIGS = [  # label, backend, FP8 all-gather (the baseline computes in bf16 on CUDA, fp32 on the CPU)
    ("baseline FSDP2 (inductor)", "inductor", False),
    ("fp8 FSDP2", "fp8", False),
    ("fp8 FSDP2 + fp8 all-gather", "fp8", True),
]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=sorted(train_fsdp.SIZES), default=None,
                   help="default: gpu (gpu-small with --loss-run) on cuda, cpu on cpu")
    p.add_argument("--steps", type=int, default=None, help="steps per configuration (default 30 cuda, 6 cpu)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5 cuda, 2 cpu)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default 16 cuda, 8 cpu)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--compile", dest="compile_mode", choices=["whole", "block"], default="whole")
    p.add_argument("--only", default=None, help="comma-separated config numbers to run (1=bf16, 2=fp8, 3=fp8+ag)")
    p.add_argument("--loss-run", type=int, default=0, metavar="STEPS", help="the loss comparison run instead")
    p.add_argument("--fp8-all-gather", choices=["auto", "on", "off"], default="auto",
                   help="for --loss-run: auto = on with more than one rank")
    p.add_argument("--reference", default=None, help="JSON of the reference --loss-run to compare with")
    p.add_argument("--loss-window", type=int, default=10)
    p.add_argument("--tolerance", type=float, default=0.005)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    rank, world = train_fsdp.setup(args.device)
    gpu = args.device == "cuda"
    size = args.size or (("gpu-small" if args.loss_run else "gpu") if gpu else "cpu")
    cfg = train_fsdp.GPTConfig(**train_fsdp.SIZES[size])
    batch = args.batch or (16 if gpu else 8)
    corpus = train_fsdp.load_corpus()
    if rank == 0:
        print(f"{versions(args.device)}, {world} ranks")
        print(f"model {cfg}; global batch {batch} x {cfg.seq_len} tokens; {'bf16' if gpu else 'fp32'} compute, "
              f"fp32 master weights; compile {args.compile_mode}", flush=True)

    if args.loss_run:
        fp8_ag = {"on": True, "off": False, "auto": world > 1}[args.fp8_all_gather]
        label = f"fp8 FSDP2{' + fp8 all-gather' if fp8_ag else ''} x {world}"
        r = train_fsdp.train(label, cfg, "fsdp", "fp8", fp8_ag, args.compile_mode, args.device, gpu,
                             args.loss_run, batch, args.lr, corpus, warmup=min(5, args.loss_run - 1),
                             log_every=max(1, args.loss_run // 20), verbose=False)
        results = [r]
        if rank == 0:
            window = r.losses[-args.loss_window:]
            print(f"{label}: final loss {r.losses[-1]:.4f}, mean of last {len(window)} {sum(window) / len(window):.4f}")
            if args.reference:
                ref = json.loads(pathlib.Path(args.reference).read_text())[0]
                ref_window = ref["losses"][-args.loss_window:]
                a, b = sum(window) / len(window), sum(ref_window) / len(ref_window)
                rel = abs(a - b) / abs(b)
                print(f"vs {ref['label']}: {b:.4f} -> relative difference {rel * 100:.3f}% "
                      f"({'PASS' if rel <= args.tolerance else 'FAIL'} at {args.tolerance * 100:.2f}%); "
                      f"final step {r.losses[-1]:.4f} vs {ref['losses'][-1]:.4f}")
    else:
        steps = args.steps or (30 if gpu else 6)
        warmup = args.warmup if args.warmup is not None else (5 if gpu else 2)
        chosen = [CONFIGS[int(i) - 1] for i in args.only.split(",")] if args.only else CONFIGS
        results = []
        for label, backend, fp8_ag in chosen:
            if rank == 0:
                print(f"-- {label}", flush=True)
            results.append(train_fsdp.train(label, cfg, "fsdp", backend, fp8_ag, args.compile_mode, args.device,
                                            gpu, steps, batch, args.lr, corpus, warmup=warmup))
            if gpu:
                torch.cuda.empty_cache()
        if rank == 0:
            base = results[0]
            print(f"\n{'configuration':30s} {'tokens/s':>12s} {'vs first':>8s} {'peak GiB':>9s} "
                  f"{'all-gather MiB/step/rank':>25s} {'vs first':>8s} {'RS MiB/step/rank':>17s} "
                  f"{'loss@' + str(steps):>10s}")
            for r in results:
                print(f"{r.label:30s} {r.tokens_per_s:12,.0f} {r.tokens_per_s / base.tokens_per_s:8.2f} "
                      f"{r.peak_mem_gib:9.2f} {r.all_gather_bytes_per_step / 2**20:25.2f} "
                      f"{r.all_gather_bytes_per_step / max(base.all_gather_bytes_per_step, 1):8.2f} "
                      f"{r.reduce_scatter_bytes_per_step / 2**20:17.2f} {r.losses[-1]:10.4f}")
            n_fp8 = max(r.fp8_all_gather_weights for r in results)
            print(f"({n_fp8} weights all-gathered in FP8; all-gather bytes are what one rank sends per step, "
                  f"forward and backward re-gathers included)")
    if rank == 0 and args.json:
        pathlib.Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
