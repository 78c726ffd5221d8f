"""Exactness checks of the Triton kernels under Triton's CPU interpreter.

Run as `TRITON_INTERPRET=1 python tests/triton_interp_checks.py quantize|gemm|grouped|swiglu` (the tests in
test_triton_interpreter.py do that in a subprocess: the variable must be set before Triton jits
anything). Prints one line per check, "OK <name>" or "FAIL <name>: <detail>", and exits 1 if
any check failed.

Inputs need no rounding (DESIGN.md: the interpreter's float -> float8e4nv cast mis-rounds values
that round up across a power of two, and maps NaN and out-of-range values wrongly):
  * quantize: FP8-representable values times a power of two per 128x128 block, with +-448 on the
    block diagonal, so every 1x128, 128x1 and 128x128 tile has amax = 448 * 2^e, scale = 2^e and
    x / scale is exactly an FP8 value. All-zero tiles (scale = eps/448, q = 0) and NaN tiles
    (scale NaN; the FP8 bits of NaN tiles are checked on the GPU only) are included.
  * gemm: small half-integer operands and power-of-two scales, so every partial and the fp32
    accumulation are exact, and the result must equal reference.gemm_blockwise bit for bit in
    fp32 (bf16/fp16 outputs within one rounding of the output cast).
"""

from __future__ import annotations

import os
import sys
import traceback

if os.environ.get("TRITON_INTERPRET") != "1":
    raise SystemExit("run with TRITON_INTERPRET=1")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fp8pass.kernels import reference as ref  # noqa: E402
from fp8pass.kernels import tile_math as _tm  # noqa: E402

FAILED: list[str] = []


def report(name: str, ok: bool, detail: str = "") -> None:
    if ok:
        print(f"OK {name}", flush=True)
    else:
        print(f"FAIL {name}: {detail}", flush=True)
        FAILED.append(name)


def check(name, fn):
    try:
        ok, detail = fn()
    except Exception:
        ok, detail = False, traceback.format_exc(limit=6)
    report(name, ok, detail)


# --------------------------------------------------------------------------------------------
# quantize
# --------------------------------------------------------------------------------------------
_FP8_VALUES = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
_FP8_VALUES = _FP8_VALUES[torch.isfinite(_FP8_VALUES)]


