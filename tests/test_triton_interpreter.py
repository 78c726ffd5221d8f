"""CPU (CI) checks of the Triton kernels.

* Under TRITON_INTERPRET=1, in a subprocess (the variable must be set before Triton jits a
  kernel): every quantization kernel bit-exact against reference.py, every GEMM role exact
  against reference.gemm_blockwise (tests/triton_interp_checks.py says how the inputs avoid the
  interpreter's FP8 rounding bug).
* Ahead-of-time compilation for sm_90a (no GPU needed, Triton ships ptxas): the plain-Triton
  GEMM and the Gluon GEMM compile; the Gluon one without register spills and with its wgmmas
  left asynchronous (ptxas serializes them when it sees a non-wgmma access to an in-flight
  accumulator, which is what the kernel's structure exists to avoid).
* The CUDA registration runs on a CPU build without touching a GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
pytest.importorskip("numpy", reason="Triton's interpreter needs numpy")

HERE = Path(__file__).resolve().parent


def _run_checks(which: str) -> str:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(HERE / "triton_interp_checks.py"), which],
                          env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert proc.returncode == 0 and not fails, (
        f"exit {proc.returncode}\n" + "\n".join(fails) + "\n--- stderr tail ---\n" + proc.stderr[-3000:])
    n_ok = sum(line.startswith("OK ") for line in out.splitlines())
    assert n_ok > 0, out
    return out


def test_quantize_kernels_match_reference_under_interpreter():
    out = _run_checks("quantize")
    for name in ("quantize_1x128[", "quantize_128x1[", "quantize_1x128_128x1[", "quantize_128x128[",
                 "quantize transposed outputs", "grouped tile order[130x32,GROUP_M=8]",
                 "cat3 addressing[bhtd,B=3,T=50,H=(8, 2, 2),D=64]"):
        assert f"OK {name}" in out


def test_swiglu_quantize_kernels_match_reference_under_interpreter():
    out = _run_checks("swiglu")
    for name in ("swiglu_quantize_1x128_128x1[bfloat16,M=200]", "swiglu_grad_quantize_1x128_128x1[bfloat16,M=200]",
                 "swiglu_quantize_1x128_128x1[strided]", "swiglu layouts of the CUDA kernels = the ops'"):
        assert f"OK {name}" in out


def test_gemm_kernel_matches_reference_under_interpreter():
    out = _run_checks("gemm")
    for role in ("fprop", "dgrad", "wgrad"):
        assert f"OK gemm_blockwise[{role}," in out


def test_grouped_gemm_kernel_matches_reference_under_interpreter():
    out = _run_checks("grouped")
    for rows in (256, 200):
        for case in ("quantize_128x128[stack", "quantize_128x128_transposed[stack",
                     "quantize_128x128_transposed[stack view"):
            assert f"OK {case} 3x{rows}x256]" in out
    assert "OK row_tile_table[9 groups,BM=64]" in out and "OK row_tile_table[4 groups,BM=128]" in out
    for case in ("fprop9", "wgrad9", "fprop9_k320"):
        assert f"OK gemm_blockwise_grouped[{case},9 groups]" in out
    for role in ("fprop", "dgrad", "dgrad_kmajor", "wgrad"):
        for dtype in ("float32", "bfloat16"):
            assert f"OK gemm_blockwise_grouped[{role},{dtype}," in out


# --------------------------------------------------------------------------------------------
# ahead-of-time compilation for sm_90a
# --------------------------------------------------------------------------------------------
def _nvidia_bin(tool: str) -> str | None:
    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool
    return str(p) if p.exists() else shutil.which(tool)


_COMPILE_SCRIPT = r"""
import sys, json
import triton
from triton.backends.compiler import GPUTarget
kind = sys.argv[1]
target = GPUTarget("cuda", 90, 32)
if kind.startswith("gluon"):
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.experimental.gluon import language as gl
    from fp8pass.kernels import triton_gemm_gluon as G
    bm, bn, w, st, bblock = (192 if kind == "gluon_ws192" else 128), 128, 8, 4, sys.argv[2] == "1"
    am = bm // G._a_stage_parts(bm)  # rows of one TMA load of A
    al = gl.NVMMASharedLayout.get_default_for([am, 128], gl.float8e4nv)
    bl = gl.NVMMASharedLayout.get_default_for([bn, 128], gl.float8e4nv)
    sig = {"a_desc": f"tensordesc<fp8e4nv[{am},128],{al!r}>", "b_desc": f"tensordesc<fp8e4nv[{bn},128],{bl!r}>",
           "c_ptr": "*bf16", "as_ptr": "*fp32", "bs_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32",
           "s_cm": "i32", "s_cn": "i32", "s_asm": "i32", "s_ask": "i32", "s_bsk": "i32", "s_bsn": "i32",
           "B_BLOCK": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "NUM_STAGES": "constexpr",
           "GROUP_M": "constexpr", "num_warps": "constexpr"}
    const = {"B_BLOCK": bblock, "BLOCK_M": bm, "BLOCK_N": bn, "NUM_STAGES": st, "GROUP_M": 8, "num_warps": w,
             "s_cn": 1, "s_ask": 1}
    if kind.startswith("gluon_ws"):  # the warp-specialized kernel: 4 warps are its default (producer) partition
        # MoE experts: 1 rows grouped (the row-tile table), 2 tokens grouped (Wgrad); both store masked
        grouping = {"gluon_ws_grouped": 1, "gluon_ws_grouped_k": 2}.get(kind, 0)
        cl = gl.NVMMASharedLayout.get_default_for([64, bn], gl.bfloat16)
        sig = {"a_desc": sig["a_desc"], "b_desc": sig["b_desc"],
               "c_desc": "constexpr" if grouping else f"tensordesc<bf16[64,{bn}],{cl!r}>",
               **{n: t for n, t in sig.items() if n not in ("a_desc", "b_desc", "c_ptr", "s_cm", "s_cn")},
               "c_ptr": "*bf16" if grouping else "constexpr", "s_cg": "i32", "s_cm": "i32", "s_cn": "i32",
               "tiles_ptr": "*i32" if grouping else "constexpr", "row_tiles": "i32", "s_bsg": "i32",
               "CONSUMER_REGS": "constexpr", "OVERLAP": "constexpr", "SPLIT_N": "constexpr", "GROUPING": "constexpr"}
        # what the launches pass: the grouped ones no c_desc and a contiguous out (s_cn 1, which Triton
        # specializes), the dense one None and zeros for the grouped arguments
        const.update({"c_desc": None, "s_cn": 1} if grouping else {"c_ptr": None, "tiles_ptr": None})
        if grouping == 1:
            cfg = G.GROUPED_WS_CONFIGS[0]
        elif grouping == 2:
            cfg = G.GROUPED_K_WS_CONFIGS[0]
        else:
            cfg = G.WS_CONFIGS[0] if bm == 128 else G.WS_CONFIGS_192[0]
        launch_regs, consumer_regs = G.ws_registers(bm // 64)
        const.update(CONSUMER_REGS=consumer_regs, OVERLAP=cfg[4] == "ws2", SPLIT_N=False, NUM_STAGES=cfg[3],
                     GROUPING=grouping)
        w = const["num_warps"] = 4
        src = GluonASTSource(G._gluon_gemm_ws_kernel, sig, const)
        c = triton.compile(src, target=target, options={"num_warps": w, "maxnreg": launch_regs})
    else:
        src = GluonASTSource(G._gluon_gemm_kernel, sig, const)
        c = triton.compile(src, target=target, options={"num_warps": w})
elif kind == "grouped":
    from triton.compiler import ASTSource
    from fp8pass.kernels import triton_gemm_grouped as T
    ints = ["M", "N", "K", "G", "s_am", "s_ak", "s_bg", "s_bk", "s_bn", "s_cg", "s_cm", "s_cn", "s_asm", "s_ask",
            "s_bsg", "s_bsk", "s_bsn", "LAYOUT", "M_KEY", "K_KEY"]
    sig = {n: "i32" for n in ints}
    sig.update({"a_ptr": "*fp8e4nv", "b_ptr": "*fp8e4nv", "c_ptr": "*bf16", "as_ptr": "*fp32", "bs_ptr": "*fp32",
                "offs_ptr": "*i32", "GROUP_K": "constexpr", "G_POW2": "constexpr", "EVEN_K": "constexpr",
                "BLOCK_M": "constexpr", "BLOCK_N": "constexpr"})
    const = {"GROUP_K": sys.argv[2] == "1", "G_POW2": 128, "EVEN_K": True, "BLOCK_M": 128, "BLOCK_N": 128,
             "s_ak": 1, "s_bk": 1, "s_cn": 1}
    src = ASTSource(T._grouped_gemm_kernel, sig, const)
    c = triton.compile(src, target=target, options={"num_warps": 8, "num_stages": 3})
else:
    from triton.compiler import ASTSource
    from fp8pass.kernels import triton_gemm as T
    sig = {n: "i32" for n in ["M", "N", "K", "s_am", "s_ak", "s_bk", "s_bn", "s_cm", "s_cn", "s_asm", "s_ask",
                               "s_bsk", "s_bsn", "LAYOUT", "M_KEY", "K_KEY"]}
    sig.update({"a_ptr": "*fp8e4nv", "b_ptr": "*fp8e4nv", "c_ptr": "*bf16", "as_ptr": "*fp32", "bs_ptr": "*fp32",
                "B_BLOCK": "constexpr", "EVEN_K": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
                "GROUP_M": "constexpr"})
    const = {"B_BLOCK": True, "EVEN_K": True, "BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 8,
             "s_ak": 1, "s_bk": 1, "s_cn": 1, "s_ask": 1}
    src = ASTSource(T._gemm_kernel, sig, const)
    c = triton.compile(src, target=target, options={"num_warps": 8, "num_stages": 3})
open(sys.argv[3], "wb").write(c.asm["cubin"])
"""


def _compile(kind: str, arg: str, tmp_path) -> Path:
    cubin = tmp_path / f"{kind}_{arg}.cubin"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, kind, arg, str(cubin)], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "experimental" in proc.stderr and "No module" in proc.stderr:
        pytest.skip("this Triton has no Gluon")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cubin


def _sass_and_usage(cubin: Path) -> tuple[str, str]:
    cuobjdump = _nvidia_bin("cuobjdump")
    if cuobjdump is None:
        pytest.skip("no cuobjdump to inspect the compiled kernel")
    sass = subprocess.run([cuobjdump, "--dump-sass", str(cubin)], capture_output=True, text=True).stdout
    usage = subprocess.run([cuobjdump, "--dump-resource-usage", str(cubin)], capture_output=True, text=True).stdout
    return sass, usage


def test_triton_gemm_compiles_for_sm90(tmp_path):
    sass, usage = _sass_and_usage(_compile("tl", "1", tmp_path))
    assert "QGMMA" in sass  # fp8 wgmma, not a slower path
    assert "LOCAL:0" in usage.replace(" ", ""), usage


@pytest.mark.parametrize("group_k", ["0", "1"], ids=["rows_grouped", "k_grouped"])
def test_grouped_gemm_compiles_for_sm90(tmp_path, group_k):
    """The MoE kernel (both groupings, K-major operands) compiles to fp8 wgmma without spills."""
    sass, usage = _sass_and_usage(_compile("grouped", group_k, tmp_path))
    assert "QGMMA" in sass
    assert "LOCAL:0" in usage.replace(" ", ""), f"register spills: {usage}"


@pytest.mark.parametrize("b_block", ["1", "0"], ids=["b128x128", "b128x1"])
def test_gluon_gemm_compiles_async_without_spills(tmp_path, b_block):
    sass, usage = _sass_and_usage(_compile("gluon", b_block, tmp_path))
    assert "QGMMA" in sass
    assert "LOCAL:0" in usage.replace(" ", ""), f"register spills: {usage}"
    # one partial is waited for while the other is in flight; serialized code waits for 0 after
    # every wgmma instead
    assert "DEPBAR.LE gsb0, 0x1" in sass, "wgmma serialized by ptxas"


@pytest.mark.parametrize("b_block", ["1", "0"], ids=["b128x128", "b128x1"])
def test_gluon_ws_gemm_compiles_without_spills(tmp_path, b_block):
    """The warp-specialized kernel: both consumer warpgroups' wgmma chains are there, setmaxnreg
    hands them WS_CONSUMER_REGS and the producer the rest, and nothing spills at that budget."""
    from fp8pass.kernels import triton_gemm_gluon as G

    sass, usage = _sass_and_usage(_compile("gluon_ws", b_block, tmp_path))
    assert "QGMMA.64x128x32" in sass  # each consumer: 64 rows of the 128x128 tile
    assert f"TRY_ALLOC.CTAPOOL UP0, {hex(G.WS_CONSUMER_REGS)}" in sass
    assert "UTMASTG" in sass  # the epilogue's TMA store
    # the overlapped schedule (block k+1's wgmma in flight during block k's promotion) survived
    # ptxas, and nothing spills, with either b-scale pairing: 128x1 b scales are held two blocks
    # ahead as loaded (one value a thread) and take the accumulator's layout only when used (held
    # in that layout, a 32-register vector per thread, they spilled 160 bytes)
    assert "DEPBAR.LE gsb0, 0x1" in sass, "wgmma serialized by ptxas"
    assert "LOCAL:0" in usage.replace(" ", "") and "STACK:0" in usage.replace(" ", ""), usage
    # launch budget: 12 warps at _WS_LAUNCH_REGS must fit the SM's 65536 registers; the producer
    # (default) warpgroup is left what the consumers do not take, at least setmaxnreg's minimum 24
    assert 12 * 32 * G._WS_LAUNCH_REGS <= 65536
    producer = 12 * 32 * G._WS_LAUNCH_REGS // 128 - 2 * G.WS_CONSUMER_REGS
    assert producer >= 24 and f"DEALLOC.CTAPOOL {hex(producer)}" in sass


def test_gluon_ws_grouped_gemm_compiles_without_spills(tmp_path):
    """The WS kernel over MoE experts (rows grouped, 128x128 b scales per expert): both consumer
    warpgroups' wgmma chains, the overlapped schedule kept, TMA loads, the masked store from the
    registers instead of the TMA store, and no spill at the consumers' 240 registers."""
    from fp8pass.kernels import triton_gemm_gluon as G

    sass, usage = _sass_and_usage(_compile("gluon_ws_grouped", "1", tmp_path))
    assert "QGMMA.64x128x32" in sass
    assert f"TRY_ALLOC.CTAPOOL UP0, {hex(G.WS_CONSUMER_REGS)}" in sass
    assert "UTMALDG" in sass and "UTMASTG" not in sass
    assert "DEPBAR.LE gsb0, 0x1" in sass, "wgmma serialized by ptxas"
    assert "LOCAL:0" in usage.replace(" ", "") and "STACK:0" in usage.replace(" ", ""), usage


def test_gluon_ws_grouped_k_gemm_compiles_without_spills(tmp_path):
    """The WS kernel's Wgrad over MoE experts (tokens grouped, 128x1 scales): the serial schedule's
    wgmma chains, the shared-memory clearing of a block's tokens outside the expert (stores to
    shared memory, the async-proxy fence, a barrier of the consumer's 128 threads only, not of the
    CTA's 384, which the producer never reaches), and no spill at 240 registers."""
    from fp8pass.kernels import triton_gemm_gluon as G

    sass, usage = _sass_and_usage(_compile("gluon_ws_grouped_k", "0", tmp_path))
    assert "QGMMA.64x128x32" in sass
    assert f"TRY_ALLOC.CTAPOOL UP0, {hex(G.WS_CONSUMER_REGS)}" in sass
    assert "UTMALDG" in sass and "UTMASTG" not in sass
    # in each consumer (named barriers 2 and 3; 0 and 1 are the partitions' own), the cleared A
    # stage's stores fenced for the async proxy and then its warpgroup synchronized
    cleared = re.findall(r"STS\.128[^\n]*\n(?:[^\n]*\n){0,4}[^\n]*FENCE\.VIEW\.ASYNC\.S[^\n]*\n"
                         r"(?:[^\n]*\n){0,2}[^\n]*BAR\.SYNC\.DEFER_BLOCKING (0x[0-9a-f]+), 0x80", sass)
    assert sorted(cleared) == ["0x2", "0x3"], cleared
    assert "LOCAL:0" in usage.replace(" ", "") and "STACK:0" in usage.replace(" ", ""), usage


@pytest.mark.parametrize("b_block", ["1", "0"], ids=["b128x128", "b128x1"])
def test_gluon_ws_gemm_192_rows_compiles_without_spills(tmp_path, b_block):
    """The 192-row tile (three consumer warpgroups, the serial K loop, A loaded as three 64-row
    TMA blocks): all three wgmma chains there, setmaxnreg hands each consumer 160 registers, and
    nothing spills at that budget with either b-scale pairing (128x1 b scales are held as loaded,
    one value a thread, and take the accumulator's layout only when used: held in that layout
    beside the next block's, they spilled 240 bytes)."""
    from fp8pass.kernels import triton_gemm_gluon as G

    sass, usage = _sass_and_usage(_compile("gluon_ws192", b_block, tmp_path))
    launch_regs, consumer_regs = G.ws_registers(3)
    assert (launch_regs, consumer_regs) == (128, 160) and 16 * 32 * launch_regs <= 65536
    assert sass.count("QGMMA.64x128x32") == 3 * 4  # three consumers, four k=32 steps a K block
    assert sass.count(f"TRY_ALLOC.CTAPOOL UP0, {hex(consumer_regs)}") == 3
    assert sass.count("UTMALDG") >= 4  # A's three 64-row blocks and B's
    assert "LOCAL:0" in usage.replace(" ", "") and "STACK:0" in usage.replace(" ", ""), usage


def test_192_row_tile_is_a_default_candidate_unless_left_out():
    """The autotuner's default candidates include the 192-row tile (faster than the 128-row ones in
    Fprop and Dgrad at the large shapes on an H100); FP8PASS_GEMM_WS192=0 leaves it out."""
    code = ("from fp8pass.kernels import triton_gemm_gluon as G\n"
            "print(sorted({c[0] for c in G.ws_candidates()}))\n")
    got = {}
    for value in ("0", "1", None):
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        env.pop("FP8PASS_GEMM_WS192", None)
        if value is not None:
            env["FP8PASS_GEMM_WS192"] = value
        env.pop("TRITON_INTERPRET", None)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got[value] = proc.stdout.strip().splitlines()[-1]
    assert got == {"0": "[128]", "1": "[128, 192]", None: "[128, 192]"}, got


def test_cuda_registration_is_harmless_on_cpu():
    code = (
        "import torch, fp8pass.kernels as k\n"
        "from fp8pass.kernels import cuda\n"
        "assert cuda.register() and cuda.registered()\n"
        "x = torch.randn(4, 256)\n"
        "q, s = torch.ops.fp8pass.quantize_1x128(x)\n"  # the CPU path stays the reference
        "eq, es = k.reference.quantize_1x128(x)\n"
        "assert torch.equal(q.view(torch.uint8), eq.view(torch.uint8)) and torch.equal(s, es)\n"
        "assert not torch.cuda.is_initialized()\n"
        # the Triton kernels sit on the CUDA key itself (no custom-op Python wrappers per call),
        # with autograd a fallthrough there; the CPU keeps the custom op's reference kernel
        "has = torch._C._dispatch_has_kernel_for_dispatch_key\n"
        "for name in ('quantize_1x128', 'quantize_128x1', 'quantize_1x128_128x1', 'quantize_128x128',\n"
        "             'gemm_blockwise'):\n"
        "    assert has('fp8pass::' + name, 'CUDA') and has('fp8pass::' + name, 'AutogradCUDA'), name\n"
        "    assert not has('fp8pass::' + name, 'CPU'), name\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
