"""The `fp8` torch.compile backend: Inductor with the FP8 pass installed on the joint graph.

Dynamo hands the backend its FX graph (parameters lifted to inputs). The backend notes which
inputs are parameters and which modules the graph came from, then calls Inductor's
`compile_fx` with the pass as `joint_custom_pre_pass`: it runs on the joint forward+backward
graph before partitioning (and on inference graphs), so the partitioner sees the FP8 copies and
saves them for backward instead of the high-precision inputs.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
from typing import Optional

import torch
from torch._inductor.compile_fx import compile_fx
from torch._inductor.custom_graph_pass import CustomGraphPass

import fp8pass.kernels  # noqa: F401  (registers torch.ops.fp8pass.*)
from fp8pass.config import Config
from fp8pass import logs
from fp8pass.graph_pass import fp8_graph_pass, matmul_table
from fp8pass.policy import SiteContext
from fp8pass.sites import normalize_module_path, resolve_root

from .allocated_outputs import mark_quantize_ops
from .cat_quantize import fold_cat_into_quantization
from .fused_quantize import division_rounding_patch, fuse_quantize_ops
from .swiglu import decompose_swiglu_ops, fuse_swiglu_quantizations, rewrite_swiglu
from .recorder import Recorder
from .partitioner import Fp8Partitioner
from .source_digest import source_digest

log = logs.log

@dataclasses.dataclass(frozen=True)
class InputInfo:
    """What the backend knows of one graph input: is it a parameter, and its fqn."""

    is_param: bool
    fqn: str


def _describe_inputs(gm: torch.fx.GraphModule) -> list[InputInfo]:
    infos = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        example = node.meta.get("example_value")
        grapharg = node.meta.get("grapharg")
        name = node.name
        if grapharg is not None and getattr(grapharg, "source", None) is not None:
            _, parts = normalize_module_path(grapharg.source.name)
            name = ".".join(parts) or name
        infos.extend(_flattened_infos(example, isinstance(example, torch.nn.Parameter), name))
    return infos


def _flattened_infos(example, is_param: bool, name: str) -> list[InputInfo]:
    """One InputInfo per joint-graph placeholder of this input: AOTAutograd flattens a traceable
    tensor subclass (a DTensor, the FP8-all-gathered weight of fp8pass.distributed) into its
    inner tensors, recursively, in __tensor_flatten__ order; each keeps the input's flag and name."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if isinstance(example, torch.Tensor) and is_traceable_wrapper_subclass(example):
        attrs, _ = example.__tensor_flatten__()
        return [info for attr in attrs for info in _flattened_infos(getattr(example, attr), is_param, name)]
    return [InputInfo(is_param, name)]


