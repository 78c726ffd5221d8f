"""The Gluon quantizer kernels, which the Triton interpreter cannot run, compiled for sm90 on the
CPU (Triton ships ptxas): a Gluon API change in a new Triton fails here in CI rather than on the
first GPU run, and on the Triton their settings were measured with, so does a register spill
(their speed rests on 128 registers without spilling, see kernels/triton_quantize_gluon.py).
Their numerics are the plain-Triton helpers, which the interpreter tests check;
tests/test_triton_gpu.py checks these kernels bit for bit on a GPU."""

from __future__ import annotations

import os
import re
import subprocess
import warnings

import pytest
import torch

triton = pytest.importorskip("triton")

from fp8pass.kernels import triton_quantize_gluon as tqg  # noqa: E402
from fp8pass.kernels.launch import COMPILE_OPTIONS  # noqa: E402  (as every launch passes them)

_MEASURED_TRITON = "3.6."  # the Triton of the H200 runs that chose the kernels' settings
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
pytestmark = [
    pytest.mark.skipif(tqg.gluon is None, reason=f"no Gluon in this Triton: {tqg._GLUON_IMPORT_ERROR}"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles, does not interpret"),
    pytest.mark.skipif(not os.path.exists(os.path.join(_BIN, "cuobjdump")), reason="Triton without NVIDIA tools"),
]


def _compile_sm90(dtype: str, write_row: bool, row_spt: int, col_spt: int, tmp_path, group_m: int = 0):
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = {"x_ptr": f"*{dtype}", "qr_ptr": "*fp8e4nv", "sr_ptr": "*fp32", "qt_ptr": "*fp8e4nv", "sc_ptr": "*fp32",
           "M": "i32", "K": "i32", "sxm": "i32", "sxk": "i32", "WRITE_ROW": "constexpr", "ROW_SPT": "constexpr",
           "COL_SPT": "constexpr", "num_warps": "constexpr", "GROUP_M": "constexpr"}
    consts = {"sxk": 1, "WRITE_ROW": write_row, "ROW_SPT": row_spt, "COL_SPT": col_spt, "num_warps": tqg._WARPS,
              "GROUP_M": group_m}
    # as Triton specializes a launch on contiguous activations: 16-byte aligned pointers, and M, K
    # and the row stride divisible by 16 (the code, and its registers, differ without these)
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]]
             for n in ("x_ptr", "qr_ptr", "sr_ptr", "qt_ptr", "sc_ptr", "M", "K", "sxm")}
    return _registers_and_stack(GluonASTSource(tqg._quant_dual_kernel, sig, consts, attrs),
                                {"num_warps": tqg._WARPS, "maxnreg": tqg._MAXNREG}, tmp_path)


def _registers_and_stack(src, options: dict, tmp_path) -> tuple[int, int]:
    """Registers per thread and stack bytes (spills) of a kernel source compiled for sm90."""
    return _compile_sm90_usage(src, options, tmp_path)[:2]


def _compile_sm90_usage(src, options: dict, tmp_path) -> tuple[int, int, int]:
    """Registers per thread, stack bytes (spills) and shared-memory bytes of a kernel source
    compiled for sm90."""
    from triton.backends.compiler import GPUTarget

    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={**COMPILE_OPTIONS, **options})
    cubin = tmp_path / "kernel.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    usage = subprocess.run([os.path.join(_BIN, "cuobjdump"), "--dump-resource-usage", str(cubin)],
                           capture_output=True, text=True, check=True).stdout
    return (int(re.search(r"REG:(\d+)", usage).group(1)), int(re.search(r"STACK:(\d+)", usage).group(1)),
            compiled.metadata.shared)


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("kernel", ["dual", "128x1", "dual, grouped tile order"])
def test_gluon_quantizer_compiles_for_sm90_without_spills(dtype, kernel, tmp_path):
    if kernel.startswith("dual"):
        args = (True, tqg._ROW_SPT, tqg._COL_SPT)
    else:
        args = (False, tqg._ROW_SPT_128X1, tqg._COL_SPT_128X1)
    regs, stack = _compile_sm90(dtype, *args, tmp_path, group_m=8 if "grouped" in kernel else tqg._DUAL_GROUP_M)
    _check_registers(f"{kernel} kernel ({dtype})", regs, stack)


def _check_registers(what: str, regs: int, stack: int) -> None:
    """Within the register cap; no spills on the Triton the settings were measured with."""
    assert regs <= tqg._MAXNREG
    if triton.__version__.startswith(_MEASURED_TRITON):
        assert stack == 0, f"{what} spills: {stack} bytes of stack at {regs} registers"
    elif stack:
        # Triton 3.9 (this CI's) spills the bf16/fp16 dual kernel at 128 registers (40-88 bytes); its
        # speed there was never measured, so this is reported rather than failed
        warnings.warn(f"{what} spills {stack} bytes at {regs} registers on triton {triton.__version__} (no spills "
                      f"on {_MEASURED_TRITON}, where its settings were measured)")


