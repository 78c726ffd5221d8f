"""Finding Linear-like matmul sites in an AOTAutograd joint (or inference) graph.

A Linear `y = x @ W^T` appears as `mm`/`addmm(view(x), permute(W))` in forward (Fprop); its
backward as `mm(dY, permute(permute(W)))` (Dgrad) and `mm(permute(dY), view(x))` (Wgrad).
Backward nodes carry the same `meta["seq_nr"]` as the forward node they differentiate, which is
how the three are grouped; each one is then checked by its operands.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

import torch
from torch.fx import Graph, Node

aten = torch.ops.aten
prims = torch.ops.prims

MM_TARGETS = (aten.mm.default, aten.addmm.default)
GROUPED_MM = aten._grouped_mm.default  # MoE experts: x[S, K] @ W[G, K, N], groups of rows by `offs`
# Ops that change only the view or the dtype of a weight on its way to a matmul (autocast adds
# the casts); the pass quantizes the parameter itself, so these are looked through.
_WEIGHT_PASSTHROUGH = (aten.alias.default, aten.detach.default, aten._to_copy.default,
                       prims.convert_element_type.default)
_TRANSPOSES = (aten.permute.default, aten.t.default, aten.transpose.int)


def is_2d_transpose(node: Node) -> bool:
    """node swaps the last two dims of its input: the transpose of a matrix, or of each matrix of
    a stack (MoE experts' 3-D weights)."""
    if not isinstance(node, Node) or node.op != "call_function" or node.target not in _TRANSPOSES:
        return False
    if node.target is aten.permute.default:
        dims = list(node.args[1])
        return len(dims) >= 2 and dims == [*range(len(dims) - 2), len(dims) - 1, len(dims) - 2]
    if node.target is aten.transpose.int:
        val = tensor_meta(node.args[0])
        ndim = val.dim() if val is not None else 2
        return sorted(d % ndim for d in node.args[1:3]) == [ndim - 2, ndim - 1]
    return True


def is_prequantized_weight(node: Node) -> bool:
    """`fp8pass.dequantize(q, s, 128, 128, dtype)` of two graph inputs: a weight that arrives
    already as 128x128 FP8 blocks and their scales (FSDP2's FP8 all-gather, fp8pass.distributed).
    AOTAutograd flattens the gathered-weight tensor subclass into its FP8 data and scales, and
    every op of the subclass reads it through this dequantize; the pass treats the dequantize
    node as the weight and feeds q and s straight to the GEMMs (rewrite.py), so the dequantized
    copy is dead code and never materialized."""
    return (isinstance(node, Node) and node.op == "call_function"
            and node.target is torch.ops.fp8pass.dequantize.default
            and tuple(node.args[2:4]) == (128, 128)
            and all(isinstance(a, Node) and a.op == "placeholder" for a in node.args[:2]))


def weight_input(node: Node) -> Node:
    """The graph input that stands for a weight: the placeholder itself, or the FP8 data input
    of a pre-quantized weight (whose parameter flag and fqn the backend records)."""
    return node.args[0] if is_prequantized_weight(node) else node


def strip_to_placeholder(node: Node) -> tuple[Optional[Node], bool]:
    """Follow transposes and dtype/alias ops back to a placeholder (or to a pre-quantized
    weight's dequantize node, see is_prequantized_weight).

    Returns (placeholder or None, transposed) where transposed tells whether an odd number of
    2-D transposes lies on the way."""
    transposed = False
    while isinstance(node, Node):
        if node.op == "placeholder" or is_prequantized_weight(node):
            return node, transposed
        if node.op != "call_function":
            return None, False
        if is_2d_transpose(node):
            transposed = not transposed
        elif node.target in _WEIGHT_PASSTHROUGH:
            if node.target is aten._to_copy.default and set(node.kwargs) - {"dtype"}:
                return None, False
        else:
            return None, False
        node = node.args[0]
    return None, False


def transposed_source(node: Node) -> Optional[Node]:
    """If `node` is a 2-D transpose of another node, that node."""
    return node.args[0] if is_2d_transpose(node) else None


def tensor_meta(node: Node):
    val = node.meta.get("val") if isinstance(node, Node) else None
    return val if isinstance(val, torch.Tensor) else None


def tangent_dependent_nodes(graph: Graph) -> set[Node]:
    """Nodes computed from a tangent: the backward part of a joint graph."""
    seen: set[Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" and node.name.startswith("tangents"):
            seen.add(node)
        elif node in seen:
            continue
        elif any(inp in seen for inp in node.all_input_nodes):
            seen.add(node)
    return seen


_SEGMENT = re.compile(r"\._modules\[['\"]([^'\"]+)['\"]\]|\[['\"]([^'\"]+)['\"]\]|\[(\d+)\]|\.(\w+)")


def normalize_module_path(path: str) -> tuple[str, list[str]]:
    """"L['self'].layers[0]._modules['attn'].wq" -> ("self", ["layers", "0", "attn", "wq"]).

    A container access right after the root belongs to the root: "L['args'][0].model.norm"
    (a forward wrapped as fn(*args)) -> ("args[0]", ["model", "norm"])."""
    m = re.match(r"^L\[['\"]([^'\"]+)['\"]\]((?:\[\d+\]|\[['\"][^'\"]+['\"]\])*)", path)
    if not m:
        root, rest = "", path
    else:
        root, rest = m.group(1) + re.sub(r"['\"]", "", m.group(2)), path[m.end():]
    parts = []
    for seg in _SEGMENT.finditer(rest):
        name = next(g for g in seg.groups() if g is not None)
        if name in ("_modules", "_parameters", "_buffers"):
            continue
        parts.append(name)
    return root, parts


def resolve_root(root: str, f_locals: dict):
    """The object a normalized root names in a frame's locals: "self", "args[0]", "kwargs[model]"."""
    name, *keys = re.split(r"\[|\]\[|\]$", root.rstrip("]") + ("]" if "[" in root else ""))
    obj = f_locals.get(name)
    for key in (k for k in keys if k):
        try:
            obj = obj[int(key)] if key.isdigit() else obj[key]
        except (KeyError, IndexError, TypeError):
            return None
    return obj


def module_of(node: Node) -> tuple[str, Optional[type], Optional[str]]:
    """(fqn, module class, raw dynamo path) of the innermost module a forward node was traced in."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", None, None
    raw, cls = list(stack.values())[-1]
    _, parts = normalize_module_path(raw)
    return ".".join(parts), cls, raw


@dataclasses.dataclass
class LinearSite:
    """One Linear-like matmul and its backward GEMMs.

    fprop computes x2d[M, K] @ B[K, N] where B is the weight placeholder, transposed
    (`weight_transposed`, the nn.Linear case W[N, K]) or not (x @ W with W[K, N])."""

    fprop: Node
    x2d: Node
    weight: Node
    weight_transposed: bool
    bias: Optional[Node] = None
    dgrad: Optional[Node] = None
    wgrad: Optional[Node] = None
    dgrad_swapped: bool = False
    offs: Optional[Node] = None  # a grouped site (MoE experts): the weight is a [G, ., .] stack

    @property
    def grouped(self) -> bool:
        return self.offs is not None

    @property
    def mkn(self) -> tuple:
        m, k = tensor_meta(self.x2d).shape
        n = tensor_meta(self.fprop).shape[1]
        return m, k, n


def _offs_of(node: Node):
    return node.kwargs.get("offs", node.args[2] if len(node.args) > 2 else None)


def _grouped_operands(node: Node):
    """(a, b, offs) of `_grouped_mm(a, b, offs)` in its 2-D x 3-D form without bias or out dtype (the
    form transformers' MoE experts and autograd's Dgrad use), else None."""
    args = list(node.args) + [None] * (5 - len(node.args))
    a, b, _, bias, out_dtype = args[:5]
    offs = _offs_of(node)
    if node.kwargs.get("bias", bias) is not None or node.kwargs.get("out_dtype", out_dtype) is not None:
        return None
    a_val, b_val = tensor_meta(a), tensor_meta(b)
    if not isinstance(offs, Node) or a_val is None or b_val is None or a_val.dim() != 2 or b_val.dim() != 3:
        return None
    return a, b, offs


def _fprop_operands(node: Node):
    if node.target is aten.addmm.default:
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            return None
        bias, a, b = node.args[:3]
    else:
        bias, (a, b) = None, node.args[:2]
    return bias, a, b


# Views and casts through which a matmul can read part of a parameter without being Linear-like
# (an expert's slice of a 3-D weight, say); looked through only to name the parameter in reports.
_PARTIAL_VIEWS = _WEIGHT_PASSTHROUGH + _TRANSPOSES + (
    aten.select.int, aten.slice.Tensor, aten.view.default, aten.reshape.default, aten._unsafe_view.default,
    aten.expand.default, aten.unsqueeze.default, aten.squeeze.dim, aten.index.Tensor, aten.clone.default)
_SLICING = (aten.select.int, aten.slice.Tensor, aten.index.Tensor)
_MATMUL_WORDS = {"mm", "bmm", "baddbmm", "addmm", "matmul", "einsum"}


def parameter_behind(node: Node, is_weight) -> tuple[Optional[Node], bool]:
    """(the parameter placeholder that `node` is a view, slice or cast of, or None; whether a
    select, slice or index lies on the way, i.e. `node` holds only part of it)."""
    partial = False
    while isinstance(node, Node):
        if node.op == "placeholder":
            return (node, partial) if is_weight(node) else (None, False)
        if node.op != "call_function" or node.target not in _PARTIAL_VIEWS:
            return None, False
        partial = partial or node.target in _SLICING
        node = node.args[0]
    return None, False


def is_matmul_op(target) -> bool:
    """A matmul-family op by name: aten's bmm / baddbmm / _grouped_mm / _scaled_mm, and custom ops
    named like them (transformers' grouped_mm_fallback for MoE experts on the CPU)."""
    name = target.name() if hasattr(target, "name") else getattr(target, "__name__", "")
    name = name.split("::")[-1].split(".")[0]
    return bool(_MATMUL_WORDS & set(name.split("_")))


def weighted_matmuls_not_linear(graph: Graph, is_weight, backward: set, sites: list) -> list[tuple[Node, Node, bool]]:
    """Forward matmuls that read a parameter but are not Linear-like sites: batched and grouped
    GEMMs over 3-D weights (MoE experts), an mm of one slice of a parameter, or of a weight on the
    left (W @ x). The pass leaves them in high precision; they are found to be reported, with the
    parameter, as (node, param, whether only part of the parameter is read). `backward` and
    `sites`: the graph's tangent_dependent_nodes and find_linear_sites."""
    linear = {site.fprop for site in sites}  # grouped sites (MoE experts' 3-D weights) among them
    found = []
    for node in graph.nodes:
        if (node.op != "call_function" or node in backward or node in linear
                or not is_matmul_op(node.target)):
            continue
        for arg in node.args:
            param, partial = parameter_behind(arg, is_weight)
            val = tensor_meta(param) if param is not None else None
            if val is not None and val.dim() >= 2:  # a weight (not a bias broadcast into addmm)
                found.append((node, param, partial))
                break
    return found


def find_linear_sites(graph: Graph, is_weight, backward: Optional[set] = None) -> tuple[list[LinearSite], list[Node]]:
    """All matmuls with a weight operand, grouped with their Dgrad/Wgrad.

    `is_weight(placeholder) -> bool` says which placeholders are parameters; `backward`, the
    graph's tangent_dependent_nodes if the caller has them. Returns the sites and the matmuls
    that are not Linear-like (activation @ activation), for the report."""
    if backward is None:
        backward = tangent_dependent_nodes(graph)
    backward_mms_by_seq: dict[int, list[Node]] = {}
    for node in graph.nodes:
        if node in backward and node.op == "call_function" and node.target in (aten.mm.default, GROUPED_MM):
            backward_mms_by_seq.setdefault(node.meta.get("seq_nr"), []).append(node)

    sites, others = [], []
    for node in graph.nodes:
        if node.op != "call_function" or node in backward:
            continue
        if node.target is GROUPED_MM:
            # MoE experts: not Linear-like unless it reads a whole 3-D weight (then reported as such)
            site = _grouped_site(node, is_weight)
            if site is None:
                continue
        elif node.target in MM_TARGETS:
            operands = _fprop_operands(node)
            if operands is None:
                others.append(node)
                continue
            bias, a, b = operands
            weight, transposed = strip_to_placeholder(b)
            if weight is None or not is_weight(weight):
                others.append(node)
                continue
            site = LinearSite(fprop=node, x2d=a, weight=weight, weight_transposed=transposed, bias=bias)
        else:
            continue
        seq = node.meta.get("seq_nr")
        for bw in backward_mms_by_seq.get(seq, []) if seq is not None else []:
            if (bw.target is GROUPED_MM) == site.grouped and (not site.grouped or _offs_of(bw) is site.offs):
                _classify_backward(site, bw)
        if site.grouped and site.dgrad_swapped:  # not a form autograd gives _grouped_mm: leave it
            site.dgrad = None
        sites.append(site)
    return sites, others


def _grouped_site(node: Node, is_weight) -> Optional[LinearSite]:
    operands = _grouped_operands(node)
    if operands is None:
        return None
    a, b, offs = operands
    weight, transposed = strip_to_placeholder(b)
    if weight is None or not is_weight(weight):
        return None
    return LinearSite(fprop=node, x2d=a, weight=weight, weight_transposed=transposed, offs=offs)


def _classify_backward(site: LinearSite, mm: Node) -> None:
    left, right = mm.args[:2]
    w_left, _ = strip_to_placeholder(left)
    w_right, _ = strip_to_placeholder(right)
    if site.dgrad is None and site.weight in (w_left, w_right) and w_left is not w_right:
        # dX = dY @ W (nn.Linear) or dY @ W^T (x @ W): the weight is the right operand; autograd
        # computes dX^T = W^T @ dY^T instead when the input is stored transposed.
        site.dgrad = mm
        site.dgrad_swapped = w_left is site.weight
        return
    # Wgrad contracts over tokens: one operand is the forward input (transposed when on the
    # left: dY^T @ x -> dW[N, K]; x^T @ dY -> dW[K, N]).
    x = site.x2d
    if site.wgrad is None and (right is x or transposed_source(left) is x):
        site.wgrad = mm
