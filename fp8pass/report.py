"""`fp8pass.explain`: compile a model with the fp8 backend, run it once, report what happened."""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
from typing import Callable, Optional

import torch
from torch.utils._pytree import tree_flatten

from .config import Config
from .graph_pass import MatmulRecord, matmul_table
from .numerics import NumericsReport, site_numerics, take_observed
from .rewrite import FP8_META_KEY
from .sites import module_of

_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_LOOK_THROUGH = (operator.getitem, torch.ops.aten.permute.default, torch.ops.aten.clone.default,
                 torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten.t.default)


@dataclasses.dataclass(frozen=True)
class SavedTensor:
    """A tensor the partitioned forward graph saves for backward."""

    graph: str
    name: str
    producer: str
    module: str
    shape: tuple
    dtype: torch.dtype
    bytes: int

    @property
    def fp8(self) -> bool:
        return self.dtype in _FP8_DTYPES

    @property
    def is_graph_input(self) -> bool:
        """A parameter or input the backward reads: alive anyway, no extra memory."""
        return self.producer == "placeholder"


def _nbytes(val: torch.Tensor) -> int:
    try:
        return int(math.prod(int(s) for s in val.shape)) * val.element_size()
    except (TypeError, ValueError):  # unbacked symbolic size
        return 0


def saved_tensors(forward: torch.fx.GraphModule, backward: torch.fx.GraphModule, graph: str) -> list[SavedTensor]:
    """The forward graph's outputs that the backward graph takes as (non-tangent) inputs: the
    last outputs of the forward, one for each such backward input, in the same order."""
    n_saved = sum(1 for n in backward.graph.nodes if n.op == "placeholder" and not n.name.startswith("tangents"))
    output = next(n for n in forward.graph.nodes if n.op == "output")
    outputs = list(output.args[0])
    saved = []
    for node in outputs[len(outputs) - n_saved:] if n_saved else []:
        val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
        if not isinstance(val, torch.Tensor):
            continue
        producer = node  # look through views and copies to the op that made the values
        while producer.op == "call_function" and producer.target in _LOOK_THROUGH:
            producer = producer.args[0]
        target = producer.target if producer.op == "call_function" else producer.op
        fqn = (producer.meta.get(FP8_META_KEY) or {}).get("module") or module_of(producer)[0]
        saved.append(SavedTensor(graph, node.name, str(target), fqn, tuple(val.shape), val.dtype, _nbytes(val)))
    return saved


def _saved_from(graphs: dict) -> list[SavedTensor]:
    saved = []
    for name, fw in graphs.items():
        if name.endswith("_forward"):
            base = name[: -len("_forward")]
            bw = graphs.get(base + "_backward")
            if isinstance(fw, torch.fx.GraphModule) and isinstance(bw, torch.fx.GraphModule):
                saved += saved_tensors(fw, bw, base)
    return saved


def _module_pattern(fqn: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "*", fqn)


_RULES = (("output head", "output head"), ("MoE gate", "MoE gate"), ("high precision:", "marked high precision"),
          ("not a multiple of 128", "K/N not multiple of 128"), ("module_filter", "module_filter"),
          ("Config(", "disabled in Config"), ("dtype", "unsupported dtype"),
          ("MoE experts", "batched/grouped or sliced weight"), ("not Linear-like", "not Linear-like"))


def _rule(reason: str) -> str:
    return next((short for key, short in _RULES if key in reason), reason[:40])


# Dynamo's break reason for a side effect inside torch.utils.checkpoint, and the way out. Hugging
# Face's gradient_checkpointing_enable() meets it in every decoder layer (transformers 5.25: a
# context variable of its kernels hub set inside the layer), so without the flag all layers ran
# eagerly in high precision; with it they compile and convert (tests/test_hf_llama.py).
_CHECKPOINT_SIDE_EFFECT = "HOP: Unsafe side effect"
_CHECKPOINT_SIDE_EFFECT_HINT = (
    "  where that side effect is inside torch.utils.checkpoint (Hugging Face's gradient_checkpointing_enable() "
    "has one in each layer): torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True lets "
    "dynamo compile the checkpointed code (the side effect is then not replayed when backward recomputes)")


