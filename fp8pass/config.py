"""All options of the fp8 backend, as one frozen dataclass.

Defaults follow DeepSeek-V3: E4M3 everywhere, 1x128 tiles for activations and gradients,
128x128 blocks for weights, the output head kept in high precision.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
from typing import Callable, Optional

import torch

RECIPES = ("deepseek_v3",)
FORMATS = ("e4m3",)

ModuleFilter = Callable[[str, Optional[torch.nn.Module]], bool]


def _callable_key(fn) -> str:
    """Source, captured values and defaults of a callable: two filters that can decide differently
    must not share a cached graph. (A captured object without a stable repr makes the key unique
    to this process, which costs a cache miss, never a wrong graph.)"""
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        src = repr(getattr(fn, "__code__", fn))
    cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _has_contents(c)]
    return (f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}:{src}:"
            f"{cells!r}:{getattr(fn, '__defaults__', None)!r}")


def _has_contents(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of `backend="fp8"`; pass them as `torch.compile(m, backend="fp8", options={...})`
    or `fp8pass.backend(**options)`.

    recipe: the scaling recipe; "deepseek_v3" = 1x128 activation/gradient tiles, 128x128 weight
        blocks, online amax scaling, FP32 promotion per 128-wide K block.
    fp8_format: element format of every FP8 tensor; "e4m3" (DeepSeek uses E4M3 for all tensors).
    fprop, dgrad, wgrad: which of the three GEMMs of a Linear run in FP8.
    fp8_output_head: convert the model's output head too (the last projection before the graph's
        outputs, or a Linear whose weight is tied to an embedding). Off by default, as in DeepSeek.
    fp8_moe_gates: convert MoE routers too (a Linear whose output picks experts through topk). Off by
        default, as in DeepSeek-V3, which keeps its gating modules in high precision.
    grouped_gemms: convert MoE experts' grouped GEMMs too (`torch._grouped_mm` of the tokens routed
        to each expert by a [num_experts, out, in] weight stack, as transformers' "grouped_mm"
        experts run): the stack in 128x128 blocks per expert, the tokens in 1x128 tiles, Wgrad's
        128-token tiles those of all routed tokens (kernels/reference.py gemm_blockwise_grouped).
        Off by default until its CUDA kernels are measured on a GPU (kernels/triton_gemm_grouped.py,
        plain Triton, whose loop ran dense FP8 GEMMs at 0.55-0.6x cuBLAS blockwise on an H200 in
        session 11; for Fprop and Dgrad also the warp-specialized Gluon kernel, whose dense form
        ran at 0.91-0.97x): they may not beat BF16's grouped GEMM. Numerics are tested on the CPU.
    module_filter: `fn(fqn, module) -> bool`; a matmul site is converted only if it returns True.
        `module` is the nn.Module instance when it can be found, else None.
    fp8_saved_activations: also keep in FP8 (1x128 tiles) the converted Linears' outputs that the
        backward saves as an activation function's input (SwiGLU's two inputs, GELU's input), as
        DeepSeek-V3 does; the backward dequantizes them inside the activation's backward kernel.
        Off by default: on an H200 it cut the 1B train step's peak memory from 0.94x to 0.84x of
        BF16's, but moved the 350M run's final loss from within 0.25% of BF16 (+0.15%, -0.16% at
        two seeds) to +0.26% and +0.56% (benchmarks/RESULTS.md, session 7).
    fp8_saved_activations_min_bytes: only tensors at least this large are stored so.
    recompute_fp8_weights: quantize each weight again in backward (for Dgrad, straight into the
        transposed layout that GEMM reads) instead of keeping its FP8 copy from forward to backward
        and transposing it there: one FP8 copy per weight less held through the step, and one pass
        over the weight in place of a transposing pass over its FP8 copy.
    recompute_fp8_activations: make Wgrad's 128x1 copy of a Linear's input in backward, from the
        input in high precision that backward has anyway (the attention output SDPA saves) or
        recomputes from what it saves (a norm's output, the SwiGLU product), instead of saving the
        copy from forward; a site where that would need more saved bytes keeps the saved copy.
        Same numbers (the same quantization of the same values), less memory held through the
        step, one more pass over those inputs in backward. (With fp8_saved_activations too, the
        SwiGLU product is recomputed from the FP8-stored inputs: a slightly different Wgrad input
        for w2.) On by default since session 12, with fuse_swiglu (which keeps the recomputed
        SwiGLU product out of memory): on an H200 the 1B train step's peak is 0.83x of BF16's
        (11.85 vs 14.22 GiB; 0.94x with both off) at 1.13x BF16's speed (1.15x with both off, in
        another run), and the Llama block's 0.92x (2702 vs 2930 MiB; 0.98x with both off) at
        1.33x; the 350M run ended +0.24% over BF16's loss at seed 0 and -0.35% at seed 1 (last 200
        steps, against session 7's BF16 runs of the same seeds; the gate is within 0.25%)
        (benchmarks/RESULTS.md, sessions 12-13). Without fuse_swiglu this option alone raised the
        block's peak to 1.20x (the BF16 product written beside the two input gradients).
    fuse_quantization: generate each activation/gradient quantization inside the Inductor kernel
        that produces its input (norm, SiLU*mul, residual add, backward kernels) instead of as a
        separate kernel reading the input back from memory. Off by default: on an H200 the
        Inductor-generated quantization was slower than the hand-written Triton kernels (Llama
        block 39.5 vs 34.2 ms; benchmarks/RESULTS.md).
    fuse_swiglu: compute a SwiGLU MLP's silu(a) * b inside the kernel that makes w2's FP8
        input copies, and in backward both its input gradients inside the kernel that makes their
        FP8 copies, so the BF16 product and gradients never go to memory (lowering/swiglu.py).
        Matches `F.silu(a) * b` in the model's code; values agree with the unfused path up to the
        last bit of exp and a division (see kernels/triton_swiglu.py). On by default since session
        12 (see recompute_fp8_activations). Alone it did not pay in session 10 on an H200: the
        fused kernels beat the unfused pairs in isolation (16384 x 14336: forward 0.479 vs 0.592
        ms, backward 1.059 vs 1.080) but not inside a Llama block step (1.696 vs 1.658 ms), peak
        2900 vs 2872 MiB (benchmarks/RESULTS.md, session 10).
    fold_gradient_cat: quantize a fused QKV projection's output gradient (the concatenation of the
        attention's three input gradients) straight from the three gradients, without writing
        and reading back their concatenation (lowering/cat_quantize.py): the same numbers, one
        pass over 2 x B*T*3*dim bytes less a layer and step (in place on sm90; elsewhere the op
        concatenates first). On an H100 the Llama block's step kernels took 268 us less (the cat
        kernel gone; benchmarks/RESULTS.md, session 16).
    inductor_buffers: lower each quantization as its out variant on buffers that Inductor
        allocates (or reuses) in its generated code, instead of the op allocating its
        outputs in Python on every call (lowering/allocated_outputs.py): the same numbers, less
        host work per op. On an H200 the 1B train step took 74.39 / 74.86 ms with it against
        75.11 / 82.10 ms without (two runs), and the Llama block's peak was 2872 MiB as without
        it in session 8 (benchmarks/RESULTS.md, session 9).
    log_decisions: print each compiled graph's decisions (one line per matmul site); graphs
        compiled with it on bypass Inductor's caches, so the pass runs and prints every time.
    """

    recipe: str = "deepseek_v3"
    fp8_format: str = "e4m3"
    fprop: bool = True
    dgrad: bool = True
    wgrad: bool = True
    fp8_output_head: bool = False
    fp8_moe_gates: bool = False
    grouped_gemms: bool = False
    module_filter: Optional[ModuleFilter] = None
    fp8_saved_activations: bool = False
    fp8_saved_activations_min_bytes: int = 1 << 20
    recompute_fp8_weights: bool = True
    recompute_fp8_activations: bool = True
    fuse_quantization: bool = False
    fuse_swiglu: bool = True
    fold_gradient_cat: bool = True
    inductor_buffers: bool = True
    log_decisions: bool = False

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"fp8pass.Config: unknown recipe {self.recipe!r}; choose one of {RECIPES}")
        if self.fp8_format not in FORMATS:
            raise ValueError(f"fp8pass.Config: unsupported fp8_format {self.fp8_format!r}; choose one of {FORMATS}")
        if self.module_filter is not None and not callable(self.module_filter):
            raise TypeError("fp8pass.Config: module_filter must be a callable fn(fqn, module) -> bool")
        for f in dataclasses.fields(self):  # a string "false" must not switch an option on
            value = getattr(self, f.name)
            if isinstance(f.default, bool) and not isinstance(value, bool):
                raise TypeError(f"fp8pass.Config: {f.name} must be True or False, got {value!r}")
            if f.name.endswith("_bytes") and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise TypeError(f"fp8pass.Config: {f.name} must be a non-negative int, got {value!r}")

    @classmethod
    def from_options(cls, options: Optional[dict] = None, **kwargs) -> "Config":
        """Build from a torch.compile `options=` dict (or keyword options); unknown keys are an error."""
        merged = dict(options or {})
        merged.update(kwargs)
        if isinstance(merged.get("config"), Config):
            base = merged.pop("config")
            return dataclasses.replace(base, **merged)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise TypeError(f"fp8pass: unknown option(s) {unknown}; valid options are {sorted(known)}")
        return cls(**merged)

    def cache_key(self) -> str:
        """A stable digest of every option, for Inductor's FX graph cache."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if callable(value):
                value = _callable_key(value)
            parts.append(f"{f.name}={value!r}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()


_BOOL_WORDS = {"true": True, "on": True, "yes": True, "1": True, "false": False, "off": False, "no": False, "0": False}


def parse_option(text: str) -> tuple[str, object]:
    """"key=value" from a command line -> (key, Python value): for a boolean option true/false,
    on/off, yes/no, 1/0 in any case; otherwise Python literals (numbers), else the string."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"fp8pass: options are key=value, got {text!r}")
    field = next((f for f in dataclasses.fields(Config) if f.name == key), None)
    if field is not None and isinstance(field.default, bool):
        if value.strip().lower() not in _BOOL_WORDS:
            raise ValueError(f"fp8pass: option {key} takes true or false, got {value!r}")
        return key, _BOOL_WORDS[value.strip().lower()]
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value