def _module_lookup(gm: torch.fx.GraphModule):
    """fqn -> module instance, resolved against the frame dynamo is compiling (if reachable)."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        f_locals = InstructionTranslator.current_tx().f_locals
    except Exception:  # noqa: BLE001  (no frame: module instances are simply unknown)
        f_locals = {}
    modules: dict[str, Optional[torch.nn.Module]] = {}
    for node in gm.graph.nodes:
        for raw, _cls in (node.meta.get("nn_module_stack") or {}).values():
            root, parts = normalize_module_path(raw)
            fqn = ".".join(parts)
            if fqn in modules:
                continue
            module = resolve_root(root, f_locals)
            for part in parts:
                if module is None:
                    break
                module = getattr(module, part, None) if not part.isdigit() else (
                    module[int(part)] if hasattr(module, "__getitem__") else getattr(module, part, None))
            modules[fqn] = module if isinstance(module, torch.nn.Module) else None
    return modules


class Fp8JointPass(CustomGraphPass):
    """`joint_custom_pre_pass`: the FP8 rewrite, with a uuid for Inductor's caches."""

    def __init__(self, config: Config, inputs: list[InputInfo], modules: dict, recorder: Recorder, name: str,
                 observe: bool = False, outputs_are_model_outputs: bool = True):
        self.config = config
        self.outputs_are_model_outputs = outputs_are_model_outputs
        self.observe = observe
        self.inputs = inputs
        self.modules = modules
        self.recorder = recorder
        self.name = name

    def __call__(self, graph: torch.fx.Graph) -> None:
        primals = [n for n in graph.nodes if n.op == "placeholder" and not n.name.startswith("tangents")]
        if len(primals) != len(self.inputs):
            log.warning("fp8pass: graph %s has %d inputs but dynamo gave %d; no weights identified, nothing "
                        "converted", self.name, len(primals), len(self.inputs))
            info = {}
        else:
            info = dict(zip(primals, self.inputs))
        ctx = SiteContext(
            config=self.config,
            weight_fqn=lambda n: info[n].fqn if n in info else n.name,
            module_instance=lambda fqn: self.modules.get(fqn),
            outputs_are_model_outputs=self.outputs_are_model_outputs,
        )
        is_training = len(primals) != sum(1 for n in graph.nodes if n.op == "placeholder")
        kind = "joint" if is_training else "inference"
        self.recorder.add_graph(f"{self.name}_{kind}", graph, before=True)
        records = fp8_graph_pass(graph, ctx, lambda n: n in info and info[n].is_param, f"{self.name}_{kind}",
                                 observe=self.observe)
        self.recorder.add_records(records)
        self.recorder.add_graph(f"{self.name}_{kind}", graph)
        if self.config.log_decisions:
            for r in records:
                print(f"[fp8pass] {self.name} {r.role:5s} {r.module or '<root>'} {r.shape}: "
                      f"{'FP8' if r.fp8 else 'high precision'} ({r.reason})")
        if records:
            n_fp8 = sum(r.fp8 for r in records)
            log.info("%s_%s: %d of %d GEMMs in FP8\n%s", self.name, kind, n_fp8, len(records), matmul_table(records))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s_%s after the fp8 pass:\n%s", self.name, kind, graph.python_code("self").src)

    def uuid(self):
        mask = "".join("1" if i.is_param else "0" for i in self.inputs)
        mode = "observe" if self.observe else "fp8"
        piece = "" if self.outputs_are_model_outputs else "-inner"
        return f"fp8pass-{mode}-{source_digest()[:16]}-{self.config.cache_key()[:16]}-{mask}{piece}"


class Fp8PartitionedPass(CustomGraphPass):
    """`post_grad_custom_pre_pass` on each partitioned graph (forward, backward or inference):
    fuses SwiGLU into the dual quantizations that read it and turns the SwiGLU ops left back into
    aten ops (`swiglu`, see swiglu.py), folds a fused QKV gradient's cat into its quantization
    (`fold_cat`, see cat_quantize.py), records the graph for explain() (with a recorder), then
    fuses the activation and gradient quantizations into their producers' kernels (`fuse`, see
    fused_quantize.py) and gives the remaining ones buffers Inductor allocates (`allocate`, see
    allocated_outputs.py)."""

    def __init__(self, fuse: bool, allocate: bool, recorder: Optional[Recorder] = None, name: str = "",
                 swiglu: bool = False, fold_cat: bool = False):
        self.fuse = fuse
        self.allocate = allocate
        self.swiglu = swiglu
        self.fold_cat = fold_cat
        self.recorder = recorder
        self.name = name

    def __call__(self, graph: torch.fx.Graph) -> None:
        if self.swiglu:
            fused = fuse_swiglu_quantizations(graph)
            if fused:
                log.debug("fp8pass: %d SwiGLU op(s) fused into the quantizations reading them", fused)
        decompose_swiglu_ops(graph)  # any left (also from a graph compiled with swiglu=False)
        if self.fold_cat:
            folded = fold_cat_into_quantization(graph)
            if folded:
                log.debug("fp8pass: %d gradient cat(s) folded into their quantizations", folded)
        if self.recorder is not None:  # with the SwiGLU fusions: explain() reports them
            names = [n.name for n in graph.nodes if n.op == "placeholder"]
            if any(n.startswith("tangents") for n in names):
                kind = "backward"
            elif any(n.startswith("primals") for n in names):
                kind = "forward"
            else:
                kind = "inference"
            self.recorder.add_graph(f"{self.name}_{kind}", graph)
        if self.fuse:
            fused = fuse_quantize_ops(graph)
            if fused:
                log.debug("fp8pass: %d quantize op(s) fused into their producers' kernels", fused)
        if self.allocate:
            marked = mark_quantize_ops(graph)
            if marked:
                log.debug("fp8pass: %d quantize op(s) write into buffers Inductor allocates", marked)

    def uuid(self):
        return (f"fp8pass-partitioned-{source_digest()[:16]}-fuse={self.fuse}-allocate={self.allocate}"
                f"-swiglu={self.swiglu}-fold_cat={self.fold_cat}")