@dataclasses.dataclass
class Report:
    """What the fp8 backend did to one model call.

    matmuls: one MatmulRecord per GEMM site (.module, .role, .shape, .fp8, .reason).
    graphs: the rewritten graphs by name (`graph_N_joint` / `graph_N_inference` as the pass left
        them, `graph_N_forward` / `graph_N_backward` as Inductor lowers them after partitioning).
    saved: the tensors saved for backward, from the partitioned graphs; saved_bytes counts the
        activations among them (not parameters and inputs, which are alive anyway), and
        baseline_saved_bytes the same for the same model compiled without the pass.
    graph_breaks: why dynamo broke the graph during the explained call (one line each, "(xN)" when
        it broke N times for that reason); code it could not trace runs eagerly, unseen by the pass.
    weights_outside_graphs: the model's weights (parameters of two or more dims) that no compiled
        graph received: used only by eager code (after a graph break that ends compilation of
        the rest of a frame, e.g. inside a loop) or not used at all; they stay in high precision.
    """

    matmuls: list[MatmulRecord]
    graphs: dict
    saved: list[SavedTensor]
    baseline_saved: Optional[list[SavedTensor]] = None
    graph_breaks: list[str] = dataclasses.field(default_factory=list)
    weights_outside_graphs: list[str] = dataclasses.field(default_factory=list)
    graphs_before: dict = dataclasses.field(default_factory=dict, repr=False)
    _rerun: Optional[Callable] = dataclasses.field(default=None, repr=False)
    _numerics: Optional[NumericsReport] = dataclasses.field(default=None, repr=False)

    @property
    def fp8_matmuls(self) -> list[MatmulRecord]:
        return [m for m in self.matmuls if m.fp8]

    @property
    def saved_bytes(self) -> int:
        return sum(s.bytes for s in self.saved if not s.is_graph_input)

    @property
    def wgrad_copies_in_backward(self) -> list[str]:
        """Modules whose input's 128x1 copy (Wgrad's operand) the backward makes from a tensor it
        has or recomputes, instead of the forward saving it (Config.recompute_fp8_activations);
        a tensor that feeds several Linears is named by the first."""
        # the 128x1 quantization, or with fuse_swiglu the fused one of a recomputed SwiGLU product
        return self._backward_modules((torch.ops.fp8pass.quantize_128x1.default,
                                       torch.ops.fp8pass.swiglu_quantize_128x1.default), "for")

    @property
    def fprop_gemms_in_backward(self) -> list[str]:
        """Modules whose Fprop GEMM the backward runs again: inside torch.utils.checkpoint regions,
        or where torch._functorch.config.activation_memory_budget had the partition recompute it
        rather than save its output (each costs one more FP8 GEMM a step)."""
        return self._backward_modules((torch.ops.fp8pass.gemm_blockwise.default,
                                       torch.ops.fp8pass.gemm_blockwise_grouped.default), "role")

    def _backward_modules(self, ops, key: str) -> list[str]:
        """The modules of the backward graphs' nodes of `ops` whose FP8 mark has `key` == "fprop"
        (a quantization made for an Fprop operand: "for"; an Fprop GEMM: "role"), in model order."""
        modules = []
        for name, gm in self.graphs.items():
            if name.endswith("_backward") and isinstance(gm, torch.fx.GraphModule):
                for op in ops:
                    for node in gm.graph.find_nodes(op="call_function", target=op):
                        meta = node.meta.get(FP8_META_KEY) or {}
                        if meta.get(key) == "fprop":
                            modules.append(meta.get("module", ""))
        return self._in_model_order(modules)

    def _in_model_order(self, modules: list[str]) -> list[str]:
        """modules sorted as the model calls them (a backward meets them last layer first)."""
        first_seen: dict[str, int] = {}
        for i, m in enumerate(self.matmuls):
            first_seen.setdefault(m.module, i)
        return sorted(modules, key=lambda module: first_seen.get(module, len(first_seen)))

    @property
    def fused_swiglu(self) -> dict:
        """{"forward": n, "backward": m}: the fused SwiGLU-quantization kernels in the partitioned
        graphs (Config.fuse_swiglu): one per MLP in forward, two in backward, three with
        recompute_fp8_activations (w2's 128x1 copy made there too)."""
        return self._count_ops(lambda name: name.startswith("swiglu_"))

    @property
    def folded_gradient_cats(self) -> int:
        """Fused QKV gradients quantized from their three parts without a cat (Config.fold_gradient_cat):
        one per attention layer with a fused QKV projection, in backward."""
        return self._count_ops(lambda name: name == "quantize_1x128_128x1_cat3")["backward"]

    def _count_ops(self, wanted) -> dict:
        """{"forward": n, "backward": m}: the fp8pass ops whose name `wanted` accepts, in the
        partitioned graphs."""
        from .kernels.ops import op_name

        counts = {"forward": 0, "backward": 0}
        for name, gm in self.graphs.items():
            kind = name.rsplit("_", 1)[-1]
            if kind in counts and isinstance(gm, torch.fx.GraphModule):
                counts[kind] += sum(1 for n in gm.graph.nodes if n.op == "call_function"
                                    and wanted(op_name(n.target) or ""))
        return counts

    @property
    def baseline_saved_bytes(self) -> Optional[int]:
        if self.baseline_saved is None:
            return None
        return sum(s.bytes for s in self.baseline_saved if not s.is_graph_input)

    # ---- text -------------------------------------------------------------------------------
    def __str__(self) -> str:
        """One row per module (numbered layers folded into '*'), roles in FP8, and why not."""
        groups: dict[tuple, list] = {}
        for m in self.matmuls:
            key = (_module_pattern(m.module) or "<root>", m.weight.split(".")[-1] if m.weight else "")
            groups.setdefault(key, []).append(m)
        rows = [("module", "x", "fprop M x K x N", "FP8 roles", "why not FP8")]
        for (pattern, wname), ms in groups.items():
            if wname not in ("", "weight"):  # a module with several weights (MoE experts): name each
                pattern = f"{pattern}.{wname}"
            count = len({m.module for m in ms})
            fprop = next((m for m in ms if m.role == "fprop"), ms[0])
            roles = [r for r in ("fprop", "dgrad", "wgrad") if any(m.role == r and m.fp8 for m in ms)]
            skipped = {_rule(m.reason) for m in ms if not m.fp8}
            rows.append((pattern, str(count), " x ".join(map(str, fprop.shape)), ",".join(roles) or "-",
                         "; ".join(sorted(skipped))))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"{len(self.fp8_matmuls)} of {len(self.matmuls)} GEMMs in FP8")
        # each reason once per module pattern (numbered layers folded): the first site's text
        # stands for the others, counted
        skipped: dict[tuple, list] = {}
        for m in self.matmuls:
            if not m.fp8 and m.role == "fprop":
                key = (_module_pattern(m.module), m.weight.split(".")[-1] if m.weight else "", _rule(m.reason))
                skipped.setdefault(key, []).append(m)
        for ms in skipped.values():
            more = len({m.module for m in ms}) - 1
            also = f" (and {more} more like it)" if more > 0 else ""
            lines.append(f"  {ms[0].module or '<root>'}{also}: {ms[0].reason}")
        if self.graph_breaks:
            n = len(self.graph_breaks)
            lines.append(f"graph breaks ({n} reason{'s' if n > 1 else ''}; what dynamo could not trace runs "
                         f"eagerly, in high precision):")
            lines += [f"  {reason}" for reason in self.graph_breaks]
            if any(_CHECKPOINT_SIDE_EFFECT in reason for reason in self.graph_breaks):
                lines.append(_CHECKPOINT_SIDE_EFFECT_HINT)
        if self.weights_outside_graphs:
            lines.append(f"weights no compiled graph used (eager code after a graph break, or unused; high "
                         f"precision): {_folded(self.weights_outside_graphs)}")
        if self.saved:
            acts = [s for s in self.saved if not s.is_graph_input]
            fp8_bytes = sum(s.bytes for s in acts if s.fp8)
            in_fp8 = f"{fp8_bytes / 2**20:.2f} MiB of it FP8" if fp8_bytes else "none of it FP8"
            line = f"saved for backward: {len(acts)} activations, {self.saved_bytes / 2**20:.2f} MiB ({in_fp8})"
            if self.baseline_saved_bytes:
                line += (f"; without the pass {self.baseline_saved_bytes / 2**20:.2f} MiB "
                         f"({self.saved_bytes / self.baseline_saved_bytes:.2f}x)")
            lines.append(line)
            remade = self.wgrad_copies_in_backward
            if remade:
                lines.append(f"Wgrad's 128x1 copies of {len(remade)} Linear inputs made in backward, not saved "
                             f"(recompute_fp8_activations): {_folded(remade)}")
            rerun = self.fprop_gemms_in_backward
            if rerun:
                lines.append(f"Fprop GEMMs run again in backward (activation checkpointing or "
                             f"activation_memory_budget): {len(rerun)}: {_folded(rerun)}")
        swiglu = self.fused_swiglu
        if any(swiglu.values()):
            lines.append(f"SwiGLU computed inside its quantization kernels (fuse_swiglu): {swiglu['forward']} in "
                         f"forward, {swiglu['backward']} in backward")
        if self.folded_gradient_cats:
            lines.append(f"Fused QKV gradients quantized from SDPA's three gradients, no cat (fold_gradient_cat): "
                         f"{self.folded_gradient_cats} in backward")
        return "\n".join(lines)

    def table(self) -> str:
        """Every GEMM site on its own row, with its full reason."""
        return matmul_table(self.matmuls)

    def readable(self, name: Optional[str] = None) -> str:
        """The rewritten graphs' code (all, or the one named), each FP8 node marked."""
        out = []
        for gname, gm in self.graphs.items():
            if name is not None and gname != name:
                continue
            if not isinstance(gm, torch.fx.GraphModule):
                out.append(f"# {gname}: {gm}")
                continue
            marks = {n.name: n.meta[FP8_META_KEY] for n in gm.graph.nodes if FP8_META_KEY in n.meta}
            out.append(f"# ===== {gname} =====")
            for line in gm.code.splitlines():
                target = line.strip().split(" = ", 1)[0]
                mark = marks.get(target)
                if mark and "getitem" not in target:
                    what = "quantize" if mark["role"] == "quantize" else f"FP8 GEMM, {mark['role']}"
                    line = f"{line}  # <-- {what} of {mark['module'] or '<root>'}"
                out.append(line)
        return "\n".join(out)

    def diff(self) -> str:
        """Unified diff of each joint/inference graph before and after the pass."""
        chunks = []
        for gname, before in self.graphs_before.items():
            after = self.graphs.get(gname)
            if not isinstance(before, torch.fx.GraphModule) or not isinstance(after, torch.fx.GraphModule):
                continue
            chunks.extend(difflib.unified_diff(before.code.splitlines(), after.code.splitlines(),
                                               f"{gname} (before)", f"{gname} (after fp8pass)", lineterm="", n=1))
        return "\n".join(chunks)

    def to_dot(self, path: str, name: Optional[str] = None) -> list[str]:
        """Draw the graphs (or the one named) with graphviz; returns the files written.

        Needs the optional packages pydot and graphviz (the `dot` program)."""
        try:
            from torch.fx.passes.graph_drawer import FxGraphDrawer
        except ImportError as exc:  # pydot missing
            raise RuntimeError("Report.to_dot needs the optional package pydot and graphviz's `dot` program: "
                               "pip install pydot; apt-get install graphviz") from exc
        written = []
        for gname, gm in self.graphs.items():
            if (name is not None and gname != name) or not isinstance(gm, torch.fx.GraphModule):
                continue
            dot = FxGraphDrawer(gm, gname).get_dot_graph()
            out = path if name is not None else f"{path.rsplit('.', 1)[0]}_{gname}.{path.rsplit('.', 1)[-1]}"
            fmt = out.rsplit(".", 1)[-1]
            dot.write(out, format="raw" if fmt == "dot" else fmt)
            written.append(out)
        return written

    def to_dict(self) -> dict:
        """Everything as JSON-serialisable data."""
        def saved(items):
            return [dict(dataclasses.asdict(s), dtype=str(s.dtype), shape=[str(d) for d in s.shape],
                         fp8=s.fp8, is_graph_input=s.is_graph_input) for s in items or []]

        return {
            "matmuls": [dict(dataclasses.asdict(m), shape=[str(d) for d in m.shape]) for m in self.matmuls],
            "fp8_matmuls": len(self.fp8_matmuls),
            "saved": saved(self.saved),
            "saved_bytes": self.saved_bytes,
            "baseline_saved_bytes": self.baseline_saved_bytes,
            "graphs": sorted(self.graphs),
            "graph_breaks": list(self.graph_breaks),
            "weights_outside_graphs": list(self.weights_outside_graphs),
            "fprop_gemms_in_backward": self.fprop_gemms_in_backward,
            "numerics": self._numerics.to_dict() if self._numerics is not None else None,
        }

    # ---- numerics ---------------------------------------------------------------------------
    def numerics(self, threshold_db: float = 25.0, outlier_ratio: float = 1e3) -> NumericsReport:
        """Run every GEMM the pass converts on the real inputs of the explained call, in FP8 and
        in float64: per-site SQNR and calc_diff, and per-operand underflow/subnormal/outlier
        counts; sites under `threshold_db`, or with a tile whose largest value is over
        `outlier_ratio` times the tile's median magnitude, are flagged.

        Recompiles the model in observation mode and runs it once more (with the same inputs),
        keeping every converted GEMM's operands in memory while it runs."""
        if self._rerun is None:
            raise RuntimeError("Report.numerics() needs a report made by fp8pass.explain(model, *args)")
        take_observed()
        self._rerun()
        observed = take_observed()
        sites = []
        for key in sorted(observed):
            _graph, _index, module, role = key.split("|")
            a, b, *offs = observed[key]  # (a, b, offs) for an MoE experts' grouped GEMM
            sites.append(site_numerics(module, role, a, b, threshold_db, outlier_ratio, *offs))
        self._numerics = NumericsReport(sites, threshold_db)
        return self._numerics


