"""SwiGLU and the dual quantizations that read it: the fused kernels (fuse_swiglu) against what
runs without them (Inductor's SwiGLU kernel writing the BF16 product / gradients, then the dual
quantizer on each), at the Llama block's and the 1B model's MLP shapes, on one card.

    python benchmarks/swiglu_quant.py                  # the table
    python benchmarks/swiglu_quant.py --sweep          # also the Gluon kernel's warps / register cap

Printed per shape and direction: ms (median, triton.testing.do_bench) of the unfused pair and of
the fused kernel, and each one's bytes moved per second (the unfused pair's own traffic: its
BF16 tensors written and read back; the fused kernel's: inputs read, FP8 copies and scales written).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import versions  # noqa: E402

import fp8pass  # noqa: E402,F401
from fp8pass.kernels import reference  # noqa: E402
from fp8pass.kernels import triton_quantize_gluon as tqg  # noqa: E402
from fp8pass.kernels import triton_swiglu as tsw  # noqa: E402

SHAPES = [(16384, 14336), (8192, 5632)]  # Llama block (batch 4 x 4096, SwiGLU 14336); 1B (4 x 2048, 5632)


def bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="store_true", help="also time the Gluon kernel at other warps / register caps")
    args = p.parse_args()
    print(versions())
    ops = torch.ops.fp8pass
    swiglu = torch.compile(reference.swiglu)
    swiglu_bwd = torch.compile(reference.swiglu_backward)
    dual = ops.quantize_1x128_128x1
    configs = [("default", tqg._WARPS_SWIGLU, tqg._MAXNREG_SWIGLU, tqg._ROW_SPT)]
    if args.sweep:  # (name, warps, register cap, elements of a row per thread in the 1x128 pass)
        configs += [("8 warps, cap 128", 8, 128, 16), ("8 warps, cap 128, row 32", 8, 128, 32),
                    ("16 warps, row 32", 16, 128, 32), ("8 warps, no cap", 8, 0, 16)]
    print(f"{'M x K':>12} {'direction':>9} {'variant':>22} {'ms':>8} {'GB/s':>7}")
    for m, k in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        a, b, grad = (torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
        e = m * k * 2  # bytes of one bf16 tensor; its FP8 dual copies plus scales are ~e as well
        rows = []
        ms = bench(lambda: dual(swiglu(a, b)))
        rows.append(("forward", "unfused", ms, 2 * e + e + e + e))  # read a, b; write h; read h; write copies

        def unfused_bwd():
            ga, gb = swiglu_bwd(grad, a, b)
            return dual(ga), dual(gb)

        ms = bench(unfused_bwd)
        rows.append(("backward", "unfused", ms, 3 * e + 2 * e + 2 * e + 2 * e))
        # the forward's copies one at a time (recompute_fp8_activations: 1x128 in forward, 128x1 in
        # backward), pipelined (the default on sm90) and one tile per program
        for pipelined in (True, False):
            tqg._PIPELINED = pipelined
            tag = "pipelined" if pipelined else "per tile"
            rows.append(("fwd 1x128", tag, bench(lambda: ops.swiglu_quantize_1x128(a, b)), 2 * e + e // 2))
            rows.append(("fwd 128x1", tag, bench(lambda: ops.swiglu_quantize_128x1(a, b)), 2 * e + e // 2))
            rows.append(("grad_a", tag, bench(lambda: ops.swiglu_grad_a_quantize_1x128_128x1(grad, a, b)), 4 * e))
            rows.append(("grad_b", tag, bench(lambda: ops.swiglu_grad_b_quantize_1x128_128x1(grad, a)), 3 * e))
        tqg._PIPELINED = True
        if args.sweep:  # a third stage (where it fits in shared memory: not grad_a's three inputs)
            default_stages, tqg._PIPE_STAGES_SWIGLU = tqg._PIPE_STAGES_SWIGLU, 3
            for label, fn, nbytes in (("fwd 1x128", lambda: ops.swiglu_quantize_1x128(a, b), 2 * e + e // 2),
                                      ("grad_b", lambda: ops.swiglu_grad_b_quantize_1x128_128x1(grad, a), 3 * e)):
                rows.append((label, "pipelined, 3 stages", bench(fn), nbytes))
            tqg._PIPE_STAGES_SWIGLU = default_stages
        for name, warps, cap, row_spt in configs:
            tqg._WARPS_SWIGLU, tqg._MAXNREG_SWIGLU, tqg._ROW_SPT = warps, cap, row_spt
            try:
                ms_f = bench(lambda: ops.swiglu_quantize_1x128_128x1(a, b))
                ms_b = bench(lambda: (ops.swiglu_grad_a_quantize_1x128_128x1(grad, a, b),
                                      ops.swiglu_grad_b_quantize_1x128_128x1(grad, a)))
            except Exception as exc:  # a configuration that does not compile is reported, not fatal
                print(f"{m}x{k} {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                continue
            rows.append(("forward", f"fused, {name}", ms_f, 2 * e + e))
            rows.append(("backward", f"fused, {name}", ms_b, 5 * e + 2 * e))  # reads g, a, b; then g, a
        tqg._WARPS_SWIGLU, tqg._MAXNREG_SWIGLU, tqg._ROW_SPT = configs[0][1:]
        gluon = tsw._gluon_quantize
        tsw._gluon_quantize = lambda device: None  # the plain-Triton kernel (used off sm90)
        rows.append(("forward", "fused, plain Triton", bench(lambda: ops.swiglu_quantize_1x128_128x1(a, b)), 3 * e))
        rows.append(("backward", "fused, plain Triton",
                     bench(lambda: (ops.swiglu_grad_a_quantize_1x128_128x1(grad, a, b),
                                    ops.swiglu_grad_b_quantize_1x128_128x1(grad, a))), 7 * e))
        tsw._gluon_quantize = gluon
        for direction, variant, ms, nbytes in rows:
            print(f"{m:>6}x{k:<5} {direction:>9} {variant:>22} {ms:8.3f} {nbytes / ms / 1e6:7.0f}")


if __name__ == "__main__":
    main()
