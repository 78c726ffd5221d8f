"""Llama-style block fwd+bwd: BF16 eager, BF16 torch.compile and backend="fp8", on one card.

    python benchmarks/block.py [--dim 4096 --heads 32 --hidden 14336 --batch 4 --seq 4096] [--profile] [--memory]
        [--cudagraphs]

Block: RMSNorm -> attention (fused QKV projection, SDPA in BF16, output projection) -> residual;
RMSNorm -> SwiGLU MLP -> residual. Prints median fwd+bwd time, kernels per step and the peak
memory of a step above what was allocated before it; --memory also lists what is live at each
compiled variant's peak, by the line that allocated it.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import (grads_after, kernel_count, step_ms, peak_breakdown, peak_step_bytes, sqnr_db, top_kernels,
                    versions)


class LlamaBlock(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.RMSNorm(dim)
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.mlp_norm = nn.RMSNorm(dim)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.wqkv(self.attn_norm(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(a.transpose(1, 2).reshape(b, t, d))
        h = self.mlp_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--hidden", type=int, default=14336)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--fp8-option", action="append", default=[], metavar="KEY=VALUE",
                   help="adds a variant 'fp8 +options': backend='fp8' with these fp8pass.Config options (repeatable)")
    p.add_argument("--fused", action="store_true", help="adds the 'fp8 fused' variant (fuse_quantization=True)")
    p.add_argument("--memory", action="store_true", help="what is live at each variant's peak (allocator trace)")
    p.add_argument("--cudagraphs", action="store_true",
                   help="also bf16 compiled and fp8 under CUDA graphs (mode='reduce-overhead')")
    args = p.parse_args(argv)
    import fp8pass  # noqa: F401
    from fp8pass.config import parse_option

    print(versions())
    torch.manual_seed(0)
    block = LlamaBlock(args.dim, args.heads, args.hidden).to("cuda", torch.bfloat16)
    x = torch.randn(args.batch, args.seq, args.dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)

    def make_step(model):
        def step():
            # grads set to None first, as optimizer.zero_grad() does (no accumulation kernels; under
            # CUDA graphs, no reading of a previous replay's outputs)
            block.zero_grad(set_to_none=True)
            x.grad = None
            torch.compiler.cudagraph_mark_step_begin()
            model(x).backward(dy)
        return step

    print("ms: steps back to back (as a training loop runs them); synced: each step followed by a synchronize")
    print(f"{'variant':>14} {'ms':>8} {'kernels':>8} {'peak MiB':>9} {'synced ms':>9} {'vs bf16 compiled':>17}")
    ref, ref_grads = None, None
    watched = [x, block.wqkv.weight, block.w2.weight]
    variants = [("bf16 eager", block), ("bf16 compiled", torch.compile(block)),
                ("fp8", torch.compile(block, backend="fp8"))]
    if args.fp8_option:
        options = dict(map(parse_option, args.fp8_option))
        variants.append(("fp8 +options", torch.compile(block, backend=fp8pass.backend(**options))))
    if args.fused:  # the quantizations generated inside the norm/SwiGLU kernels by Inductor
        variants.append(("fp8 fused", torch.compile(block, backend=fp8pass.backend(fuse_quantization=True))))
    if args.cudagraphs:  # fp8 cg is compared with bf16 compiled cg
        variants += [("bf16 compiled cg", torch.compile(block, mode="reduce-overhead")),
                     ("fp8 cg", torch.compile(block, backend=fp8pass.backend(mode="reduce-overhead")))]
    for name, model in variants:
        step = make_step(model)
        try:
            # cudaMalloc / cudaFree while timing: a cudaFree synchronizes the device, so a step that
            # frees cached blocks to fit its allocations loses the host's lead (back-to-back = synced);
            # step_ms times only after a step that needed no cudaMalloc (common.py)
            churn = {}
            (ms, synced_ms), kernels = step_ms(step, stats=churn), kernel_count(step)
            block.zero_grad(set_to_none=True)  # the peak from a state without grads (as after zero_grad)
            x.grad = None
            peak = peak_step_bytes(step) / 2**20
        except Exception as exc:  # noqa: BLE001
            print(f"{name:>14} FAILED: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        if name.startswith("bf16 compiled"):
            ref = (ms, peak, synced_ms)
        # (a CUDA-graph variant allocates from its graph pool outside the step: no per-step peak)
        cg = name.endswith(" cg")
        extra = ""
        if ref and name.startswith("fp8"):
            extra = f"{ref[0] / ms:.2f}x time" + ("" if cg else f", {peak / ref[1]:.2f}x memory")
            extra += f" (synced {ref[2] / synced_ms:.2f}x)"
        print(f"{name:>14} {ms:8.2f} {kernels:8d} {'n/a' if cg else f'{peak:.0f}':>9} {synced_ms:9.2f} {extra:>17}",
              flush=True)
        if churn["settle_steps"] > 1 or churn["num_device_alloc"] or churn["num_device_free"]:
            print(f"  {name}: {churn['settle_steps']} steps after the warm-up until one made no cudaMalloc; while "
                  f"timed, {churn['num_device_alloc']} cudaMalloc, {churn['num_device_free']} cudaFree, "
                  f"{churn['num_alloc_retries']} allocation retries", flush=True)
        grads = grads_after(step, watched)
        if name.startswith("bf16 compiled"):
            ref_grads = grads
        elif name.startswith("fp8") and ref_grads is not None:
            print(f"  {name} vs bf16 compiled, SQNR dB of grads (x, wqkv, w2): "
                  + ", ".join(f"{sqnr_db(r, g):.1f}" for r, g in zip(ref_grads, grads)), flush=True)
        if args.profile and (name.startswith("fp8") or name == "bf16 compiled"):
            print(top_kernels(step, n=30))
        if args.memory and name != "bf16 eager" and not cg:
            print(peak_breakdown(step), flush=True)
        block.zero_grad(set_to_none=True)
        x.grad = None


if __name__ == "__main__":
    sys.exit(main())