def _folded(fqns: list[str]) -> str:
    """Names with their layer numbers folded into '*', each once, counted: "blocks.*.mlp.w1 (x16)"."""
    counts: dict[str, int] = {}
    for fqn in fqns:
        counts[_module_pattern(fqn)] = counts.get(_module_pattern(fqn), 0) + 1
    return ", ".join(f"{p} (x{n})" if n > 1 else p for p, n in counts.items())


def _new_graph_breaks(before: dict) -> list[str]:
    """Dynamo's graph-break reasons counted since `before` (a copy of its counters then), each as
    its first line, with its explanation where dynamo gives one."""
    from torch._dynamo.utils import counters

    reasons = []
    for reason, count in counters["graph_break"].items():
        new = count - before.get(reason, 0)
        if new <= 0:
            continue
        lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
        text = lines[0] if lines else str(reason)
        explanation = next((line for line in lines[1:] if line.startswith("Explanation:")), None)
        if explanation:
            text += " - " + explanation[len("Explanation:"):].strip()
        reasons.append(text + (f" (x{new})" if new > 1 else ""))
    return reasons


def _weights_outside(model, seen: set) -> list[str]:
    """FQNs of the model's floating-point parameters of two or more dims whose tensor (by identity)
    no compiled graph took as an input or attribute."""
    if not isinstance(model, torch.nn.Module):
        return []
    return [name for name, p in model.named_parameters()
            if p.dim() >= 2 and p.is_floating_point() and id(p) not in seen]


