"""Full training steps (forward, backward, AdamW step) of a ~1B Llama-style model: BF16
torch.compile vs backend="fp8", each with and without activation checkpointing, on one card.

    python benchmarks/train_step.py                 # ~1B: dim 2048, 16 layers, SwiGLU 5632, seq 2048, bf16
    python benchmarks/train_step.py --tiny          # a CPU-sized check of the whole script (fp32)
    python benchmarks/train_step.py --variants bf16,fp8 --batch 8
    python benchmarks/train_step.py --variants fp8 --timeline --cprofile 25   # where the GPU waits; the host's time

The model is examples/train_gpt.GPT (RMSNorm, fused-QKV causal SDPA attention, SwiGLU MLP,
untied head) with a 32000-token vocabulary: about 0.96B parameters at the default sizes.
Activation checkpointing wraps each block in torch.utils.checkpoint (non-reentrant), so the
backward recomputes the block's forward. Every variant starts from the same seed and trains on
the same random tokens; parameters, gradients and AdamW state stay in the model's dtype.

Printed per variant: compile time (first step), step time (steps back to back, as a training loop
runs them; also the median of steps each followed by a synchronize), the host's time to issue one
step that starts on an idle GPU ("host ms": near the step time, the host sets the loop's rate),
tokens/s, the peak memory during a step (total allocated, and above what was resident before the
step: parameters and optimizer state), the first step's loss, and the ratios to BF16 with the same
checkpointing.
Then the top kernels of one fp8 step (torch.profiler). On CPU (--tiny) times are wall-clock,
memory is not measured and the profile lists CPU ops.
"""

from __future__ import annotations

import argparse
import gc
import pathlib
import statistics
import sys
import time

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

import fp8pass
from fp8pass.config import parse_option

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))
from common import (dispatch_choices, host_enqueue_ms, host_timeline, peak_step_bytes, step_ms, top_kernels,  # noqa: E402
                    versions)
from train_gpt import GPT, GPTConfig  # noqa: E402

VARIANTS = {  # name: (torch.compile backend, activation checkpointing)
    "bf16": ("inductor", False),
    "fp8": ("fp8", False),
    "bf16+ac": ("inductor", True),
    "fp8+ac": ("fp8", True),
}


class Checkpointed(nn.Module):
    """A block whose activations are recomputed in backward instead of saved."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x):
        return checkpoint(self.block, x, use_reentrant=False)


def build(cfg: GPTConfig, ac: bool, device, dtype, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(cfg).to(device=device, dtype=dtype)
    if ac:
        model.blocks = nn.ModuleList(Checkpointed(b) for b in model.blocks)
    return model


def cpu_median_ms(step, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cpu_top_ops(step, n: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=n, max_name_column_width=70)


def run_variant(name: str, cfg: GPTConfig, args, device, dtype, tokens, targets) -> dict:
    backend, ac = VARIANTS[name]
    cuda = device.type == "cuda"
    model = build(cfg, ac, device, dtype, args.seed)
    if backend == "fp8" and args.fp8_options:
        compiled = torch.compile(model, backend=fp8pass.backend(mode=args.mode, **args.fp8_options))
    else:
        compiled = torch.compile(model, backend=backend, mode=args.mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=cuda or None)
    losses = []

    def step():
        loss = compiled(tokens, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    t0 = time.perf_counter()
    step()  # compiles forward and backward
    if cuda:
        torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    first_loss = losses[0].item()
    if args.gc_off:
        # as torchtitan's GC handler does: no automatic collection inside the timed steps
        gc.collect()
        gc.freeze()
        gc.disable()
    host_ms = float("nan")
    if cuda:
        ms, synced_ms = step_ms(step, warmup=args.warmup, iters=args.iters)
        host_ms = host_enqueue_ms(step, iters=args.iters)
        peak_above = peak_step_bytes(step)
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak_total = torch.cuda.max_memory_allocated()
        if args.mode == "reduce-overhead":
            # the CUDA graphs' memory pool is not in these counters (a 1B step read 5.36 GiB, its
            # parameters and optimizer state): no peak is reported rather than a wrong one
            peak_above = peak_total = float("nan")
    else:
        ms = synced_ms = cpu_median_ms(step, args.warmup, args.iters)
        peak_above = peak_total = float("nan")
    result = dict(name=name, compile_s=compile_s, ms=ms, synced_ms=synced_ms, host_ms=host_ms,
                  tokens_per_s=tokens.numel() / (ms / 1e3),
                  peak_total=peak_total, peak_above=peak_above, first_loss=first_loss,
                  last_loss=losses[-1].item())
    if name == args.profile:
        result["profile"] = top_kernels(step, args.top) if cuda else cpu_top_ops(step, args.top)
    if args.cprofile:
        result["cprofile"] = host_cprofile(step, args.cprofile, cuda)
    if args.timeline and cuda:
        try:  # a diagnostic: its failure must not cost the variant's row
            trace = args.trace_dir and f"{args.trace_dir}/train_step_{name}.json.gz"
            result["timeline"] = host_timeline(step, steps=5, trace_path=trace)
        except Exception as exc:  # noqa: BLE001
            result["timeline"] = f"failed: {type(exc).__name__}: {exc}"
    return result  # the model, optimizer and compiled code go with this frame (see release())


def host_cprofile(step, top: int, cuda: bool, steps: int = 5) -> str:
    """Where the host's time goes over `steps` steps, by function (self time): for a step the GPU
    finishes sooner than the host can issue it."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def release(device) -> None:
    """Free what the last variant held (model, grads, optimizer state, compiled graphs)."""
    gc.enable()
    gc.unfreeze()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def fmt_ms(ms: float) -> str:
    return "-" if ms != ms else f"{ms:.2f}"