def exact_input(m: int, k: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, _FP8_VALUES.numel(), (m, k), generator=gen)
    v = _FP8_VALUES[idx]
    # in each (partial) 128x128 block of h rows and w cols, put +-448 at (i, i % w) and
    # (j % h, j): every row tile and every column tile of the block then holds one
    sign = torch.where(torch.rand(m, k, generator=gen) < 0.5, 448.0, -448.0)
    for r0 in range(0, m, 128):
        h = min(128, m - r0)
        for c0 in range(0, k, 128):
            w = min(128, k - c0)
            i = torch.arange(h)
            j = torch.arange(w)
            v[r0 + i, c0 + i % w] = sign[r0 + i, c0 + i % w]
            v[r0 + j % h, c0 + j] = sign[r0 + j % h, c0 + j]
    # fp16 holds 2^-14 .. 65504: keep 448 * 2^e and the smallest subnormal products in range
    lo, hi = (-3, 4) if dtype == torch.float16 else (-8, 8)
    e = torch.randint(lo, hi, (-(-m // 128), -(-k // 128)), generator=gen).float()
    e = e.repeat_interleave(128, 0)[:m].repeat_interleave(128, 1)[:, :k]
    x = v * torch.exp2(e)
    if dtype == torch.float16:  # values below fp16's range would round: drop them to zero
        x = torch.where(x.abs() < 2.0 ** -14, torch.zeros_like(x), x)
    if dtype == torch.bfloat16:
        assert torch.equal(x.to(dtype).float(), x)
    return x.to(dtype)


def _same(got: torch.Tensor, exp: torch.Tensor, nan_tiles: torch.Tensor | None = None) -> tuple[bool, str]:
    if got.shape != exp.shape or got.dtype != exp.dtype:
        return False, f"shape/dtype {tuple(got.shape)} {got.dtype} vs {tuple(exp.shape)} {exp.dtype}"
    if got.dtype == torch.float8_e4m3fn:
        g, e = got.view(torch.uint8), exp.view(torch.uint8)
        keep = torch.ones_like(g, dtype=torch.bool) if nan_tiles is None else ~nan_tiles
        keep &= ~torch.isnan(exp.float())  # the interpreter's cast of NaN is wrong: GPU-only check
        bad = (g != e) & keep
        if bad.any():
            i = bad.nonzero()[0].tolist()
            return False, f"{int(bad.sum())} FP8 bytes differ, first at {i}: {g[tuple(i)]} vs {e[tuple(i)]}"
        return True, ""
    if not torch.equal(torch.isnan(got), torch.isnan(exp)):
        return False, "NaN positions differ"
    if not torch.equal(torch.nan_to_num(got), torch.nan_to_num(exp)):
        d = (torch.nan_to_num(got) - torch.nan_to_num(exp)).abs().max().item()
        return False, f"scales differ by up to {d}"
    return True, ""


def _nan_rows_mask(q_shape, scale, tile_rows, tile_cols):
    """Elements of q that belong to a tile whose scale is NaN."""
    nan = torch.isnan(scale)
    if tile_cols > 1:
        nan = nan.repeat_interleave(tile_cols, dim=-1)[..., : q_shape[-1]]
    if tile_rows > 1:
        nan = nan.repeat_interleave(tile_rows, dim=-2)[..., : q_shape[-2], :]
    return nan


def run_quantize() -> None:
    from fp8pass.kernels import triton_quantize as tq

    gen = torch.Generator().manual_seed(1234)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        tag = str(dtype).replace("torch.", "")
        base = exact_input(200, 384, dtype, gen)
        base[5, 7] = float("nan")          # a NaN tile (row 5 / col 7 / block (0, 0))
        base[130:150, 128:256] = 0         # all-zero 1x128 tiles ...
        base[140, 130:150] = -0.0          # ... with negative zeros (byte 0x80, not 0x00)
        base[20, 0:64] = -0.0              # negative zeros in a nonzero tile
        base[199, 128:256] = base[128:200, 128:256].abs().amax()  # ... column tiles keep their amax
        base[150, 300] = float("inf")     # an inf tile: scale inf, finite x -> 0, inf -> NaN
        base[60, 200] = -float("inf")
        base[128:200, 300] = 0             # an all-zero 128x1 tail tile
        inputs = {
            "contiguous": base,
            "transposed_view": base.t().contiguous().t(),                  # column-major storage
            "column_slice": torch.cat([base, base[:, :128]], dim=1)[:, :384],  # row stride 512
        }
        for layout, x in inputs.items():
            def q1x128(x=x):
                g, e = tq.quantize_1x128(x), ref.quantize_1x128(x)
                ok, d = _same(g[1], e[1])
                if ok:
                    ok, d = _same(g[0], e[0], _nan_rows_mask(g[0].shape, e[1], 1, 128))
                return ok, d

            def q128x1(x=x):
                g, e = tq.quantize_128x1(x), ref.quantize_128x1(x)
                ok, d = _same(g[1], e[1])
                if ok:
                    ok, d = _same(g[0], e[0], _nan_rows_mask(g[0].shape, e[1], 128, 1))
                return ok, d

            def qdual(x=x):
                g, e = tq.quantize_1x128_128x1(x), ref.quantize_1x128_128x1(x)
                for gi, ei in zip((g[1], g[3]), (e[1], e[3])):
                    ok, d = _same(gi, ei)
                    if not ok:
                        return ok, d
                ok, d = _same(g[0], e[0], _nan_rows_mask(g[0].shape, e[1], 1, 128))
                if ok:
                    ok, d = _same(g[2], e[2], _nan_rows_mask(g[2].shape, e[3], 128, 1))
                return ok, d

            def qdual_t(x=x):  # the layout training uses (the persistent kernel when K % 128 == 0)
                g, e = tq.quantize_1x128_128x1(x, col_layout="transposed"), ref.quantize_1x128_128x1(x)
                for gi, ei in zip((g[1], g[3].t()), (e[1], e[3])):
                    ok, d = _same(gi, ei)
                    if not ok:
                        return ok, d
                ok, d = _same(g[0], e[0], _nan_rows_mask(g[0].shape, e[1], 1, 128))
                if ok:
                    ok, d = _same(g[2].t(), e[2], _nan_rows_mask(e[2].shape, e[3], 128, 1))
                return ok, d

            def q128x128(x=x):
                g, e = tq.quantize_128x128(x), ref.quantize_128x128(x)
                ok, d = _same(g[1], e[1])
                if ok:
                    ok, d = _same(g[0], e[0], _nan_rows_mask(g[0].shape, e[1], 128, 128))
                return ok, d

            check(f"quantize_1x128[{tag},{layout}]", q1x128)
            check(f"quantize_128x1[{tag},{layout}]", q128x1)
            check(f"quantize_1x128_128x1[{tag},{layout}]", qdual)
            check(f"quantize_1x128_128x1 col^T[{tag},{layout}]", qdual_t)
            check(f"quantize_128x128[{tag},{layout}]", q128x128)

    # N-D input for 1x128, strided in two leading dims that cannot merge, and a K tail
    x3 = exact_input(6 * 40, 256, torch.bfloat16, gen).reshape(6, 40, 256).transpose(0, 1)  # [40, 6, 256]

    def q_nd():
        g, e = tq.quantize_1x128(x3), ref.quantize_1x128(x3)
        ok, d = _same(g[1], e[1])
        return (ok, d) if not ok else _same(g[0], e[0])

    check("quantize_1x128[3-D transposed leading dims]", q_nd)
    xt = torch.zeros(70, 384)
    xt[:, :320] = exact_input(70, 320, torch.float32, gen)
    xt = xt[:, :320]  # K = 320 (a 64-wide tail tile), row stride 384

    def q_ktail():
        out = []
        for fn, rf in ((tq.quantize_1x128, ref.quantize_1x128), (tq.quantize_1x128_128x1, ref.quantize_1x128_128x1),
                       (tq.quantize_128x1, ref.quantize_128x1), (tq.quantize_128x128, ref.quantize_128x128)):
            g, e = fn(xt), rf(xt)
            for gi, ei in zip(g, e):
                ok, d = _same(gi, ei)
                if not ok:
                    return False, f"{fn.__name__}: {d}"
        return True, ""

    check("quantize_all[K tail 320, M tail 70]", q_ktail)

    # the additions to the contract: transposed FP8 outputs
    xw = exact_input(256, 384, torch.bfloat16, gen)

    def q_transposed():
        q, s = ref.quantize_128x1(xw)
        qt, st = tq.quantize_128x1(xw, layout="transposed")
        for a, b in ((qt, q.t().contiguous()), (st, s.t().contiguous())):
            ok, d = _same(a, b)
            if not ok:
                return False, "128x1 transposed: " + d
        both = tq.quantize_128x1(xw, layout="both")
        for a, b in zip(both, (q, s, q.t().contiguous(), s.t().contiguous())):
            ok, d = _same(a, b)
            if not ok:
                return False, "128x1 both: " + d
        g = tq.quantize_1x128_128x1(xw, col_layout="transposed")
        e = ref.quantize_1x128_128x1(xw)
        for a, b in zip(g, (e[0], e[1], e[2].t().contiguous(), e[3].t().contiguous())):
            ok, d = _same(a, b)
            if not ok:
                return False, "dual transposed: " + d
        qw, sw, qwt = tq.quantize_128x128(xw, with_transposed=True)
        eq, es = ref.quantize_128x128(xw)
        for a, b in ((qw, eq), (sw, es), (qwt, eq.t().contiguous())):
            ok, d = _same(a, b)
            if not ok:
                return False, "128x128 with_transposed: " + d
        for a, b in zip(tq.quantize_128x128(xw, layout="transposed"), (eq.t().contiguous(), es.t().contiguous())):
            ok, d = _same(a, b)
            if not ok:
                return False, "128x128 layout=transposed: " + d
        return True, ""

    check("quantize transposed outputs", q_transposed)

    # the CUDA kernels of the ops (cuda.py) return these wrappers' outputs, and Inductor asserts that
    # their strides are the fake kernels' (MN-major scales): the wrappers must match the CPU ops
    def op_layouts():
        ops = torch.ops.fp8pass
        cases = ((lambda v: tq.quantize_1x128(v), ops.quantize_1x128, (xw, xw.reshape(2, 128, 384))),
                 (lambda v: tq.quantize_128x1(v, layout="transposed"), ops.quantize_128x1, (xw, xt)),
                 (lambda v: tq.quantize_1x128_128x1(v, col_layout="transposed"), ops.quantize_1x128_128x1, (xw, xt)),
                 (lambda v: tq.quantize_128x128(v), ops.quantize_128x128, (xw, xt)),
                 (lambda v: tq.quantize_128x128(v, layout="transposed"), ops.quantize_128x128_transposed, (xw, xt)))
        for triton_fn, op, inputs in cases:
            for v in inputs:
                got = [(tuple(t.shape), t.stride()) for t in triton_fn(v)]
                want = [(tuple(t.shape), t.stride()) for t in op(v)]
                if got != want:
                    return False, f"{op}: Triton wrapper {got} vs op {want} for input {tuple(v.shape)}"
        return True, ""

    check("quantize layouts of the CUDA kernels = the ops'", op_layouts)


# --------------------------------------------------------------------------------------------
# gemm
# --------------------------------------------------------------------------------------------
def _fp8_small(shape, gen):
    return (torch.randint(-16, 17, shape, generator=gen).float() / 2).to(torch.float8_e4m3fn)


def _pow2(shape, gen):
    return torch.exp2(torch.randint(-6, 6, shape, generator=gen).float())


def _gemm_operands(role: str, m: int, k: int, n: int, gen):
    kb = -(-k // 128)
    if role == "fprop":      # y = x @ W^T: B = W.T (a view), b_scale = W's 128x128 scale .T
        # a_scale MN-major, as the quantize ops return it (Dgrad's stays contiguous: both read)
        a, sa = _fp8_small((m, k), gen), ref.as_mn_major(_pow2((m, kb), gen))
        w, sw = _fp8_small((n, k), gen), _pow2((-(-n // 128), kb), gen)
        return a, sa, w.t(), sw.t()
    if role == "dgrad":      # dx = dy @ W: B = W in its own [N_out, K_in] layout (N-major)
        a, sa = _fp8_small((m, k), gen), _pow2((m, kb), gen)
        return a, sa, _fp8_small((k, n), gen), _pow2((kb, -(-n // 128)), gen)
    if role == "wgrad":      # dW = dy^T @ x: A = dy^T (view), 128x1 scales on both sides
        dy, sdy = _fp8_small((k, m), gen), _pow2((kb, m), gen)
        return dy.t(), sdy.t(), _fp8_small((k, n), gen), _pow2((kb, n), gen)
    raise ValueError(role)


def _close(out, exp):
    if out.dtype == torch.float32:
        if torch.equal(out, exp):
            return True, ""
        return False, f"max abs diff {(out - exp).abs().max().item()}"
    # the interpreter's fp32 -> bf16/fp16 cast may differ from torch's by one unit in the last place
    o, e = out.float(), exp.float()
    ulp = 2.0 ** -7 if out.dtype == torch.bfloat16 else 2.0 ** -10
    bad = (o - e).abs() > ulp * e.abs() + 1e-30
    if bad.any():
        return False, f"{int(bad.sum())} elements beyond one ulp, max abs diff {(o - e).abs().max().item()}"
    return True, ""


def run_gemm() -> None:
    from fp8pass.kernels import triton_gemm as tg

    gen = torch.Generator().manual_seed(4321)
    configs = [
        {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4},   # 128x128 b scales: scalar per tile
        {"BLOCK_M": 32, "BLOCK_N": 256, "num_warps": 4},  # 128x128 b scales: two blocks per tile
    ]
    shapes = [(100, 320, 192), (64, 256, 128)]  # M tail, K tail (Wgrad's token tail), N partial block
    for role in ("fprop", "dgrad", "wgrad"):
        for (m, k, n) in shapes:
            if role != "wgrad" and k % 128:
                k = 256 + 128  # Fprop/Dgrad reduce over features: a multiple of 128
            a, sa, b, sb = _gemm_operands(role, m, k, n, gen)
            for out_dtype in (torch.float32, torch.bfloat16, torch.float16):
                for cfg in configs:
                    def one(a=a, sa=sa, b=b, sb=sb, out_dtype=out_dtype, cfg=cfg):
                        out = torch.full((a.shape[0], b.shape[1]), float("nan"), dtype=out_dtype)
                        tg.gemm_blockwise(a, sa, b, sb, out_dtype, config=cfg, out=out)
                        return _close(out, ref.gemm_blockwise(a, sa, b, sb, out_dtype))
                    tag = f"{role},{m}x{k}x{n},{str(out_dtype).replace('torch.', '')},BN={cfg['BLOCK_N']}"
                    check(f"gemm_blockwise[{tag}]", one)


def run_grouped_gemm() -> None:
    """The grouped kernel (MoE experts) against reference.gemm_blockwise_grouped, exact operands as
    above: groups that start and end inside 128-row tiles, an empty group, rows past the last
    group's end (written as zeros), and the 128-token blocks of Wgrad shared by two groups."""
    from fp8pass.kernels import triton_gemm_grouped as tgg

    gen = torch.Generator().manual_seed(97)
    s, k, n = 300, 256, 384
    offs = torch.tensor([50, 50, 200, 290], dtype=torch.int32)  # group 1 empty; rows 290-299 in none
    # 9 groups (16 lanes in the kernel's group lookup), three empty, the last ending at s (no tail)
    offs9 = torch.tensor([0, 7, 7, 130, 131, 256, 256, 299, 300], dtype=torch.int32)
    g = offs.shape[0]
    configs = [{"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4}, {"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 4}]
    x, sx = _fp8_small((s, k), gen), ref.as_mn_major(_pow2((s, k // 128), gen))
    w, sw = _fp8_small((g, n, k), gen), _pow2((g, n // 128, k // 128), gen)
    dy, sdy = _fp8_small((s, n), gen), _pow2((s, n // 128), gen)
    dy_col, sdy_col = _fp8_small((n, s), gen), _pow2((n, -(-s // 128)), gen)  # dY^T's 128x1 copy
    x_col, sx_col = _fp8_small((k, s), gen), _pow2((k, -(-s // 128)), gen)
    cases = {
        "fprop": (x, sx, w.transpose(1, 2), sw.transpose(1, 2)),   # x @ W_g^T: B a view of W
        "dgrad": (dy, sdy, w, sw),                                  # dY @ W_g: B = W_g itself (N-major)
        "dgrad_kmajor": (dy, sdy, w.transpose(1, 2).contiguous().transpose(1, 2), sw),  # as the pass emits it
        "wgrad": (dy_col, sdy_col, x_col.t(), sx_col.t()),          # dY^T @ x per group of tokens
    }
    from fp8pass.kernels import triton_quantize as tq

    for rows in (256, 200):  # experts' weights as one [G*R, C] matrix, or one by one (R % 128 != 0)
        stack = torch.stack([exact_input(rows, 256, torch.bfloat16, gen) for _ in range(3)])

        def quantize_stack(stack=stack, layout="row"):
            (q, sc), (qr, scr) = tq.quantize_128x128(stack, layout=layout), ref.quantize_128x128(stack)
            if layout == "transposed":  # each matrix's transpose, stored contiguous
                if not (q.is_contiguous() and sc.is_contiguous()):
                    return False, f"strides {q.stride()} {sc.stride()}"
                qr, scr = qr.transpose(1, 2), scr.transpose(1, 2)
            ok, detail = _same(q, qr)
            return (ok and _same(sc, scr)[0]), detail or _same(sc, scr)[1]
        check(f"quantize_128x128[stack 3x{rows}x256]", quantize_stack)
        check(f"quantize_128x128_transposed[stack 3x{rows}x256]",
              lambda stack=stack: quantize_stack(stack, "transposed"))
        check(f"quantize_128x128_transposed[stack view 3x{rows}x256]",  # strided: each matrix's transpose
              lambda stack=stack: quantize_stack(stack.transpose(1, 2), "transposed"))
    w9, sw9 = _fp8_small((9, n, k), gen), _pow2((9, n // 128, k // 128), gen)
    k_odd = 320  # a K tail (the op takes one; the pass emits multiples of 128): the masked K loads
    x_odd, sx_odd = _fp8_small((s, k_odd), gen), _pow2((s, 3), gen)
    w_odd, sw_odd = _fp8_small((9, n, k_odd), gen), _pow2((9, n // 128, 3), gen)
    nine = {
        "fprop9": (x, sx, w9.transpose(1, 2), sw9.transpose(1, 2)),
        "wgrad9": (dy_col, sdy_col, x_col.t(), sx_col.t()),
        "fprop9_k320": (x_odd, sx_odd, w_odd.transpose(1, 2), sw_odd.transpose(1, 2)),
    }
    def tile_table(offs_t=offs9, rows=s, block_m=64):
        """The row-tile table of the warp-specialized kernel against the reference's group bounds:
        every row of a group in exactly one of its tiles, tail tiles zeros-only, none past that."""
        got = [[m, min(m + block_m, end), g, k] for m, end, g, k in tgg.row_tile_table(offs_t, rows, block_m).tolist()]
        want, ends = [], offs_t.tolist()
        for g, (start, end) in enumerate(zip([0] + ends[:-1], ends)):
            want += [[m, min(m + block_m, end), g, 1] for m in range(start, end, block_m)]
        want += [[m, rows, len(ends) - 1, 0] for m in range(ends[-1], rows, block_m)]
        if got[:len(want)] != want:
            return False, f"{got[:len(want)]} vs {want}"
        past = [t for t in got[len(want):] if t[0] < rows]
        return not past, f"tiles past the rows: {past}"
    check("row_tile_table[9 groups,BM=64]", tile_table)
    check("row_tile_table[4 groups,BM=128]", lambda: tile_table(offs, s, 128))
    for role, (a, sa, b, sb) in nine.items():
        def one(a=a, sa=sa, b=b, sb=sb):
            want = ref.gemm_blockwise_grouped(a, sa, b, sb, offs9, torch.float32)
            out = torch.full(want.shape, float("nan"), dtype=torch.float32)
            tgg.gemm_blockwise_grouped(a, sa, b, sb, offs9, torch.float32, config=configs[0], out=out)
            return _close(out, want)
        check(f"gemm_blockwise_grouped[{role},9 groups]", one)
    for role, (a, sa, b, sb) in cases.items():
        for out_dtype in (torch.float32, torch.bfloat16):
            for cfg in configs:
                def one(a=a, sa=sa, b=b, sb=sb, out_dtype=out_dtype, cfg=cfg):
                    want = ref.gemm_blockwise_grouped(a, sa, b, sb, offs, out_dtype)
                    out = torch.full(want.shape, float("nan"), dtype=out_dtype)
                    tgg.gemm_blockwise_grouped(a, sa, b, sb, offs, out_dtype, config=cfg, out=out)
                    return _close(out, want)
                tag = f"{role},{str(out_dtype).replace('torch.', '')},BM={cfg['BLOCK_M']}"
                check(f"gemm_blockwise_grouped[{tag}]", one)


# --------------------------------------------------------------------------------------------
# SwiGLU fused with the dual quantization
# --------------------------------------------------------------------------------------------
def run_swiglu() -> None:
    """The fused kernels (kernels/triton_swiglu.py) against the plain dual (or 1x128, 128x1) quantizer of
    the reference SwiGLU values and gradients, both under the interpreter (whose FP8 cast rounds the
    same way in both, so any difference is in the SwiGLU values). bf16: every byte and scale equal
    (the kernel rounds to bf16 to nearest even, spelled out under the interpreter); fp32 and fp16
    (exp and the divisions are numpy's there, torch's in the reference): scales within 1e-6 and
    at most 1 in 10^4 FP8 bytes different."""
    from fp8pass.kernels import triton_quantize as tq
    from fp8pass.kernels import triton_swiglu as tsw

    gen = torch.Generator().manual_seed(777)

    def compare(got, want, exact):
        for i, (g, w) in enumerate(zip(got, want)):
            if g.shape != w.shape or g.stride() != w.stride():
                return False, f"output {i}: {tuple(g.shape)} {g.stride()} vs {tuple(w.shape)} {w.stride()}"
            if g.dtype == torch.float32:
                rel = float(((g - w) / w).abs().max())
                if rel > (0.0 if exact else 1e-6):
                    return False, f"output {i} (scales): max relative difference {rel:.3g}"
            else:
                diff = float((g.view(torch.uint8) != w.view(torch.uint8)).float().mean())
                if diff > (0.0 if exact else 1e-4):
                    return False, f"output {i} (FP8): {diff:.3g} of the bytes differ"
        return True, ""

    def dual(x):
        return tq.quantize_1x128_128x1(x, col_layout="transposed")

    for dtype in (torch.bfloat16, torch.float32, torch.float16):
        for m in (256, 200):  # a tail of 72 rows in the second 128-row tile
            a = (torch.randn(m, 256, generator=gen) * 3).to(dtype)
            b = torch.randn(m, 256, generator=gen).to(dtype)
            g = torch.randn(m, 256, generator=gen).to(dtype)
            exact = dtype == torch.bfloat16
            tag = f"{str(dtype).replace('torch.', '')},M={m}"

            def forward(a=a, b=b, exact=exact):
                return compare(tsw.swiglu_quantize_1x128_128x1(a, b), dual(ref.swiglu(a, b)), exact)

            def backward(g=g, a=a, b=b, exact=exact):
                grad_a, grad_b = ref.swiglu_backward(g, a, b)
                got = tsw.swiglu_grad_a_quantize_1x128_128x1(g, a, b) + tsw.swiglu_grad_b_quantize_1x128_128x1(g, a)
                return compare(got, dual(grad_a) + dual(grad_b), exact)

            def one_copy(a=a, b=b, exact=exact):  # the product's 1x128 copy alone, and its 128x1 one
                prod = ref.swiglu(a, b)
                got = tsw.swiglu_quantize_1x128(a, b) + tsw.swiglu_quantize_128x1(a, b)
                return compare(got, tq.quantize_1x128(prod) + tq.quantize_128x1(prod, layout="transposed"), exact)

            check(f"swiglu_quantize_1x128_128x1[{tag}]", forward)
            check(f"swiglu_grad_quantize_1x128_128x1[{tag}]", backward)
            check(f"swiglu_quantize_1x128 / _128x1[{tag}]", one_copy)

    def strided():  # inputs read through their strides (a view of a wider tensor), no copy
        wide = torch.randn(200, 512, generator=gen).to(torch.bfloat16)
        a, b = wide[:, :256], wide[:, 256:]
        return compare(tsw.swiglu_quantize_1x128_128x1(a, b), dual(ref.swiglu(a, b)), True)

    check("swiglu_quantize_1x128_128x1[strided]", strided)

    def op_layouts():  # the CUDA kernels return what the ops' fake kernels say (Inductor asserts it)
        a = torch.randn(200, 256, generator=gen).to(torch.bfloat16)
        ops = torch.ops.fp8pass
        for got, want in ((tsw.swiglu_quantize_1x128_128x1(a, a), ops.swiglu_quantize_1x128_128x1(a, a)),
                          (tsw.swiglu_quantize_1x128(a, a), ops.swiglu_quantize_1x128(a, a)),
                          (tsw.swiglu_quantize_128x1(a, a), ops.swiglu_quantize_128x1(a, a)),
                          (tsw.swiglu_grad_a_quantize_1x128_128x1(a, a, a), ops.swiglu_grad_a_quantize_1x128_128x1(a, a, a)),
                          (tsw.swiglu_grad_b_quantize_1x128_128x1(a, a), ops.swiglu_grad_b_quantize_1x128_128x1(a, a))):
            g = [(tuple(t.shape), t.stride(), t.dtype) for t in got]
            w = [(tuple(t.shape), t.stride(), t.dtype) for t in want]
            if g != w:
                return False, f"{g} vs {w}"
        return True, ""

    check("swiglu layouts of the CUDA kernels = the ops'", op_layouts)


@triton.jit
def _tile_order_kernel(mb_ptr, kb_ptr, n_mb, n_kb, GROUP_M: tl.constexpr):
    t = tl.program_id(0)
    mb, kb = _tm._grouped_tile(t, n_mb, n_kb, GROUP_M)
    tl.store(mb_ptr + t, mb)
    tl.store(kb_ptr + t, kb)


def run_tile_order() -> None:
    """tile_math._grouped_tile (the Gluon dual quantizer's tile order) against the order it
    is meant to give, written as nested loops: groups of GROUP_M rows of tiles, each walked along K
    with the group's rows innermost; every tile exactly once, a short last group included."""
    for n_mb, n_kb, group in ((5, 3, 1), (5, 3, 2), (7, 4, 3), (3, 2, 8), (130, 32, 1), (130, 32, 8)):
        def order(n_mb=n_mb, n_kb=n_kb, group=group):
            mb = torch.full((n_mb * n_kb,), -1, dtype=torch.int32)
            kb = torch.full_like(mb, -1)
            _tile_order_kernel[(n_mb * n_kb,)](mb, kb, n_mb, n_kb, GROUP_M=group)
            want = [(first + r, k) for first in range(0, n_mb, group)
                    for k in range(n_kb) for r in range(min(group, n_mb - first))]
            got = list(zip(mb.tolist(), kb.tolist()))
            if got != want:
                bad = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
                return False, f"program {bad}: tile {got[bad]}, expected {want[bad]}"
            return True, ""

        check(f"grouped tile order[{n_mb}x{n_kb},GROUP_M={group}]", order)


@triton.jit
def _cat3_gather_kernel(x0, x1, x2, out_ptr, M, K, T, KB1, KB2, D,
                        s0b, s0t, s0h, s0d, s1b, s1t, s1h, s1d, s2b, s2t, s2h, s2d, HEAD_COLS: tl.constexpr):
    """out[M, K] = the three parts side by side, one 128x128 tile per program, read through
    _cat3_tile_ptrs as the Gluon dual quantizer of a fused QKV gradient reads them."""
    mb = tl.program_id(0)
    kb = tl.program_id(1)
    rows = mb * 128 + tl.arange(0, 128)
    j = tl.arange(0, 128)
    ptrs = _tm._cat3_tile_ptrs(x0, x1, x2, rows, j, kb, KB1, KB2, T, D,
                               s0b, s0t, s0h, s0d, s1b, s1t, s1h, s1d, s2b, s2t, s2h, s2d, HEAD_COLS)
    mask = (rows < M)[:, None]
    tl.store(out_ptr + rows[:, None] * K + (kb * 128 + j)[None, :], tl.load(ptrs, mask=mask), mask=mask)


def run_cat3_addressing() -> None:
    """tile_math._cat3_tile_ptrs against torch.cat of the parts viewed as [B*T, H*D]: parts
    in the layouts a fused QKV projection's gradient comes in ([B, T, H, D] views of [B, H, T, D]
    or [B, T, H, D] storage, a slice of a [B, T, 3, H, D] buffer), grouped-query widths (K and V
    narrower than Q), head dims 32, 64, 128 and 256 (a tile spanning several heads, or part of
    one), and a row count that is not a multiple of 128."""
    gen = torch.Generator().manual_seed(7)

    def parts_of(b, t, heads, d, layout):
        out = []
        if layout == "qkv buffer":
            buf = torch.randn(b, t, 3, heads[0], d, generator=gen)
            return [buf[:, :, i] for i in range(3)]
        for h in heads:
            if layout == "bhtd":  # attention-layout storage, seen as [B, T, H, D]
                out.append(torch.randn(b, h, t, d, generator=gen).transpose(1, 2))
            else:
                out.append(torch.randn(b, t, h, d, generator=gen))
        return out

    cases = [(2, 100, (4, 4, 4), 64, "bhtd"), (1, 300, (2, 2, 2), 128, "btHd"), (2, 70, (2, 2, 2), 128, "qkv buffer"),
             (3, 50, (8, 2, 2), 64, "bhtd"), (2, 40, (1, 1, 1), 256, "bhtd"), (1, 130, (8, 4, 4), 32, "btHd")]
    for b, t, heads, d, layout in cases:
        def gather(b=b, t=t, heads=heads, d=d, layout=layout):
            parts = parts_of(b, t, heads, d, layout)
            want = torch.cat([p.reshape(b * t, -1) for p in parts], dim=1)
            m, k = want.shape
            widths = [p.shape[2] * p.shape[3] for p in parts]
            got = torch.full_like(want, float("nan"))
            strides = [s for p in parts for s in p.stride()]
            _cat3_gather_kernel[(triton.cdiv(m, 128), k // 128)](
                *parts, got, m, k, t, widths[0] // 128, (widths[0] + widths[1]) // 128, d, *strides,
                HEAD_COLS=128 if d % 128 == 0 else d)
            if not torch.equal(got, want):
                bad = (got != want).nonzero()[0].tolist()
                return False, f"first wrong element {bad}: {got[bad[0], bad[1]]} vs {want[bad[0], bad[1]]}"
            return True, ""

        check(f"cat3 addressing[{layout},B={b},T={t},H={heads},D={d}]", gather)


if __name__ == "__main__":
    which = sys.argv[1:] or ["quantize", "gemm", "grouped", "swiglu"]
    if "quantize" in which:
        run_quantize()
        run_tile_order()
        run_cat3_addressing()
    if "swiglu" in which:
        run_swiglu()
    if "gemm" in which:
        run_gemm()
    if "grouped" in which:
        run_grouped_gemm()
    print(f"{len(FAILED)} failed", flush=True)
    sys.exit(1 if FAILED else 0)