def _leaf_tensors(model, args, kwargs) -> list[torch.Tensor]:
    leaves = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    flat, _ = tree_flatten((args, kwargs))
    leaves += [t for t in flat if isinstance(t, torch.Tensor) and t.is_leaf and t.requires_grad]
    return leaves


def _run_once(model, args, kwargs, backend) -> None:
    """Compile with `backend`, run forward (and backward with ones when an output requires grad);
    the model's and inputs' .grad are left as they were."""
    leaves = _leaf_tensors(model, args, kwargs)
    old_grads = [None if t.grad is None else t.grad.clone() for t in leaves]
    try:
        out = torch.compile(model, backend=backend)(*args, **kwargs)
        flat, _ = tree_flatten(out)
        needs_grad = [t for t in flat if isinstance(t, torch.Tensor) and t.requires_grad]
        if needs_grad:
            torch.autograd.backward(needs_grad, [torch.ones_like(t) for t in needs_grad])
    finally:
        for t, g in zip(leaves, old_grads):
            t.grad = g


def explain(model, *args, fp8_config: Optional[Config] = None, baseline: bool = True, **kwargs) -> Report:
    """Compile `model` with the fp8 backend, run one forward (and a backward, with ones as the
    output gradient, when an output requires grad) on the given inputs, and report.

    fp8_config: a non-default Config to explain. baseline: also compile without the pass (one
    more compile and run) to report `baseline_saved_bytes`. The model's and inputs' .grad are
    left as they were."""
    from torch._dynamo.utils import counters

    from fp8pass.lowering import Recorder, compile_with_fp8

    config = fp8_config or Config()
    # a model the user already compiled: explain the module inside (compiling the wrapper again
    # names every module after the wrapper's frame, "__self__.0", and folds them into one row)
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        model = model._orig_mod
    seen_tensors: set = set()  # ids of the tensors the compiled graphs took (parameters among them)

    def run(cfg: Config, observe: bool = False) -> Recorder:
        recorder = Recorder(keep_graphs=True)

        def fp8_explain(gm, example_inputs, **_):
            seen_tensors.update(id(t) for t in example_inputs)
            seen_tensors.update(id(t) for t in gm.parameters())
            return compile_with_fp8(gm, example_inputs, cfg, recorder, observe=observe)

        _run_once(model, args, kwargs, fp8_explain)
        return recorder

    breaks_before = dict(counters["graph_break"])
    recorder = run(config)
    graph_breaks = _new_graph_breaks(breaks_before)
    outside = _weights_outside(model, seen_tensors)
    baseline_saved = None
    if baseline:
        baseline_saved = _saved_from(run(dataclasses.replace(config, fprop=False, dgrad=False, wgrad=False)).graphs)
    return Report(list(recorder.records), dict(recorder.graphs), _saved_from(recorder.graphs), baseline_saved,
                  graph_breaks, outside, dict(recorder.before), _rerun=lambda: run(config, observe=True))