@pytest.mark.parametrize("dtype,head_cols", [("bf16", 128), ("fp16", 128), ("bf16", 64)])
def test_gluon_cat3_quantizer_compiles_for_sm90_without_spills(dtype, head_cols, tmp_path):
    """The dual quantizer of a fused QKV gradient read in place from its three parts, specialized as
    a launch on [B, T, H, D] gradient views is (aligned pointers, unit element strides): within the
    register cap, and its loads 16 bytes wide as the plain dual quantizer's (the parts' addressing
    keeps runs of HEAD_COLS columns visibly contiguous)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = {"x0_ptr": f"*{dtype}", "x1_ptr": f"*{dtype}", "x2_ptr": f"*{dtype}", "qr_ptr": "*fp8e4nv",
           "sr_ptr": "*fp32", "qt_ptr": "*fp8e4nv", "sc_ptr": "*fp32", "M": "i32", "K": "i32", "T": "i32",
           "KB1": "i32", "KB2": "i32", "D": "i32"}
    sig |= {f"s{i}{c}": "i32" for i in range(3) for c in "bthd"}
    sig |= {"HEAD_COLS": "constexpr", "ROW_SPT": "constexpr", "COL_SPT": "constexpr", "num_warps": "constexpr",
            "GROUP_M": "constexpr"}
    consts = {"s0d": 1, "s1d": 1, "s2d": 1, "HEAD_COLS": head_cols, "ROW_SPT": tqg._ROW_SPT, "COL_SPT": tqg._COL_SPT,
              "num_warps": tqg._WARPS, "GROUP_M": max(tqg._DUAL_GROUP_M, 1)}
    names = list(sig)
    aligned = ["x0_ptr", "x1_ptr", "x2_ptr", "qr_ptr", "sr_ptr", "qt_ptr", "sc_ptr", "M", "K", "T", "D"]
    aligned += [f"s{i}{c}" for i in range(3) for c in "bth"]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = GluonASTSource(tqg._quant_dual_cat3_kernel, sig, consts, attrs)
    options = {"num_warps": tqg._WARPS, "maxnreg": tqg._MAXNREG}
    regs, stack = _registers_and_stack(src, options, tmp_path)
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={**COMPILE_OPTIONS, **options}).asm["ptx"]
    loads = re.findall(r"ld\.global(?:\.\w+)*", ptx)
    assert loads and all(".v4.b32" in ld or ".b32" not in ld for ld in loads), sorted(set(loads))
    assert sum(".v4.b32" in ld for ld in loads) >= 2, sorted(set(loads))  # 16 elements a thread and row: 2 x 16 B
    _check_registers(f"cat3 dual kernel ({dtype}, HEAD_COLS {head_cols})", regs, stack)


def _compile_swiglu_sm90(dtype: str, mode: int, tmp_path, write_row: bool = True, write_col: bool = True):
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = {"g_ptr": f"*{dtype}", "a_ptr": f"*{dtype}", "b_ptr": f"*{dtype}",
           "qr_ptr": "*fp8e4nv", "sr_ptr": "*fp32", "qt_ptr": "*fp8e4nv", "sc_ptr": "*fp32"}
    sig.update({n: "i32" for n in ("M", "K", "sgm", "sgk", "sam", "sak", "sbm", "sbk")})
    sig.update({n: "constexpr" for n in ("MODE", "WRITE_ROW", "WRITE_COL", "ROW_SPT", "COL_SPT", "num_warps")})
    options = tqg.swiglu_launch_options({"bf16": torch.bfloat16, "fp32": torch.float32}[dtype], mode)
    consts = {"sgk": 1, "sak": 1, "sbk": 1, "MODE": mode, "WRITE_ROW": write_row, "WRITE_COL": write_col,
              "ROW_SPT": tqg._ROW_SPT,
              "COL_SPT": tqg._COL_SPT,
              "num_warps": options["num_warps"]}
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]]
             for n in names if n.endswith("_ptr") or n in ("M", "K", "sgm", "sam", "sbm")}
    regs, stack = _registers_and_stack(GluonASTSource(tqg._swiglu_dual_kernel, sig, consts, attrs), options, tmp_path)
    return regs, stack, options.get("maxnreg", 255)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("mode,copies", [(0, "dual"), (1, "dual"), (2, "dual"), (0, "row"), (0, "col")],
                         ids=["forward", "grad_a", "grad_b", "forward_1x128_only", "forward_128x1_only"])
def test_gluon_swiglu_quantizer_compiles_for_sm90_without_spills(dtype, mode, copies, tmp_path):
    # the SwiGLU kernels hold two or three input tiles: 16 warps keep them under the 128-register
    # cap (kernels/triton_quantize_gluon.py)
    regs, stack, cap = _compile_swiglu_sm90(dtype, mode, tmp_path, copies != "col", copies != "row")
    assert regs <= cap
    assert stack == 0, f"SwiGLU kernel ({dtype}, mode {mode}) spills: {stack} bytes at {regs} registers"


def _compile_pipelined_sm90(dtype: str, mode: int, write_row: bool, write_col: bool, tmp_path):
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = {"g_ptr": f"*{dtype}", "a_ptr": f"*{dtype}", "b_ptr": f"*{dtype}",
           "qr_ptr": "*fp8e4nv", "sr_ptr": "*fp32", "qt_ptr": "*fp8e4nv", "sc_ptr": "*fp32"}
    sig.update({n: "i32" for n in ("M", "K", "sgm", "sam", "sbm")})
    sig.update({n: "constexpr" for n in ("MODE", "WRITE_ROW", "WRITE_COL", "ROW_SPT", "COL_SPT", "NUM_STAGES",
                                         "num_warps", "COL_FROM_SMEM", "SMEM_VEC", "SMEM_PER_PHASE", "SMEM_MAX_PHASE")})
    if mode == -1:  # the dual quantizer, or the 128x1 copy alone, as _launch passes them
        options = {"num_warps": tqg._PIPE_WARPS, "maxnreg": tqg._MAXNREG}
        spt = (tqg._ROW_SPT, tqg._COL_SPT) if write_row else (tqg._ROW_SPT_PIPE_128X1, tqg._COL_SPT_PIPE_128X1)
        stages = tqg._PIPE_STAGES
    else:
        options = tqg.swiglu_launch_options(torch.bfloat16, mode)
        spt = (tqg._ROW_SPT, tqg._COL_SPT)
        stages = tqg._PIPE_STAGES_SWIGLU
    col_from_smem = mode == -1 and not write_row and tqg._PIPE_COL_FROM_SMEM  # as _launch_pipelined_kernel
    stages = tqg.pipelined_stages(mode, write_col and not col_from_smem, stages)
    consts = {"MODE": mode, "WRITE_ROW": write_row, "WRITE_COL": write_col, "ROW_SPT": spt[0], "COL_SPT": spt[1],
              "NUM_STAGES": stages, "num_warps": options["num_warps"], "COL_FROM_SMEM": col_from_smem,
              **dict(zip(("SMEM_VEC", "SMEM_PER_PHASE", "SMEM_MAX_PHASE"),
                         tqg._PIPE_SWIZZLE_COL if col_from_smem else tqg._PIPE_SWIZZLE))}
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]]
             for n in names if n.endswith("_ptr") or n in ("M", "K", "sgm", "sam", "sbm")}
    src = GluonASTSource(tqg._pipelined_dual_kernel, sig, consts, attrs)
    return (*_compile_sm90_usage(src, options, tmp_path), options)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("mode,copies", [(-1, "dual"), (-1, "col"), (0, "row"), (0, "col"), (1, "dual"), (2, "dual")],
                         ids=["dual", "128x1", "swiglu_1x128", "swiglu_128x1", "grad_a", "grad_b"])
def test_pipelined_gluon_kernel_compiles_for_sm90_and_fits(dtype, mode, copies, tmp_path):
    """The pipelined form (row-major 2-byte inputs): no spills at its register cap, its stage ring
    within sm90's shared memory, and for the dual quantizer two CTAs per SM (_PIPE_CTAS), as its
    grid assumes."""
    regs, stack, shared, options = _compile_pipelined_sm90(dtype, mode, copies != "col", copies != "row", tmp_path)
    assert regs <= options.get("maxnreg", 255)
    what = f"pipelined kernel (mode {mode}, {copies}, {dtype})"
    if triton.__version__.startswith(_MEASURED_TRITON):
        assert stack == 0, f"{what} spills {stack} bytes at {regs} registers"
    elif stack:  # as the per-tile dual kernel above, on a Triton whose speed was not measured
        warnings.warn(f"{what} spills {stack} bytes at {regs} registers on triton {triton.__version__}")
    assert shared <= tqg._SMEM_BYTES
    if mode == -1:
        assert tqg._PIPE_CTAS * (shared + 1024) <= 228 * 1024, f"{shared} bytes of shared memory: one CTA per SM"
