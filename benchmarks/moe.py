"""MoE experts in FP8 on one card: the grouped GEMMs, and an experts layer's fwd+bwd.

    python benchmarks/moe.py [--configs qwen3-30b,mixtral,deepseek-v3-ep8] [--no-layer | --no-table] [--imbalance 0.3]
    python benchmarks/moe.py --tiny      # a CPU-sized check of the whole script (CI runs it)

1. Grouped GEMMs, per role of an expert's projection (Fprop x @ W_g^T, Dgrad dY @ W_g, Wgrad
   dY^T @ x per group of tokens), TFLOP/s: BF16 torch._grouped_mm beside fp8pass's Triton grouped
   kernels on operands quantized beforehand: the op (fp8pass.gemm_blockwise_grouped, on sm90 the
   faster of the plain-Triton and the warp-specialized Gluon kernel, timed at its first call), then
   each kernel by itself, for both projections of the config's experts
   (gate_up: dim -> 2 * hidden, down: hidden -> dim).
2. The experts layer of examples/train_gpt.py (router, grouped gate_up, SwiGLU, grouped down,
   weighted sum): fwd+bwd ms and peak memory, BF16 torch.compile beside backend="fp8" with
   grouped_gemms=True (off by default until these figures exist), and on CUDA again with every
   grouped GEMM on the plain-Triton kernel ("fp8 plain"), one run,
   gradient SQNR of the fp8 run against the BF16 one (same routing: the router reads the layer's
   input in BF16 in both).

Routing of the GEMM table: tokens x top_k rows spread over the experts evenly, or with --imbalance f,
group sizes with a coefficient of variation of about f (group_ends); the same groups for both
columns. The layer routes by its own (random) router.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))

from common import peak_step_bytes, sqnr_db, step_ms, versions  # noqa: E402

# (dim, expert hidden, experts, top_k, tokens): published model shapes, tokens of one micro-batch
CONFIGS = {
    "qwen3-30b": (2048, 768, 128, 8, 8192),     # Qwen3-30B-A3B
    "mixtral": (4096, 14336, 8, 2, 8192),       # Mixtral-8x7B
    # DeepSeek-V3's routed experts: the 32 of one GPU under 8-way expert parallelism (all 256 would
    # not fit one card with their gradients and FP8 copies)
    "deepseek-v3-ep8": (7168, 2048, 32, 8, 4096),
}
TINY = (256, 128, 4, 2, 160)  # --tiny: one small config, on the CPU without a GPU


def group_ends(rows: int, experts: int, imbalance: float, device) -> torch.Tensor:
    """torch._grouped_mm's offs for `rows` routed rows: even groups, or (imbalance f > 0) group sizes
    drawn from a symmetric Dirichlet of concentration 1/f^2, whose coefficient of variation is ~f."""
    if imbalance <= 0:
        sizes = torch.full((experts,), rows // experts)
        sizes[: rows - int(sizes.sum())] += 1
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            share = torch.distributions.Dirichlet(torch.full((experts,), 1.0 / imbalance ** 2)).sample()
        sizes = (share * rows).floor().long()
        sizes[0] += rows - int(sizes.sum())
    return torch.cumsum(sizes, 0).to(torch.int32).to(device)


def time_ms(fn, device: str) -> float:
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=50)
    fn()  # the CPU (--tiny): wall clock, the median of 3 after one untimed call
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_gemms(name: str, dim: int, hidden: int, experts: int, top_k: int, tokens: int, imbalance: float,
                device: str) -> None:
    ops = torch.ops.fp8pass  # the Triton kernels on CUDA, the reference on the CPU

    rows = tokens * top_k
    offs = group_ends(rows, experts, imbalance, device)
    biggest = int((offs - torch.cat([offs.new_zeros(1), offs[:-1]])).max())
    print(f"\n{name}: dim {dim}, expert hidden {hidden}, {experts} experts, top-{top_k}, {tokens} tokens "
          f"-> {rows} routed rows (largest group {biggest}, mean {rows / experts:.0f})")
    print(f"{'projection':>10} {'role':>6} {'S x K x N':>22} {'bf16 TFLOP/s':>13} {'fp8 TFLOP/s':>12} {'fp8/bf16':>9}"
          + (f" {'plain Triton':>13} {'WS Gluon':>9}" if device == "cuda" else ""))
    for proj, (k, n) in (("gate_up", (dim, 2 * hidden)), ("down", (hidden, dim))):
        torch.manual_seed(0)
        x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(experts, n, k, device=device, dtype=torch.bfloat16) / k ** 0.5
        dy = torch.randn(rows, n, device=device, dtype=torch.bfloat16)
        qw, sw = ops.quantize_128x128(w)
        qw_kmajor = qw.transpose(1, 2).contiguous().transpose(1, 2)  # Dgrad's operand as the pass emits it
        qx, sx, qx_t, sx_t = ops.quantize_1x128_128x1(x)
        qd, sd, qd_t, sd_t = ops.quantize_1x128_128x1(dy)
        operands = {"fprop": (qx, sx, qw.transpose(1, 2), sw.transpose(1, 2)), "dgrad": (qd, sd, qw_kmajor, sw),
                    "wgrad": (qd_t, sd_t, qx_t.t(), sx_t.t())}
        roles = {
            "fprop": (lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=offs), (rows, k, n)),
            "dgrad": (lambda: torch._grouped_mm(dy, w, offs=offs), (rows, n, k)),
            "wgrad": (lambda: torch._grouped_mm(dy.t(), x, offs=offs), (n, rows, k)),
        }
        for role, (bf16, (m_, k_, n_)) in roles.items():
            # the op (on CUDA the faster kernel, chosen at its first call), then each kernel by itself
            def fp8(ab=operands[role]):
                return ops.gemm_blockwise_grouped(*ab, offs, torch.bfloat16)
            flops = 2 * m_ * k_ * n_
            try:
                t_bf16 = time_ms(bf16, device)
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"{proj:>10} {role:>6} bf16 FAILED: {type(exc).__name__}: {str(exc)[:200]}")
                t_bf16 = float("nan")
            t_fp8 = time_ms(fp8, device)
            line = (f"{proj:>10} {role:>6} {f'{m_}x{k_}x{n_}':>22} {flops / t_bf16 / 1e9:13.1f} "
                    f"{flops / t_fp8 / 1e9:12.1f} {t_bf16 / t_fp8:8.2f}x")
            if device == "cuda":
                line += "".join(f" {kernel_tflops(operands[role], offs, kernel, flops, device):>{width}}"
                                for kernel, width in (("triton", 13), ("ws", 9)))
            print(line, flush=True)


def kernel_tflops(operands, offs, kernel: str, flops: int, device: str) -> str:
    """TFLOP/s of one grouped kernel by itself ("triton" or "ws"), or "-" where it does not apply."""
    from fp8pass.kernels import triton_gemm_gluon, triton_gemm_grouped

    a, sa, b, sb = operands
    if kernel == "ws" and not triton_gemm_gluon.grouped_supports(a, b):
        return "-"
    out = triton_gemm_grouped.gemm_blockwise_grouped(a, sa, b, sb, offs, torch.bfloat16, kernel=kernel)
    run = lambda: triton_gemm_grouped.gemm_blockwise_grouped(a, sa, b, sb, offs, torch.bfloat16,  # noqa: E731
                                                             out=out, kernel=kernel)
    return f"{flops / time_ms(run, device) / 1e9:.1f}"


def bench_layer(name: str, dim: int, hidden: int, experts: int, top_k: int, tokens: int, device: str) -> None:
    import fp8pass
    from fp8pass.kernels import triton_gemm_grouped
    from train_gpt import Experts, GPTConfig

    torch.manual_seed(0)
    layer = Experts(GPTConfig(dim=dim, mlp_hidden=hidden, n_experts=experts, top_k=top_k)).to(device).bfloat16()
    x = torch.randn(tokens, dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(tokens, dim, device=device, dtype=torch.bfloat16)
    flops = 3 * 2 * tokens * top_k * 3 * dim * hidden  # three projections' worth per routed row, fwd + bwd
    print(f"\n{name} experts layer fwd+bwd ({tokens} tokens; routing by the layer's random router)")
    print(f"{'variant':>14} {'ms':>8} {'TFLOP/s':>8} {'peak MiB':>9} {'vs bf16':>8}")
    results, grads = {}, {}
    # the layer alone is its graph's output: its down projection would count as the output head
    fp8 = fp8pass.backend(fp8_output_head=True, grouped_gemms=True)
    variants = {"bf16 compiled": ("inductor", None), "fp8": (fp8, None)}
    if device == "cuda":  # the grouped GEMMs all on the plain-Triton kernel (the op's choice above)
        variants["fp8 plain"] = (fp8, "triton")
    for variant, (backend, kernel) in variants.items():
        triton_gemm_grouped.DEFAULT_KERNEL = kernel or "auto"
        torch._dynamo.reset()
        model = torch.compile(layer, backend=backend)

        def step():
            x.grad = None
            for p in layer.parameters():
                p.grad = None
            model(x).backward(dy)

        try:
            ms = step_ms(step)[0] if device == "cuda" else time_ms(step, device)
            step()
            grads[variant] = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
            x.grad = None
            for p in layer.parameters():
                p.grad = None
            peak = peak_step_bytes(step) / 2 ** 20 if device == "cuda" else float("nan")
        except Exception as exc:  # noqa: BLE001
            print(f"{variant:>14} FAILED: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        finally:
            triton_gemm_grouped.DEFAULT_KERNEL = "auto"
        results[variant] = ms
        ratio = f"{results['bf16 compiled'] / ms:.2f}x" if variant != "bf16 compiled" and "bf16 compiled" in results else ""
        print(f"{variant:>14} {ms:8.3f} {flops / ms / 1e9:8.0f} {peak:9.0f} {ratio:>8}", flush=True)
    names = ["x"] + [n for n, _ in layer.named_parameters()]
    for variant in [v for v in grads if v != "bf16 compiled" and "bf16 compiled" in grads]:
        print(f"{variant} vs bf16 compiled, gradient SQNR dB: " + ", ".join(
            f"{n} {sqnr_db(b, f):.1f}" for n, b, f in zip(names, grads["bf16 compiled"], grads[variant])))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {sorted(CONFIGS)}")
    p.add_argument("--imbalance", type=float, default=0.0,
                   help="0: even groups; f > 0: group sizes with a coefficient of variation of about f")
    p.add_argument("--no-layer", dest="layer", action="store_false", help="only the GEMM table")
    p.add_argument("--no-table", dest="table", action="store_false", help="only the experts layer")
    p.add_argument("--tokens", type=int, default=None, help="override the configs' token count")
    p.add_argument("--tiny", action="store_true", help=f"one CPU-sized config {TINY} (on the GPU if there is one)")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        p.error("needs a CUDA device (or --tiny, a CPU-sized check)")
    import fp8pass  # noqa: F401  (registers the ops and their CUDA kernels)

    print(versions(device))
    configs = {"tiny": TINY} if args.tiny else CONFIGS
    for name in (["tiny"] if args.tiny else args.configs.split(",")):
        if name not in configs:
            p.error(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
        dim, hidden, experts, top_k, tokens = configs[name]
        tokens = args.tokens or tokens
        if args.table:
            bench_gemms(name, dim, hidden, experts, top_k, tokens, args.imbalance, device)
        if args.layer:
            bench_layer(name, dim, hidden, experts, top_k, tokens, device)


if __name__ == "__main__":
    sys.exit(main())