def fmt_gib(b: float) -> str:
    return "-" if b != b else f"{b / 2**30:.2f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--hidden", type=int, default=5632, help="SwiGLU width (of each expert with --experts)")
    p.add_argument("--experts", type=int, default=0,
                   help="> 0: each block's MLP a mixture of this many SwiGLU experts (train_gpt.Experts; bf16; the "
                        "fp8 variants with grouped_gemms=true unless an --fp8-option says otherwise)")
    p.add_argument("--top-k", type=int, default=2, help="with --experts: experts per token")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--device", default=None, help="default: cuda if available (cpu with --tiny)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, from {list(VARIANTS)} (bf16 = the baseline in --dtype)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--profile", default="fp8", help="variant whose step is profiled ('none' to skip)")
    p.add_argument("--top", type=int, default=25, help="kernels listed in the profile")
    p.add_argument("--timeline", action="store_true",
                   help="per variant (GPU): the GPU's idle gaps and the host's CUDA runtime calls over 5 steps")
    p.add_argument("--cprofile", type=int, default=0, metavar="N",
                   help="also print a cProfile of the host over 5 steps of each variant, top N functions by self time")
    p.add_argument("--trace-dir", default=None,
                   help="with --timeline: also write each variant's profile there as a Chrome trace (.json.gz)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gc-off", action="store_true",
                   help="freeze and disable Python's garbage collector after compiling (collected between variants)")
    p.add_argument("--mode", default=None, help="torch.compile mode for every variant, e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--fp8-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an fp8pass.Config option for the fp8 variants (repeatable), e.g. fp8_saved_activations=true")
    p.add_argument("--explain", action="store_true", help="also print fp8pass.explain of the fp8 model (one more compile)")
    p.add_argument("--memory-budget", type=float, default=None, metavar="B",
                   help="torch.compile's own activation checkpointing for every variant: "
                        "torch._functorch.config.activation_memory_budget = B (0 < B < 1; the partitioner "
                        "recomputes in backward what it does not save)")
    p.add_argument("--tiny", action="store_true",
                   help="CPU-sized check: dim 128, 2 layers, SwiGLU 384, vocab 512, seq 128, batch 2, fp32")
    args = p.parse_args(argv)
    if args.tiny:
        args.dim, args.layers, args.heads, args.hidden, args.vocab, args.seq, args.batch = 128, 2, 2, 384, 512, 128, 2
        args.warmup, args.iters = 1, 3
        args.device = args.device or "cpu"
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # torch._grouped_mm (the experts) takes bf16 only under torch.compile
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" or args.experts else "fp32")
    if args.experts and dtype_name != "bf16":
        p.error("--experts runs in bf16 (torch._grouped_mm takes bf16 only under torch.compile)")
    if args.experts and not any(o.startswith("grouped_gemms=") for o in args.fp8_option):
        args.fp8_option.append("grouped_gemms=true")
    args.fp8_options = dict(map(parse_option, args.fp8_option))  # parsed once, for explain and every fp8 variant
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    import fp8pass  # (backend="fp8" itself comes from the entry point; this registers the ops and gives explain)

    cfg = GPTConfig(vocab_size=args.vocab, dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                    mlp_hidden=args.hidden, seq_len=args.seq, n_experts=args.experts, top_k=args.top_k)
    n_params = sum(p.numel() for p in GPT(cfg).parameters()) if args.tiny else None
    if n_params is None:
        with torch.device("meta"):
            n_params = sum(p.numel() for p in GPT(cfg).parameters())
    print(versions())
    print(f"model: {n_params / 1e9:.3f}B parameters (dim {args.dim}, {args.layers} layers, {args.heads} heads, "
          f"SwiGLU {args.hidden}{f', {args.experts} experts top-{args.top_k}' if args.experts else ''}, "
          f"vocab {args.vocab}); batch {args.batch} x seq {args.seq} = "
          f"{args.batch * args.seq} tokens/step; {dtype_name} on {device}; compile mode {args.mode or 'default'}; "
          f"AdamW step included; "
          f"step ms: {args.iters} steps back to back after {args.warmup} warmup (as a training loop runs them); "
          f"synced ms: the median of {args.iters} steps each followed by a synchronize", flush=True)

    gen = torch.Generator().manual_seed(args.seed + 1)
    data = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen)
    tokens, targets = data[:, :-1].to(device), data[:, 1:].to(device)

    if args.explain:
        model = build(cfg, False, device, dtype, args.seed)
        print("\nWhat backend='fp8' converts (fp8pass.explain on one training step):")
        print(fp8pass.explain(model, tokens, targets, fp8_config=fp8pass.Config(**args.fp8_options)), flush=True)
        del model
        release(device)

    fp8_call = (f"backend=fp8pass.backend({', '.join(args.fp8_option)})" if args.fp8_option else "backend='fp8'")
    print(f"\nvariants: {dtype_name} = torch.compile(model), fp8 = torch.compile(model, {fp8_call}), "
          f"+ac = activation checkpointing around each block", flush=True)
    header = (f"{'variant':>8} {'compile s':>9} {'step ms':>9} {'tokens/s':>10} {'peak GiB':>9} {'above GiB':>9} "
              f"{'loss@1':>7} {'synced ms':>9} {'host ms':>8}  fp8 vs {dtype_name} (same checkpointing)")
    print(header, flush=True)
    results = {}
    if args.memory_budget is not None:
        import torch._functorch.config as functorch_config

        functorch_config.activation_memory_budget = args.memory_budget
        print(f"activation_memory_budget = {args.memory_budget} for every variant", flush=True)
    for name in names:
        try:
            r = run_variant(name, cfg, args, device, dtype, tokens, targets)
        except Exception as exc:  # noqa: BLE001  (report and go on with the other variants)
            print(f"{name.replace('bf16', dtype_name):>8} FAILED: {type(exc).__name__}: {str(exc)[:400]}", flush=True)
            continue
        finally:
            release(device)
        results[name] = r
        base = results.get(name.replace("fp8", "bf16")) if name.startswith("fp8") else None
        vs = ""
        if base:
            vs = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x tokens/s (synced {base['synced_ms'] / r['synced_ms']:.2f}x)"
            if device.type == "cuda" and r["peak_total"] == r["peak_total"]:
                vs += (f", {r['peak_total'] / base['peak_total']:.2f}x peak, "
                       f"{r['peak_above'] / base['peak_above']:.2f}x above")
        label = name.replace("bf16", dtype_name)
        print(f"{label:>8} {r['compile_s']:9.1f} {r['ms']:9.2f} {r['tokens_per_s']:10,.0f} {fmt_gib(r['peak_total']):>9} "
              f"{fmt_gib(r['peak_above']):>9} {r['first_loss']:7.4f} {r['synced_ms']:9.2f} {fmt_ms(r['host_ms']):>8}  {vs}", flush=True)

    if device.type == "cuda":
        print(dispatch_choices(), flush=True)
    for r in results.values():
        if "cprofile" in r:
            print(f"\nHost cProfile of {r['name']} (5 steps, by self time):\n{r['cprofile']}")
    for r in results.values():
        if "timeline" in r:
            print(f"\nTimeline of {r['name']} ({r['name'].replace('bf16', dtype_name)}):\n{r['timeline']}")
    for r in results.values():
        if "profile" in r:
            what = "CUDA kernels" if device.type == "cuda" else "CPU ops"
            print(f"\nTop {what} of one {r['name']} training step (torch.profiler):")
            print(r["profile"])
    return results


if __name__ == "__main__":
    main()
