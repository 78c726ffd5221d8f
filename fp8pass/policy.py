"""Which matmul sites become FP8, and a reason a user can act on for each one that does not."""

from __future__ import annotations

import dataclasses
import linecache
import os
import re
from typing import Callable, Optional

import torch
from torch.fx import Graph, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .config import Config
from .markers import MARK_KEY
from .sites import LinearSite, module_of, strip_to_placeholder, tangent_dependent_nodes, tensor_meta

aten = torch.ops.aten
TILE = 128
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_MATMULS = (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
            aten.matmul.default, aten.linear.default)


@dataclasses.dataclass(frozen=True)
class SiteContext:
    """What the policy needs to know beyond the graph (filled in by the backend)."""

    config: Config
    weight_fqn: Callable[[Node], str]
    module_instance: Callable[[str], Optional[torch.nn.Module]]
    # False for a graph whose outputs are not the model's: a piece of DDPOptimizer's split other
    # than the last (the rest of the model follows it), where no Linear is the output head.
    outputs_are_model_outputs: bool = True


def _multiple_of_tile(size) -> bool:
    return statically_known_true(size % TILE == 0)


def _user_location(node: Node) -> tuple[str, int]:
    """(file, line) of the innermost user frame in the node's stack trace."""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    return (frames[-1][0], int(frames[-1][1])) if frames else ("", 0)


def _enclosing_with_line(filename: str, lineno: int) -> int:
    """The line of the `with ...high_precision(...)` block that encloses `lineno`, or 0."""
    lines = linecache.getlines(filename)
    if not 0 < lineno <= len(lines):
        return 0
    indent = len(lines[lineno - 1]) - len(lines[lineno - 1].lstrip())
    for i in range(lineno - 2, -1, -1):
        text = lines[i]
        if not text.strip():
            continue
        this_indent = len(text) - len(text.lstrip())
        if this_indent < indent:
            if re.match(r"\s*with\b.*high_precision\s*\(", text):
                return i + 1
            indent = this_indent
    return 0


def high_precision_mark(node: Node) -> Optional[str]:
    label = (node.meta.get("custom") or {}).get(MARK_KEY)
    if label is None:
        return None
    if " at " not in label:  # context manager under compile: find the `with` around the matmul
        filename, lineno = _user_location(node)
        with_line = _enclosing_with_line(filename, lineno) if filename else 0
        where = f"{os.path.relpath(filename)}:{with_line or lineno}" if filename else "an unknown line"
        label = f"{label} at {where}" if with_line else f"{label} around {where}"
    return label


def output_head_fprops(graph: Graph, sites: list[LinearSite]) -> set[Node]:
    """Fprops whose output reaches a forward output of the graph without passing through another
    matmul or a residual add (an add whose other input is computed before the matmul's input),
    and with no other Linear after them. That is the model's last projection: the LM head, a
    classifier, the last layer of an MLP."""
    backward = tangent_dependent_nodes(graph)
    output = next(n for n in graph.nodes if n.op == "output")
    forward_outputs = {o for o in output.all_input_nodes if o not in backward}
    heads = set()
    for site in sites:
        ancestors = _ancestors(site.x2d)
        frontier, seen = [site.fprop], {site.fprop}
        while frontier:
            node = frontier.pop()
            if node in forward_outputs:
                heads.add(site.fprop)
                break
            for user in node.users:
                if user in seen or user in backward or user.op != "call_function":
                    continue
                seen.add(user)
                if user.target in _MATMULS:
                    continue
                if user.target in (aten.add.Tensor, aten.sub.Tensor):
                    others = [a for a in user.args[:2] if isinstance(a, Node) and a is not node]
                    if any(_is_computed_before(o, ancestors) for o in others):
                        continue  # residual stream: this projection is not the model's last
                frontier.append(user)
    # The last projection: no other Linear site downstream. (A K/V projection whose output is
    # also returned, as a KV cache is, reaches an output too, but the rest of the model follows.)
    fprops = {site.fprop for site in sites}
    return {head for head in heads if not (_descendants(head, backward) & (fprops - {head}))}


def moe_gate_fprops(graph: Graph, sites: list[LinearSite], max_depth: int = 6) -> set[Node]:
    """Fprops of MoE routers (gates): Linears whose output reaches a `topk` within a few forward ops
    (softmax or sigmoid, a cast, a bias add, a view) that are not matmuls. DeepSeek-V3 keeps them
    in high precision: their output picks the experts, so an FP8 error there moves tokens between
    experts, not just values."""
    backward = tangent_dependent_nodes(graph)
    gates = set()
    for site in sites:
        frontier, seen = [site.fprop], {site.fprop}
        for _ in range(max_depth):
            users = [u for n in frontier for u in n.users
                     if u not in seen and u not in backward and u.op == "call_function" and u.target not in _MATMULS]
            if any(u.target is aten.topk.default for u in users):
                gates.add(site.fprop)
                break
            seen.update(users)
            frontier = users
    return gates


