"""Train an unmodified Hugging Face `transformers` LlamaForCausalLM in FP8 with backend="fp8".

    pip install transformers tqdm                # the optional extra: pip install -e ".[hf]"
    python examples/hf_llama.py                  # CPU-sized default: about 2 minutes on 2 cores
    python examples/hf_llama.py --experts 8 --intermediate 256   # a Qwen3-MoE instead, experts in FP8 (bf16)
    python examples/hf_llama.py --device cuda --hidden 2048 --layers 16 --heads 16 --kv-heads 8 \
        --intermediate 5632 --seq 2048 --batch 4 --steps 1000   # a GPU-sized run (bf16 on cuda)

The model comes from a `LlamaConfig` (random init, nothing is downloaded) and is the library's
own code; the only FP8-specific line is `torch.compile(model, backend="fp8")`. It learns to
predict the next byte of Python's standard library source (the corpus and batches of
examples/train_gpt.py, so vocab_size = 256). The run prints what the backend converted
(fp8pass.explain on one training step), then trains with a tqdm progress bar showing the loss,
then prints the loss curve and a held-out loss measured with the same compiled model in eval
mode under no_grad.

Hidden, intermediate and per-head K/V widths (heads or kv_heads times head_dim) must be
multiples of 128 for the projections to run in FP8 (the report names any that cannot).
`use_cache` is off, as usual for training (with it on, every training forward also builds and
returns a KV cache; the projections still convert, see tests/test_hf_llama.py).
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_gpt import batches, load_corpus  # noqa: E402  (same folder, not a package)


def make_model(hidden: int = 256, layers: int = 2, heads: int = 4, kv_heads: int = 2, intermediate: int = 768,
               seq: int = 128, seed: int = 0, device="cpu", dtype=torch.float32, experts: int = 0, top_k: int = 2):
    """A randomly initialized LlamaForCausalLM over bytes (vocab 256); nothing is downloaded. With
    experts > 0, a Qwen3MoeForCausalLM instead (Llama-like attention with q/k norms, each MLP a
    mixture of `experts` SwiGLU experts of width `intermediate`, top_k per token)."""
    import transformers

    if experts:
        config_cls, model_cls = transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM
        extra = dict(num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=intermediate,
                     head_dim=hidden // heads)
    else:
        config_cls, model_cls, extra = transformers.LlamaConfig, transformers.LlamaForCausalLM, {}
    config = config_cls(
        **extra,
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=seq,
        use_cache=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    return model_cls(config).to(device=device, dtype=dtype)


@torch.no_grad()
def evaluate(compiled, model, corpus: torch.Tensor, batch: int, seq: int, device, n_batches: int = 4) -> float:
    """Mean loss on fixed held-out windows, eval mode, no_grad, the same compiled object."""
    model.eval()
    losses = [compiled(input_ids=x, labels=x).loss.item() for x, _ in batches(corpus, batch, seq, n_batches, 1234, device)]
    model.train()
    return sum(losses) / len(losses)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--backend", default="fp8", help="torch.compile backend ('inductor' for the BF16/FP32 baseline)")
    p.add_argument("--corpus-mb", type=float, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-explain", action="store_true", help="skip the explain table (saves one compile)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--experts", type=int, default=0,
                   help="> 0: a Qwen3-MoE with this many experts per MLP instead of Llama (bf16; the experts' "
                        "grouped GEMMs in FP8: fp8pass.Config(grouped_gemms=True))")
    p.add_argument("--top-k", type=int, default=2, help="with --experts: experts per token")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="model.gradient_checkpointing_enable(), with the dynamo flag that lets torch.compile "
                        "trace the checkpointed layers (without it they run eagerly, in high precision)")
    args = p.parse_args(argv)

    import fp8pass
    from tqdm import tqdm

    # transformers runs MoE experts as torch._grouped_mm (what the pass converts) in bf16 only
    dtype_name = args.dtype or ("bf16" if args.device.startswith("cuda") or args.experts else "fp32")
    if args.experts and dtype_name != "bf16":
        p.error("--experts trains in bf16 (transformers' grouped experts under torch.compile)")
    fp8_config = fp8pass.Config(grouped_gemms=bool(args.experts))
    backend = fp8pass.backend(config=fp8_config) if args.backend == "fp8" else args.backend
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    corpus = load_corpus(int(args.corpus_mb * (1 << 20)))
    split = corpus.numel() * 9 // 10
    train_bytes, heldout_bytes = corpus[:split], corpus[split:]

    model = make_model(args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate, args.seq,
                       args.seed, args.device, dtype, args.experts, args.top_k)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        # each layer sets a context variable (transformers' kernels hub), a side effect dynamo does
        # not trace under torch.utils.checkpoint unless it may skip replaying it in backward
        torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    n_params = sum(p.numel() for p in model.parameters())
    moe = f", {args.experts} experts (top-{args.top_k})" if args.experts else ""
    print(f"{type(model).__name__}: {n_params / 1e6:.1f}M parameters, hidden {args.hidden}, {args.layers} layers, "
          f"{args.heads} heads ({args.kv_heads} KV), intermediate {args.intermediate}{moe}, seq {args.seq}; "
          f"{dtype_name} on {args.device}; corpus {corpus.numel() / 1e6:.1f} MB of standard-library source")

    report = None
    if not args.no_explain:
        x, _ = next(batches(train_bytes, args.batch, args.seq, 1, args.seed + 1, args.device))
        print("\nWhat backend='fp8' converts (fp8pass.explain on one training step):")
        report = fp8pass.explain(model, input_ids=x, labels=x, fp8_config=fp8_config)
        print(report)
        torch._dynamo.reset()

    compiled = torch.compile(model, backend=backend)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    model.train()
    print(f"\nTraining with backend={args.backend!r} ({args.steps} steps, batch {args.batch} x {args.seq} tokens):")
    losses, t0, t_first = [], time.perf_counter(), None
    bar = tqdm(batches(train_bytes, args.batch, args.seq, args.steps, args.seed + 1, args.device), total=args.steps,
               disable=args.quiet, unit="step", dynamic_ncols=True)
    for step, (x, _) in enumerate(bar):
        loss = compiled(input_ids=x, labels=x).loss  # the model shifts the labels itself
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if step == 0:
            t_first = time.perf_counter()
        if step % 5 == 0 or step == args.steps - 1:
            bar.set_postfix(loss=f"{losses[-1].item():.4f}")
    bar.close()
    losses = torch.stack(losses).float().tolist()
    elapsed = time.perf_counter() - (t_first or t0)
    tokens_per_s = (args.steps - 1) * args.batch * args.seq / elapsed if args.steps > 1 else float("nan")

    heldout = evaluate(compiled, model, heldout_bytes, args.batch, args.seq, args.device)
    window = max(1, args.steps // 10)
    print("\nLoss (mean over windows of steps):")
    for start in range(0, args.steps, window):
        chunk = losses[start:start + window]
        print(f"  {start:5d}-{start + len(chunk) - 1:<5d} {sum(chunk) / len(chunk):.4f}")
    finite = all(math.isfinite(v) for v in losses)
    print(f"held-out loss {heldout:.4f} (ln 256 = {math.log(256):.4f} at random init); "
          f"{tokens_per_s:,.0f} tokens/s after the first (compiling) step"
          + ("" if finite else "; NON-FINITE TRAINING LOSS SEEN"))
    return {"losses": losses, "heldout": heldout, "report": report, "tokens_per_s": tokens_per_s}


if __name__ == "__main__":
    main()
