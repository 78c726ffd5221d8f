"""The FP8 pass as a plain graph function: find sites, decide, rewrite, record."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from torch.fx import Graph, Node

from .logs import warn_once
from .policy import (SiteContext, embedding_tied_weights, moe_gate_fprops, output_head_fprops, role_skip_reason,
                     site_skip_reason)
from . import numerics  # noqa: F401  (registers torch.ops.fp8pass.observe_mm)
from .rewrite import GemmRewrite, observe_gemms, rewrite_gemms
from .sites import (MM_TARGETS, find_linear_sites, is_prequantized_weight, module_of, parameter_behind,
                    tangent_dependent_nodes, tensor_meta, weight_input, weighted_matmuls_not_linear)

PAIRING = {"fprop": "1x128 x 128x128", "dgrad": "1x128 x 128x128", "wgrad": "1x128 x 128x1"}


@dataclasses.dataclass(frozen=True)
class MatmulRecord:
    """One GEMM site of one compiled graph and what the pass did with it.

    shape is the GEMM's own (M, K, N): Fprop (tokens, in, out), Dgrad (tokens, out, in),
    Wgrad (out, tokens, in) for an nn.Linear."""

    module: str
    role: str
    shape: tuple
    fp8: bool
    reason: str
    weight: str = ""
    graph: str = ""


def matmul_table(records: list[MatmulRecord]) -> str:
    """Every GEMM site on its own row, with its full reason."""
    rows = [("module", "role", "M x K x N", "fp8", "reason")]
    for m in records:
        rows.append((m.module or "<root>", m.role, " x ".join(str(d) for d in m.shape), "yes" if m.fp8 else "no",
                     m.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * (sum(widths) + 14))
    return "\n".join(lines)


def _gemm_shape(node: Node, swap: bool = False) -> tuple:
    out = tensor_meta(node)
    if node.target.__name__.startswith("addmm"):
        a = node.args[1]
    else:
        a = node.args[0]
    a_val = tensor_meta(a)
    if out is None or a_val is None:
        return ()
    if swap:  # reported as the (M, K, N) of the GEMM actually run: (R^T @ L^T)
        return (out.shape[-1], a_val.shape[-1], out.shape[0])
    return (a_val.shape[0], a_val.shape[-1], out.shape[-1])


def _weighted_reason(node: Node, weight: str, dims: int, partial: bool) -> str:
    op = str(node.target).split(".default")[0]
    if node.target in MM_TARGETS and dims == 2 and not partial:
        return (f"not Linear-like: {op} reads the 2-D parameter '{weight}' as its left operand (W @ x); fp8pass "
                f"converts matmuls with the weight on the right (nn.Linear, F.linear, x @ W), so this one stays "
                f"in high precision")
    what = "one slice of the" if partial else "the"
    if "grouped_mm_fallback" in op:  # transformers' MoE experts with weights in another dtype than bf16
        return (f"not Linear-like: {op} reads the {dims}-D parameter '{weight}': transformers runs MoE experts "
                f"through this fallback op, not torch._grouped_mm, when the experts' weights are not bf16 under "
                f"torch.compile; fp8pass converts torch._grouped_mm, so keep the model in bf16 to convert them")
    return (f"not Linear-like: {op} reads {what} {dims}-D parameter '{weight}' (a batched matmul, a grouped one "
            f"in another form than torch._grouped_mm(x, W), or one slice of a weight, as MoE experts use); "
            f"fp8pass converts matmuls that read a whole 2-D weight (nn.Linear, F.linear, x @ W) and "
            f"torch._grouped_mm over a whole 3-D stack, so this one stays in high precision")


def _batched_shape(node: Node, param: Node) -> tuple:
    """(M, K, N) of a matmul that is not Linear-like, as far as it can be told: rows of its first
    non-weight tensor operand (all leading dims), that operand's last dim, the output's last."""
    out = tensor_meta(node)
    a = next((tensor_meta(x) for x in node.args if isinstance(x, Node) and x is not param
              and tensor_meta(x) is not None and parameter_behind(x, lambda n: n is param)[0] is None), None)
    if out is None or a is None or a.dim() < 1 or out.dim() < 1:
        return ()
    return (math.prod(a.shape[:-1]), a.shape[-1], out.shape[-1])


def fp8_graph_pass(graph: Graph, ctx: SiteContext, is_weight: Callable[[Node], bool],
                   graph_name: str = "", observe: bool = False) -> list[MatmulRecord]:
    """Rewrite every eligible Linear-like matmul of `graph` (joint or inference) to FP8.

    With observe=True the sites are decided the same way but left in high precision, each
    GEMM that would convert wrapped in an observer instead (see numerics.py)."""
    # A weight that arrives pre-quantized (FP8 all-gather) is a dequantize node of two graph
    # inputs; its parameter flag and name are those of its FP8 data input.
    ctx = dataclasses.replace(ctx, weight_fqn=lambda n, fqn=ctx.weight_fqn: fqn(weight_input(n)))
    ctx_is_weight = lambda n: is_weight(weight_input(n))  # noqa: E731
    backward = tangent_dependent_nodes(graph)
    sites, others = find_linear_sites(graph, ctx_is_weight, backward)
    heads = output_head_fprops(graph, sites) if ctx.outputs_are_model_outputs else set()
    tied = embedding_tied_weights(graph)
    gates = moe_gate_fprops(graph, sites)
    records: list[MatmulRecord] = []
    rewrites: list[GemmRewrite] = []
    for site in sites:
        fqn, _, _ = module_of(site.fprop)
        weight = ctx.weight_fqn(site.weight)
        site_reason = site_skip_reason(site, ctx, heads, tied, gates)
        for role, node in (("fprop", site.fprop), ("dgrad", site.dgrad), ("wgrad", site.wgrad)):
            if node is None:
                continue
            reason = site_reason or role_skip_reason(role, ctx.config)
            if reason is not None and is_prequantized_weight(site.weight):
                reason += ("; its weight arrives FP8-all-gathered, so this high-precision GEMM reads the "
                           "dequantized FP8 weight (leave the weight out of fp8pass.enable_fp8_all_gather)")
                warn_once(("prequantized weight", weight), f"fp8pass: {fqn or weight} {role}: {reason}")
            swap = role == "dgrad" and site.dgrad_swapped
            records.append(MatmulRecord(fqn, role, _gemm_shape(node, swap), reason is None,
                                        reason or f"FP8 {PAIRING[role]}", weight, graph_name))
            if reason is None:
                rewrites.append(GemmRewrite(node, role, fqn, site.weight if role != "wgrad" else None,
                                            swap=swap, offs=site.offs))
    weighted = {node: (param, partial)
                for node, param, partial in weighted_matmuls_not_linear(graph, ctx_is_weight, backward, sites)}
    for node in others:
        if node in weighted:
            continue
        fqn, _, _ = module_of(node)
        records.append(MatmulRecord(fqn, "fprop", _gemm_shape(node), False,
                                    "not Linear-like: neither operand is a parameter", "", graph_name))
    for node, (param, partial) in weighted.items():
        fqn, _, _ = module_of(node)
        records.append(MatmulRecord(fqn, "fprop", _batched_shape(node, param), False,
                                    _weighted_reason(node, ctx.weight_fqn(param), tensor_meta(param).dim(), partial),
                                    ctx.weight_fqn(param), graph_name))
    if observe:
        observe_gemms(graph, rewrites, graph_name)
    else:
        rewrite_gemms(graph, rewrites, requantize_dgrad_weights=ctx.config.recompute_fp8_weights)
    graph.lint()
    return records