def _descendants(node: Node, backward: set[Node]) -> set[Node]:
    seen, stack = set(), [node]
    while stack:
        for user in stack.pop().users:
            if user not in seen and user not in backward:
                seen.add(user)
                stack.append(user)
    return seen


_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.alias.default,
          aten.expand.default, aten._to_copy.default, torch.ops.prims.convert_element_type.default)


def _is_computed_before(node: Node, ancestors: set[Node]) -> bool:
    """node, or what it is a view/cast of, is an ancestor of the matmul's input."""
    while isinstance(node, Node):
        if node in ancestors:
            return True
        if node.op != "call_function" or node.target not in _VIEWS:
            return False
        node = node.args[0]
    return False


def _ancestors(node: Node) -> set[Node]:
    seen, stack = set(), [node]
    while stack:
        cur = stack.pop()
        for inp in cur.all_input_nodes:
            if inp not in seen:
                seen.add(inp)
                stack.append(inp)
    return seen


def embedding_tied_weights(graph: Graph) -> set[Node]:
    """Weight placeholders also used as the table of an embedding lookup (tied LM heads)."""
    tied = set()
    for node in graph.nodes:
        if node.op == "call_function" and node.target is aten.embedding.default:
            weight, _ = strip_to_placeholder(node.args[0])
            if weight is not None:
                tied.add(weight)
    return tied


def site_skip_reason(site: LinearSite, ctx: SiteContext, heads: set[Node], tied: set[Node],
                     gates: frozenset = frozenset()) -> Optional[str]:
    """None if the site converts, else why not (names the rule and the way out)."""
    cfg = ctx.config
    fqn, _, _ = module_of(site.fprop)
    where = f"'{fqn or '<root>'}' (weight '{ctx.weight_fqn(site.weight)}')"
    mark = high_precision_mark(site.fprop)
    if mark is not None:
        return f"high precision: {mark}; remove the mark to convert {where}"
    x_val, w_val = tensor_meta(site.x2d), tensor_meta(site.weight)
    if x_val is None or w_val is None:
        return "no shape information on the operands (graph built without fake tensors)"
    if x_val.dtype not in SUPPORTED_DTYPES:
        return (f"input dtype {x_val.dtype} is not supported (bf16, fp16 or fp32); "
                f"cast {where} to one of those or leave it in high precision")
    if site.grouped and not cfg.grouped_gemms:
        return (f"MoE experts' grouped GEMM: Config(grouped_gemms=False), the default until its GPU kernel is "
                f"measured against BF16's; set grouped_gemms=True to convert {where}")
    m, k, n = site.mkn
    bad = [f"{name}={size}" for name, size in (("K (in_features)", k), ("N (out_features)", n))
           if not _multiple_of_tile(size)]
    if bad:
        return (f"{' and '.join(bad)} not a multiple of 128, which 1x128 tiles and 128x128 blocks need; "
                f"pad {where} to multiples of 128 to convert it (shape M,K,N = {m},{k},{n})")
    if not cfg.fp8_output_head:
        if site.weight in tied:
            return (f"output head: weight tied to an embedding, kept in high precision as in DeepSeek-V3; "
                    f"set Config(fp8_output_head=True) to convert {where}")
        if site.fprop in heads:
            return (f"output head: last projection before the graph's outputs, kept in high precision as in "
                    f"DeepSeek-V3; set Config(fp8_output_head=True) to convert {where}")
    if site.fprop in gates and not cfg.fp8_moe_gates:
        return (f"MoE gate: its output picks experts (through topk), kept in high precision as in DeepSeek-V3; "
                f"set Config(fp8_moe_gates=True) to convert {where}")
    if cfg.module_filter is not None:
        module = ctx.module_instance(fqn)
        if not cfg.module_filter(fqn, module):
            return (f"module_filter {_callable_location(cfg.module_filter)} returned False for {where}; "
                    f"change Config(module_filter=...) to convert it")
    return None


def _callable_location(fn) -> str:
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", type(fn).__name__)
    return f"{name} ({os.path.relpath(code.co_filename)}:{code.co_firstlineno})" if code else name


def role_skip_reason(role: str, cfg: Config) -> Optional[str]:
    if not getattr(cfg, role):
        return f"Config({role}=False); set {role}=True to run this GEMM in FP8"
    return None