_graph_counter = itertools.count()


def _outputs_are_model_outputs(gm: torch.fx.GraphModule) -> bool:
    """False for a piece of DDPOptimizer's split (torch.compile of a DDP module cuts the graph at
    gradient-bucket boundaries and compiles each piece with this backend) other than the last:
    its outputs feed the next piece, so the output-head rule must not fire there. DDPOptimizer
    marks its pieces with `compile_subgraph_reason` and compiles them in order from
    SubmodCompiler.run_node, whose current node is found on the stack."""
    if "DDPOptimizer" not in str(getattr(gm, "compile_subgraph_reason", "")):
        return True
    frame = sys._getframe(1)
    while frame is not None:
        node = frame.f_locals.get("n")
        if (frame.f_code.co_name == "run_node" and type(frame.f_locals.get("self")).__name__ == "SubmodCompiler"
                and isinstance(node, torch.fx.Node)):
            pieces = [m for m in node.graph.nodes if m.op == "call_module"]
            return node is pieces[-1]
        frame = frame.f_back
    # not found (DDPOptimizer's private structure changed): judge the piece as a whole graph, so a
    # Linear right before a bucket boundary may be kept as an "output head"; say so once
    logs.warn_once("ddp piece", "fp8pass: could not place a DDPOptimizer graph piece among its siblings; a Linear "
                   "at a bucket boundary may stay in high precision as an output head (fp8_output_head=True or "
                   "module_filter decide it instead)")
    return True


def _mode_patches(mode: Optional[str]) -> dict:
    if mode in (None, "default"):
        return {}
    try:
        return dict(torch._inductor.list_mode_options(mode))
    except KeyError:
        raise ValueError(f"fp8pass: unknown torch.compile mode {mode!r}; the modes are "
                         f"{sorted(torch._inductor.list_mode_options())}") from None


_HOOKS = ("joint_custom_pre_pass", "custom_partitioner_fn", "post_grad_custom_pre_pass")


def _warn_about_replaced_hooks(patches: dict) -> None:
    """The backend installs Inductor hooks of its own; one a user set globally is replaced for
    these graphs, which they should hear about (once per hook)."""
    import torch._inductor.config as inductor_config

    for key in _HOOKS:
        if key in patches and getattr(inductor_config, key, None) is not None:
            logs.warn_once(("replaced hook", key), f"fp8pass: torch._inductor.config.{key} is set; backend='fp8' "
                           f"uses its own {key} for the graphs it compiles, so yours does not run there")


# The kernels' e4m3 conversions and FP8 MMAs need compute capability 8.9 (Ada) or newer (Hopper:
# 9.0, where every figure in benchmarks/RESULTS.md was measured); on an older GPU they would fail to
# compile at the first step with an error from deep inside Triton.
MIN_CAPABILITY = (8, 9)


def gpus_without_fp8(devices, capability=None, name=None) -> list[str]:
    """The CUDA devices among `devices` whose compute capability is below MIN_CAPABILITY, each as
    "NAME (cuda:I, smXY)". (capability, name: torch.cuda's functions, replaceable in tests.)"""
    capability = capability or torch.cuda.get_device_capability
    name = name or torch.cuda.get_device_name
    found = []
    for device in sorted({torch.device(d) for d in devices if torch.device(d).type == "cuda"}, key=str):
        major, minor = capability(device)
        if (major, minor) < MIN_CAPABILITY:
            found.append(f"{name(device)} ({device}, sm{major}{minor})")
    return found


