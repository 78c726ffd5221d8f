"""FP8 GEMM and quantization benchmark (issue 3). One run prints, on the same card:

  GEMM, TFLOP/s (2*M*N*K / median time, triton.testing.do_bench), for each role and shape:
    bf16      cuBLAS BF16 (torch.mm) on the same logical operands and layouts
    cublas    cuBLAS blockwise FP8 (torch scaled_mm), kernel only, on operands already in the
              layout it needs (A row-major, B column-major)
    cublas+cp the same, starting from the operands as the graph pass emits them (transposed
              FP8 copies included in the time; equal to `cublas` for Fprop)
    tl        the plain-Triton kernel on the operands as emitted (strided views, no copies)
    gluon     the Gluon sm90 kernel (two partials in flight), kernel only, on K-major operands
    ws        the warp-specialized persistent Gluon kernel (a TMA producer and two consumer
              warpgroups), kernel only, on K-major operands
    gluon+cp  the faster Gluon kernel starting from the operands as emitted (copies timed)
    dispatch  torch.ops.fp8pass.gemm_blockwise (the dispatcher's choice, in brackets)
  and calc_diff of the dispatched result against the BF16-input FP32 reference.
  Roles (operands exactly as the pass emits them; W is the [out, in] weight):
    Fprop  y = x @ W^T : A = x 1x128 [M,K],  B = W^T view, b_scale = (128x128 scale)^T
    Dgrad  dx = dy @ W : A = dy 1x128 [M,K], B = W itself ([K=out, N=in], N-major)
    Wgrad  dW = dy^T @ x : A = dy^T view with its 128x1 scale transposed, B = x with 128x1 scale
  For Dgrad/Wgrad the GEMM's (M, K, N) is the table's (M, K, N) with the roles' meanings.

  Quantization, GB/s (bytes read + written / time) beside a device-to-device copy of the input.

Usage: python benchmarks/gemm.py [--quick] [--roles fprop,dgrad,wgrad] [--tune-quant]
                                [--shapes MxKxN,...] [--columns bf16,cublas,gluon,ws,...]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback

import torch
import triton
import triton.testing

SHAPES = [(8192, 8192, 8192), (16384, 4096, 14336), (16384, 14336, 4096), (4096, 4096, 4096),
          (1024, 4096, 4096), (128, 4096, 4096)]


def bench(fn, rotate=1):
    """Median ms; `fn(i)` with i cycling over `rotate` input sets (to defeat L2 on small shapes)."""
    state = [0]

    def call():
        fn(state[0] % rotate)
        state[0] += 1

    return triton.testing.do_bench(call, warmup=25, rep=100, return_mode="median")


def calc_diff(x, y):
    x, y = x.double(), y.double()
    return float(1 - 2 * (x * y).sum() / (x * x + y * y).sum())


def make_sets(role, m, k, n, nsets):
    from fp8pass.kernels import triton_quantize as tq

    sets = []
    for i in range(nsets):
        g = torch.Generator(device="cuda").manual_seed(100 + i)
        rnd = lambda *s: torch.randn(*s, device="cuda", generator=g).to(torch.bfloat16)  # noqa: E731
        if role == "fprop":
            x, w = rnd(m, k), rnd(n, k)
            qa, sa = tq.quantize_1x128(x)
            qw, sw = tq.quantize_128x128(w)
            emitted = (qa, sa, qw.t(), sw.t())
            bf16 = (x, w.t())
        elif role == "dgrad":
            dy, w = rnd(m, k), rnd(k, n)
            qa, sa = tq.quantize_1x128(dy)
            qw, sw = tq.quantize_128x128(w)
            emitted = (qa, sa, qw, sw)
            bf16 = (dy, w)
        else:
            dy, x = rnd(k, m), rnd(k, n)
            qdy, sdy = tq.quantize_128x1(dy)
            qx, sx = tq.quantize_128x1(x)
            emitted = (qdy.t(), sdy.t(), qx, sx)
            bf16 = (dy.t(), x)
        a, sa, b, sb = emitted
        kmajor = (a if a.stride(1) == 1 else a.contiguous(), sa,
                  b if b.stride(0) == 1 else b.t().contiguous().t(), sb)
        sets.append({"emitted": emitted, "kmajor": kmajor, "bf16": bf16})
    return sets


def fmt(v):
    return f"{v:8.1f}" if isinstance(v, float) else f"{v:>8}"


def run_gemm(roles, shapes, out_dtype=torch.bfloat16, columns=None):
    from fp8pass.kernels import cuda, triton_gemm, triton_gemm_gluon

    gluon_ok = triton_gemm_gluon.available()
    rows = []
    hdr = (f"{'role':6} {'M x K x N':>20} {'bf16':>8} {'cublas':>8} {'cublas+cp':>9} {'tl':>8} {'gluon':>8} {'ws':>8} "
           f"{'gluon+cp':>8} {'dispatch':>8} {'choice':>8} {'calc_diff':>10}")
    print("\n== GEMM TFLOP/s (median of do_bench; output bf16) ==", flush=True)
    print(hdr, flush=True)
    for role in roles:
        for (m, k, n) in shapes:
            flops = 2.0 * m * n * k
            per_set = m * k + k * n + m * n * 2
            nsets = max(1, min(6, math.ceil(3 * 2**28 / per_set)))  # ~768 MB of operands in rotation
            try:
                sets = make_sets(role, m, k, n, nsets)
            except Exception as exc:
                print(f"{role:6} {m}x{k}x{n}: input setup failed: {exc}", flush=True)
                continue
            res = {}

            def t(name, fn):
                if columns and name not in columns:
                    res[name] = "-"
                    return
                try:
                    ms = bench(fn, nsets)
                    res[name] = flops / ms / 1e9
                except Exception as exc:
                    res[name] = "err"
                    res[name + "_err"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"

            t("bf16", lambda i: torch.mm(*sets[i]["bf16"]))
            t("cublas", lambda i: cuda.cublas_gemm_blockwise(*sets[i]["kmajor"], out_dtype))
            t("cublas+cp", lambda i: cuda.cublas_gemm_blockwise(*sets[i]["emitted"], out_dtype))
            t("tl", lambda i: triton_gemm.gemm_blockwise(*sets[i]["emitted"], out_dtype))
            if gluon_ok:
                t("gluon", lambda i: triton_gemm_gluon.gemm_blockwise(
                    *sets[i]["kmajor"], out_dtype, configs=triton_gemm_gluon.GLUON_CONFIGS))
                t("ws", lambda i: triton_gemm_gluon.gemm_blockwise(
                    *sets[i]["kmajor"], out_dtype, configs=triton_gemm_gluon.ws_candidates()))
                t("gluon+cp", lambda i: cuda._run("gluon", *sets[i]["emitted"], out_dtype))
            else:
                res["gluon"] = res["ws"] = res["gluon+cp"] = "n/a"
            t("dispatch", lambda i: torch.ops.fp8pass.gemm_blockwise(*sets[i]["emitted"], out_dtype))
            choice = cuda.dispatch_choice(*sets[0]["emitted"], out_dtype) or "?"
            try:
                if columns and "dispatch" not in columns:  # calc_diff of the ws kernel instead
                    choice = "ws"
                    out = triton_gemm_gluon.gemm_blockwise(*sets[0]["kmajor"], out_dtype,
                                                           configs=triton_gemm_gluon.ws_candidates())
                else:
                    out = torch.ops.fp8pass.gemm_blockwise(*sets[0]["emitted"], out_dtype)
                x, y = sets[0]["bf16"]
                diff = calc_diff(out.float(), x.float() @ y.float())
                nan = bool(torch.isnan(out).any())
                diff_s = f"{diff:10.2e}" + (" NaN!" if nan else "")
            except Exception as exc:
                diff_s = f"err {exc}"
            line = (f"{role:6} {f'{m}x{k}x{n}':>20} {fmt(res['bf16'])} {fmt(res['cublas'])} {fmt(res['cublas+cp']):>9} "
                    f"{fmt(res['tl'])} {fmt(res['gluon'])} {fmt(res['ws'])} {fmt(res['gluon+cp'])} {fmt(res['dispatch'])} "
                    f"{choice:>8} {diff_s}")
            print(line, flush=True)
            for key, val in res.items():
                if key.endswith("_err"):
                    print(f"    {key[:-4]} failed: {val}", flush=True)
            rows.append(line)
            del sets
            torch.cuda.empty_cache()
    print("\nautotuned plain-Triton configs:", flush=True)
    for key, cfg in getattr(triton_gemm._gemm_kernel_tuned, "cache", {}).items():
        print(f"  {key[:6]}: {cfg}", flush=True)
    print("Gluon configs chosen (BLOCK_M, BLOCK_N, warps, stages[, ws]) among the candidates:", flush=True)
    for key, cfg in triton_gemm_gluon._choice_cache.items():
        print(f"  M,N,K (M, K by size bucket)={key[:3]} b128x128={key[3]} of {len(key[-1])}: {cfg}", flush=True)
    print("\ndispatcher measurements (ms, or why a backend was skipped):", flush=True)
    for key, val in cuda.dispatch_report().items():
        print(f"  M,N,K (M, K by size bucket)={key[:3]} b128x128={key[3]} A_kmajor={key[5]} B_kmajor={key[6]}: "
              + ", ".join(f"{n}={v:.4f}" if isinstance(v, float) else f"{n}={v}" for n, v in val.items()), flush=True)
    return rows


def run_ws_sweep(shapes, roles, spec: str = ""):
    """TFLOP/s of the warp-specialized Gluon kernel per (schedule, stages, GROUP_M), K-major
    operands, beside cuBLAS on the same operands. `spec`: "kind/stages/group[/BLOCK_M],..." (default:
    both row-split schedules at 4-6 stages and GROUP_M 4, 8, 16)."""
    from fp8pass.kernels import cuda, triton_gemm_gluon as G

    if spec:
        fields = [v.split("/") for v in spec.split(",")]
        variants = [(int(f[3]) if len(f) > 3 else 128, 128, 4, int(f[1]), f[0], int(f[2])) for f in fields]
    else:
        variants = [(128, 128, 4, st, kind, g) for kind in ("ws2", "ws") for st in (4, 5, 6) for g in (4, 8, 16)]
    print("\n== warp-specialized Gluon GEMM sweep, TFLOP/s (kind, stages, GROUP_M) ==", flush=True)
    for role in roles:
        for (m, k, n) in shapes:
            flops = 2.0 * m * n * k
            sets = make_sets(role, m, k, n, 2)
            out = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
            line = [f"{role:6} {m}x{k}x{n}: cublas "
                    f"{flops / bench(lambda i: cuda.cublas_gemm_blockwise(*sets[i]['kmajor'], torch.bfloat16), 2) / 1e9:.1f}"]
            for v in variants:
                try:
                    ms = bench(lambda i: G.gemm_blockwise(*sets[i]["kmajor"], torch.bfloat16, config=v, out=out), 2)
                    line.append(f"{v[4]}/{v[3]}/{v[5]}/{v[0]} {flops / ms / 1e9:.1f}")
                except Exception as exc:
                    line.append(f"{v[4]}/{v[3]}/{v[5]}/{v[0]} err {type(exc).__name__}")
            print("  ".join(line), flush=True)
            del sets
            torch.cuda.empty_cache()


def _with_gluon(fn, **settings):
    """fn timed with these attributes of triton_quantize_gluon set (e.g. _PIPELINED=False: the Gluon
    kernels one tile per program instead of pipelined), restored after each call."""
    from fp8pass.kernels import triton_quantize_gluon as tqg

    def run(i):
        saved = {k: getattr(tqg, k) for k in settings}
        for k, v in settings.items():
            setattr(tqg, k, v)
        try:
            return fn()
        finally:
            for k, v in saved.items():
                setattr(tqg, k, v)
    return run


def run_quant(tune: bool):
    from fp8pass.kernels import reference as ref_q
    from fp8pass.kernels import triton_quantize as tq

    print("\n== Quantization GB/s (bytes read + written / median time) ==", flush=True)
    sizes = [(16384, 4096), (16384, 14336), (32768, 8192)]
    for (m, k) in sizes:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        y = torch.empty_like(x)
        nbytes_in = x.numel() * 2
        copy_ms = bench(lambda i: y.copy_(x))
        copy_gbs = 2 * nbytes_in / copy_ms / 1e6
        n = x.numel()
        kernels = {
            "quantize_1x128": (lambda i: tq.quantize_1x128(x), nbytes_in + n + n // 128 * 4),
            "quantize_128x1": (lambda i: tq.quantize_128x1(x), nbytes_in + n + n // 128 * 4),
            "quantize_128x1(q^T)": (lambda i: tq.quantize_128x1(x, layout="transposed"), nbytes_in + n + n // 128 * 4),
            "quantize_1x128_128x1": (lambda i: tq.quantize_1x128_128x1(x), nbytes_in + 2 * n + 2 * (n // 128) * 4),
            "quantize_1x128_128x1(col^T)": (lambda i: tq.quantize_1x128_128x1(x, col_layout="transposed"),
                                            nbytes_in + 2 * n + 2 * (n // 128) * 4),
            # the Gluon 128x1 kernel one tile per program (pipelined is its default on sm90)
            "quantize_128x1(q^T) per tile": (_with_gluon(lambda: tq.quantize_128x1(x, layout="transposed"),
                                                         _PIPELINED=False), nbytes_in + n + n // 128 * 4),
            "dual(col^T) pipelined 16 warps": (
                _with_gluon(lambda: tq.quantize_1x128_128x1(x, col_layout="transposed"), _PIPELINE_DUAL=True,
                            _PIPE_WARPS=16, _PIPE_CTAS=1, _PIPE_STAGES=3), nbytes_in + 2 * n + 2 * (n // 128) * 4),
            "128x1(q^T) pipelined 16 warps": (
                _with_gluon(lambda: tq.quantize_128x1(x, layout="transposed"), _PIPE_WARPS=16, _PIPE_CTAS=1,
                            _PIPE_STAGES=3), nbytes_in + n + n // 128 * 4),
            # the dual quantizer's other tile orders (the default row above is GROUP_M 1, along K): the 2-D
            # grid down M (GROUP_M 0, the default until session 15) and 1-D grids of GROUP_M rows of tiles
            **{f"dual(col^T) GROUP_M={g}": (
                _with_gluon(lambda: tq.quantize_1x128_128x1(x, col_layout="transposed"), _DUAL_GROUP_M=g),
                nbytes_in + 2 * n + 2 * (n // 128) * 4) for g in (0, 4, 16)},
            "quantize_128x128": (lambda i: tq.quantize_128x128(x), nbytes_in + n),
            "quantize_128x128(+q^T)": (lambda i: tq.quantize_128x128(x, with_transposed=True), nbytes_in + 2 * n),
            "quantize_128x128(q^T)": (lambda i: tq.quantize_128x128(x, layout="transposed"), nbytes_in + n),
        }
        print(f"-- {m}x{k} bf16: device copy {copy_gbs:7.1f} GB/s ({copy_ms * 1e3:.1f} us)", flush=True)
        for name, (fn, nbytes) in kernels.items():
            try:
                ms = bench(fn)
                gbs = nbytes / ms / 1e6
                print(f"   {name:30} {gbs:7.1f} GB/s  {100 * gbs / copy_gbs:5.1f}% of copy  ({ms * 1e3:.1f} us)",
                      flush=True)
            except Exception as exc:
                print(f"   {name:30} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        del x, y
        torch.cuda.empty_cache()
    if tune:
        x = torch.randn(16384, 4096, device="cuda", dtype=torch.bfloat16)
        n = x.numel()
        print("\n-- quantizer launch-parameter sweep at 16384x4096 bf16 (GB/s)", flush=True)
        # each launch configuration is also checked byte for byte against the reference on x
        # (with a NaN, an inf and a zero tile), so a fast but wrong setting cannot be picked
        xc = x.clone()
        xc[5, 7] = float("nan")
        xc[300, 1000] = float("inf")
        xc[128:256, 256:384] = 0
        xcpu = xc.cpu()  # the ground truth: the reference in IEEE arithmetic on the CPU
        refs = {"128x1": [t.t().contiguous() for t in ref_q.quantize_128x1(xcpu)],
                "dual": list(ref_q.quantize_1x128(xcpu)) + [t.t().contiguous() for t in ref_q.quantize_128x1(xcpu)]}
        sweeps = [
            ("1x128 BLOCK_R,warps", ("_BLOCK_R_1x128", "_WARPS_1x128"), [(32, 4), (64, 4)],
             lambda v: tq.quantize_1x128(v), 2 * n + n, None),
            ("128x1^T gluon,IMPL,BLOCK_C,CHUNK,warps / gluon COL_SPT",
             ("_Q128X1_GLUON", "_Q128X1_IMPL", "_BLOCK_C_128x1", "_CHUNK_128x1", "_WARPS_128x1", "gluon._COL_SPT_128X1"),
             [(False, "whole", 64, 0, 4, 32), (True, "whole", 64, 0, 4, 16), (True, "whole", 64, 0, 4, 32)],
             lambda v: tq.quantize_128x1(v, layout="transposed"), 2 * n + n, "128x1"),
            ("dual col^T IMPL,CHUNK,warps (triton) / gluon warps,maxnreg,ROW_SPT,COL_SPT",
             ("_DUAL_IMPL", "_CHUNK_DUAL", "_WARPS_DUAL", "gluon._WARPS", "gluon._MAXNREG", "gluon._ROW_SPT",
              "gluon._COL_SPT"),
             [("triton", 128, 8, 8, 128, 32, 32), ("gluon", 128, 8, 8, 128, 16, 16), ("gluon", 128, 8, 8, 128, 32, 16),
              ("gluon", 128, 8, 8, 128, 16, 32), ("gluon", 128, 8, 8, 128, 32, 32), ("gluon", 128, 8, 16, 64, 32, 32)],
             lambda v: tq.quantize_1x128_128x1(v, col_layout="transposed"), 2 * n + 2 * n, "dual"),
            ("dual col^T gluon per tile / pipelined stages,CTAs/SM,warps",
             ("gluon._PIPELINE_DUAL", "gluon._PIPE_STAGES", "gluon._PIPE_CTAS", "gluon._PIPE_WARPS"),
             [(False, 2, 2, 8), (True, 2, 2, 8), (True, 2, 1, 16), (True, 3, 1, 16), (True, 4, 1, 16), (False, 2, 2, 8)],
             lambda v: tq.quantize_1x128_128x1(v, col_layout="transposed"), 2 * n + 2 * n, "dual"),
            ("128x1^T gluon pipelined? stages,CTAs/SM,warps",
             ("gluon._PIPELINED", "gluon._PIPE_STAGES", "gluon._PIPE_CTAS", "gluon._PIPE_WARPS"),
             [(False, 2, 2, 8), (True, 2, 2, 8), (True, 2, 1, 16), (True, 3, 1, 16), (True, 4, 1, 16)],
             lambda v: tq.quantize_128x1(v, layout="transposed"), 2 * n + n, "128x1"),
            ("dual col^T pipelined, column pass from the stage: stages,swizzle",
             ("gluon._PIPELINE_DUAL", "gluon._PIPE_COL_FROM_SMEM", "gluon._PIPE_STAGES", "gluon._PIPE_SWIZZLE"),
             [(False, False, 2, (8, 1, 16)), (True, True, 2, (8, 1, 16)), (True, True, 2, (8, 16, 8)),
              (True, True, 3, (8, 16, 8)), (True, True, 3, (8, 1, 16)), (True, True, 2, (8, 8, 8)),
              (True, True, 2, (8, 2, 8))],
             lambda v: tq.quantize_1x128_128x1(v, col_layout="transposed"), 2 * n + 2 * n, "dual"),
            ("128x1^T pipelined, column pass from the stage: stages,swizzle",
             ("gluon._PIPE_COL_FROM_SMEM", "gluon._PIPE_STAGES", "gluon._PIPE_SWIZZLE"),
             [(False, 2, (8, 1, 16)), (True, 2, (8, 1, 16)), (True, 2, (8, 16, 8)), (True, 3, (8, 16, 8))],
             lambda v: tq.quantize_128x1(v, layout="transposed"), 2 * n + n, "128x1"),
            ("dual col^T per tile: GROUP_M (0: 2-D grid down M)", ("gluon._DUAL_GROUP_M",),
             [(0,), (1,), (2,), (4,), (8,), (16,), (32,), (0,), (1,)],
             lambda v: tq.quantize_1x128_128x1(v, col_layout="transposed"), 2 * n + 2 * n, "dual"),
            ("128x128 -,warps", ("_WARPS_128x128",), [(4,), (8,)], lambda v: tq.quantize_128x128(v), 2 * n + n, None),
        ]
        from fp8pass.kernels import triton_quantize_gluon as tqg

        def owner(attr):  # "gluon.X" names triton_quantize_gluon.X, the rest triton_quantize's
            return (tqg, attr[6:]) if attr.startswith("gluon.") else (tq, attr)

        for label, attrs, choices, fn, nbytes, check in sweeps:
            saved = [getattr(*owner(a)) for a in attrs]
            parts = []
            for choice in choices:
                for a, v in zip(attrs, choice):
                    setattr(*owner(a), v)
                tag = ",".join(map(str, choice))
                try:
                    ms = bench(lambda i: fn(x))
                    ok = ""
                    if check:
                        got = fn(xc)
                        same = all(_same_bits(g, e) for g, e in zip(got, refs[check]))
                        ok = "" if same else " WRONG"
                    parts.append(f"({tag})={nbytes / ms / 1e6:.0f}{ok}")
                except Exception as exc:
                    parts.append(f"({tag})=err:{type(exc).__name__}:{str(exc)[:80]}")
            for a, v in zip(attrs, saved):
                setattr(*owner(a), v)
            print(f"   {label:30} " + " ".join(parts), flush=True)


def _same_bits(got, exp):
    """Same bytes (FP8: NaN anywhere the reference has NaN, whatever its sign) or same scales."""
    got = got.cpu()
    if exp.dtype == torch.float8_e4m3fn:
        en = torch.isnan(exp.float())
        return torch.equal(torch.isnan(got.float()), en) and bool(
            ((got.view(torch.uint8) == exp.view(torch.uint8)) | en).all())
    return torch.equal(torch.nan_to_num(got, nan=-1.0), torch.nan_to_num(exp, nan=-1.0))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="only 4096^3 and 128x4096x4096")
    p.add_argument("--roles", default="fprop,dgrad,wgrad")
    p.add_argument("--tune-quant", action="store_true")
    p.add_argument("--no-quant", action="store_true")
    p.add_argument("--no-gemm", action="store_true")
    p.add_argument("--shapes", default="", help="M x K x N list instead of the issue's six, e.g. 8192x8192x8192,4096x4096x4096")
    p.add_argument("--ws-sweep", action="store_true", help="sweep the warp-specialized kernel's settings instead")
    p.add_argument("--ws-variants", default="", help="with --ws-sweep: kind/stages/GROUP_M[/BLOCK_M],... (e.g. ws2/6/8,ws_n/5/16,ws/4/8/192)")
    p.add_argument("--columns", default="", help="time only these columns (comma list, e.g. cublas,gluon,ws)")
    args = p.parse_args()
    import fp8pass.kernels as kernels

    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"card: {torch.cuda.get_device_name()}  capability {torch.cuda.get_device_capability()}  "
          f"SMs {torch.cuda.get_device_properties(0).multi_processor_count}", flush=True)
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda})  triton {triton.__version__}  "
          f"python {sys.version.split()[0]}", flush=True)
    print(f"fp8pass CUDA kernels registered: {kernels.CUDA_KERNELS_REGISTERED}", flush=True)
    from fp8pass.kernels import triton_gemm_gluon
    print(f"gluon available: {triton_gemm_gluon.available()}"
          + ("" if triton_gemm_gluon.gluon is not None else f" (import error: {triton_gemm_gluon._GLUON_IMPORT_ERROR})"),
          flush=True)
    if triton_gemm_gluon.available():
        try:  # smoke test with the full error, so that a Triton API difference is visible at once
            from fp8pass.kernels import triton_quantize as tq
            x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(384, 512, device="cuda", dtype=torch.bfloat16)
            qx, sx = tq.quantize_1x128(x)
            qw, sw = tq.quantize_128x128(w)
            out = triton_gemm_gluon.gemm_blockwise(qx, sx, qw.t(), sw.t(), torch.float32, config=(128, 128, 8, 4))
            print(f"gluon smoke test: calc_diff vs bf16 reference {calc_diff(out, x.float() @ w.float().t()):.2e}",
                  flush=True)
            out = triton_gemm_gluon.gemm_blockwise(qx, sx, qw.t(), sw.t(), torch.float32,
                                                   config=triton_gemm_gluon.WS_CONFIGS[0])
            print(f"gluon ws smoke test: calc_diff vs bf16 reference {calc_diff(out, x.float() @ w.float().t()):.2e}",
                  flush=True)
        except Exception:
            print("gluon smoke test FAILED:", flush=True)
            traceback.print_exc()
    t0 = time.time()
    if not args.no_quant:
        try:
            run_quant(args.tune_quant)
        except Exception:
            traceback.print_exc()
    if not args.no_gemm:
        shapes = [(4096, 4096, 4096), (128, 4096, 4096)] if args.quick else SHAPES
        if args.shapes:
            shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        if args.ws_sweep:
            run_ws_sweep(shapes, [r for r in args.roles.split(",") if r], args.ws_variants)
            shapes = []
        run_gemm([r for r in args.roles.split(",") if r], shapes,
                 columns=set(c for c in args.columns.split(",") if c) or None)
    print(f"\nbenchmark wall time {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
