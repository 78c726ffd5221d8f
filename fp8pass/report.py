"""`fp8pass.explain`: compile a model with the fp8 backend, run it once, report what happened."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch.utils._pytree import tree_flatten

from .config import Config
from .graph_pass import MatmulRecord
from .rewrite import FP8_META_KEY
from .sites import module_of


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
        return self.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)

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
    """The forward graph's outputs that the backward graph takes as (non-tangent) inputs."""
    wanted = {n.name for n in backward.graph.nodes if n.op == "placeholder" and not n.name.startswith("tangents")}
    output = next(n for n in forward.graph.nodes if n.op == "output")
    saved = []
    for node in output.all_input_nodes:
        val = node.meta.get("val")
        if node.name not in wanted or not isinstance(val, torch.Tensor):
            continue
        producer = node
        while producer.op == "call_function" and producer.target.__name__ == "getitem":
            producer = producer.args[0]
        target = producer.target if producer.op == "call_function" else producer.op
        fqn = (producer.meta.get(FP8_META_KEY) or {}).get("module") or module_of(producer)[0]
        saved.append(SavedTensor(graph, node.name, str(target), fqn, tuple(val.shape), val.dtype, _nbytes(val)))
    return saved


@dataclasses.dataclass
class Report:
    """What the fp8 backend did to one model call.

    matmuls: one MatmulRecord per GEMM site (.module, .role, .shape, .fp8, .reason).
    graphs: the rewritten graphs by name (`graph_N_joint` / `graph_N_inference` as the pass left
        them, `graph_N_forward` / `graph_N_backward` as Inductor lowers them after partitioning).
    saved: the tensors saved for backward, from the partitioned graphs.
    """

    matmuls: list[MatmulRecord]
    graphs: dict
    saved: list[SavedTensor]

    @property
    def fp8_matmuls(self) -> list[MatmulRecord]:
        return [m for m in self.matmuls if m.fp8]

    @property
    def saved_bytes(self) -> int:
        return sum(s.bytes for s in self.saved)

    def __str__(self) -> str:
        rows = [("module", "role", "M x K x N", "fp8", "reason")]
        for m in self.matmuls:
            rows.append((m.module or "<root>", m.role, " x ".join(str(d) for d in m.shape), "yes" if m.fp8 else "no",
                         m.reason))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
        lines.insert(1, "-" * min(120, len(lines[0]) + 20))
        n_fp8 = len(self.fp8_matmuls)
        lines.append(f"{n_fp8} of {len(self.matmuls)} GEMMs in FP8")
        if self.saved:
            acts = [s for s in self.saved if not s.is_graph_input]
            fp8_bytes = sum(s.bytes for s in acts if s.fp8)
            lines.append(f"saved for backward: {len(acts)} activations, {sum(s.bytes for s in acts) / 2**20:.2f} MiB "
                         f"({fp8_bytes / 2**20:.2f} MiB of it FP8), plus {len(self.saved) - len(acts)} graph inputs "
                         f"(parameters, inputs) kept alive")
        return "\n".join(lines)


def _leaf_tensors(model: torch.nn.Module, args, kwargs) -> list[torch.Tensor]:
    leaves = [p for p in model.parameters()] if isinstance(model, torch.nn.Module) else []
    flat, _ = tree_flatten((args, kwargs))
    leaves += [t for t in flat if isinstance(t, torch.Tensor) and t.is_leaf and t.requires_grad]
    return leaves


def explain(model, *args, fp8_config: Optional[Config] = None, **kwargs) -> Report:
    """Compile `model` with the fp8 backend, run one forward (and a backward, with ones as the
    output gradient, when an output requires grad) on the given inputs, and report.

    The model's and inputs' .grad are left as they were. Pass `fp8_config=Config(...)` to explain
    a non-default configuration."""
    from fp8pass.lowering import Recorder, compile_with_fp8

    config = fp8_config or Config()
    recorder = Recorder(keep_graphs=True)

    def fp8_explain(gm, example_inputs, **_):
        return compile_with_fp8(gm, example_inputs, config, recorder)

    leaves = _leaf_tensors(model, args, kwargs)
    old_grads = [None if t.grad is None else t.grad.clone() for t in leaves]
    compiled = torch.compile(model, backend=fp8_explain)
    out = compiled(*args, **kwargs)
    flat, _ = tree_flatten(out)
    needs_grad = [t for t in flat if isinstance(t, torch.Tensor) and t.requires_grad]
    if needs_grad:
        torch.autograd.backward(needs_grad, [torch.ones_like(t) for t in needs_grad])
    for t, g in zip(leaves, old_grads):
        t.grad = g

    saved = []
    for name in recorder.graphs:
        if name.endswith("_forward"):
            base = name[: -len("_forward")]
            fw, bw = recorder.graphs[name], recorder.graphs.get(base + "_backward")
            if isinstance(fw, torch.fx.GraphModule) and isinstance(bw, torch.fx.GraphModule):
                saved += saved_tensors(fw, bw, base)
    return Report(list(recorder.records), dict(recorder.graphs), saved)