def compile_with_fp8(gm: torch.fx.GraphModule, example_inputs, config: Config,
                     recorder: Optional[Recorder] = None, observe: bool = False, mode: Optional[str] = None):
    """Compile a dynamo graph with Inductor and the FP8 pass (observe=True: see fp8pass.numerics).

    mode: torch.compile's mode ("reduce-overhead": CUDA graphs, which remove the per-op launch
    cost that dominates small FP8 GEMMs; "max-autotune"...), as Inductor applies it.

    On a GPU without FP8 (compute capability below 8.9, e.g. an A100) the graph is compiled by
    Inductor without the pass, with a warning that says so, so one script runs on any card."""
    old_gpus = gpus_without_fp8(t.device for t in example_inputs if isinstance(t, torch.Tensor))
    if old_gpus:
        logs.warn_once(("no FP8 on", tuple(old_gpus)),
                       f"fp8pass: backend='fp8' needs a GPU of compute capability 8.9 or newer (Ada, Hopper) for "
                       f"FP8; {', '.join(old_gpus)} has none, so its graphs are compiled by Inductor without the "
                       f"FP8 pass (they train in the model's own precision)")
        return compile_fx(gm, example_inputs, config_patches=_mode_patches(mode))
    # explain() gets graph_0, graph_1, ... per report; plain compiles are numbered per process
    name = f"graph_{next(_graph_counter) if recorder is None else recorder.next_graph_index()}"
    recorder = recorder if recorder is not None else Recorder(keep_graphs=False)
    swiglu = config.fuse_swiglu and not observe and rewrite_swiglu(gm) > 0
    patches = _mode_patches(mode)
    patches |= {
        "joint_custom_pre_pass": Fp8JointPass(config, _describe_inputs(gm), _module_lookup(gm), recorder, name,
                                              observe, _outputs_are_model_outputs(gm)),
    }
    if not observe and (config.fp8_saved_activations or config.recompute_fp8_weights
                        or config.recompute_fp8_activations):
        patches["custom_partitioner_fn"] = Fp8Partitioner(
            config.recompute_fp8_weights,
            config.fp8_saved_activations_min_bytes if config.fp8_saved_activations else None,
            config.recompute_fp8_activations)
    fuse = config.fuse_quantization and not observe
    if fuse:
        patches.update(division_rounding_patch())
    allocate = config.inductor_buffers and not observe
    # (with fuse_quantization, Inductor generates the quantization inside the cat's kernel instead)
    fold_cat = config.fold_gradient_cat and not observe and not fuse
    if recorder.keep_graphs or fuse or allocate or swiglu or fold_cat:
        # Without a recorder the pass holds only its flags: per-compile state would defeat the caches.
        patches["post_grad_custom_pre_pass"] = (
            Fp8PartitionedPass(fuse, allocate, recorder, name, swiglu, fold_cat) if recorder.keep_graphs
            else Fp8PartitionedPass(fuse, allocate, swiglu=swiglu, fold_cat=fold_cat))
    _warn_about_replaced_hooks(patches)
    if not (recorder.keep_graphs or config.log_decisions or logs.enabled()):
        return compile_fx(gm, example_inputs, config_patches=patches)
    # A cached graph would skip the pass, and with it what explain() and the logs must show.
    patches["fx_graph_cache"] = False
    with torch._functorch.config.patch(enable_autograd_cache=False):
        return compile_fx(gm, example_inputs, config_patches=patches)


def backend(config: Optional[Config] = None, mode: Optional[str] = None, **options):
    """A backend callable: `torch.compile(model, backend=fp8pass.backend(wgrad=False))`.

    Takes a `Config`, or its fields as keywords (the same keys as `options=` of backend="fp8"),
    and torch.compile's `mode` ("reduce-overhead" for CUDA graphs)."""
    cfg = Config.from_options(options, config=config) if config is not None else Config.from_options(options)

    def fp8(gm, example_inputs, **kwargs):
        if kwargs.get("options"):
            raise TypeError("fp8pass.backend(...) already holds its options; pass them there, "
                            "not as torch.compile(options=...)")
        return compile_with_fp8(gm, example_inputs, cfg, mode=kwargs.get("mode") or mode)

    fp8.config = cfg
    return fp8


def fp8_backend(gm, example_inputs, options: Optional[dict] = None, mode: Optional[str] = None):
    """The `backend="fp8"` entry point: `torch.compile(m, backend="fp8", options={...})`."""
    return compile_with_fp8(gm, example_inputs, Config.from_options(options), mode=mode)
