"""Multi-GPU training with backend="fp8": FSDP2's FP8 weight all-gather.

DDP and FSDP2 need nothing from this module: the pass keeps every parameter and gradient as the
user has them (dtype, shape, layout), so DDP's buckets and FSDP2's reduce-scatter see what they
see in BF16 training, and under FSDP2 the compiled graphs receive the all-gathered (unsharded)
weights as ordinary parameters.

What this module adds is the FP8 weight all-gather. `enable_fp8_all_gather(model)`, called before
`fully_shard`, wraps each eligible Linear weight in `Fp8AllGatherWeight`. FSDP2 then calls the
wrapper's extension hooks around its all-gather:

  fsdp_pre_all_gather:  the local shard (rows [r*R/W, (r+1)*R/W) of W[R, C]) is quantized in
                        128x128 blocks: E4M3 data [R/W, C] and fp32 scales [R/(128W), C/128];
                        those two are all-gathered (1 byte per element plus 1/16384 of 4 bytes)
                        instead of the high-precision shard (2 bytes per element in BF16).
  fsdp_post_all_gather: the gathered data [R, C] and scales [R/128, C/128] become the unsharded
                        weight, an `Fp8GatheredWeight` tensor subclass with the parameter's dtype.

When the rows per shard are a multiple of 128, the shard boundaries are block boundaries, so
the gathered data and scales are bit-identical to quantizing the full weight in one process
(what the pass does without the all-gather). Under torch.compile, AOTAutograd flattens the
gathered weight into its data and scales, and the subclass reads itself as
`fp8pass.dequantize(data, scales, 128, 128)`; the pass recognizes that pattern
(sites.is_prequantized_weight) and feeds data and scales straight to the Fprop and Dgrad GEMMs,
so no high-precision copy of the weight is materialized. The master weight (the shard), its
gradient (a plain tensor, reduce-scattered as usual) and the optimizer state are untouched.

A weight is left to FSDP2's ordinary all-gather, with a reason, when it is not a Linear the pass
converts (K or N not a multiple of 128, the output head, a weight tied to an embedding,
module_filter, high_precision marks, an MoE router: a Linear named `router` or `gate`) or when its rows per shard are not a multiple of 128
(blocks would straddle shards; that includes uneven sharding, where FSDP2 pads the shards).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.utils._pytree import tree_map_only

from . import kernels  # noqa: F401  (registers torch.ops.fp8pass.*)
from .config import Config

aten = torch.ops.aten
TILE = 128
_ROUTER_NAMES = ("router", "gate")  # module names of MoE routers (not "gate_proj": a SwiGLU's Linear)

__all__ = ["AllGatherDecision", "Fp8AllGatherWeight", "Fp8GatheredWeight", "CollectiveBytes",
           "enable_fp8_all_gather", "fp8_all_gather_weights", "unwrap_fp8_all_gather"]


# ---------------------------------------------------------------------------------------------
# The unsharded (gathered) weight
# ---------------------------------------------------------------------------------------------

class Fp8GatheredWeight(torch.Tensor):
    """An all-gathered weight held as 128x128-block E4M3 data and fp32 block scales.

    It has the parameter's shape and (high-precision) dtype; every op other than aliasing reads
    it dequantized (`fp8pass.dequantize(data, scale, 128, 128, dtype)`), which under
    torch.compile the pass replaces by the FP8 operands themselves. Autograd gives it an ordinary
    gradient of its dtype, which FSDP2 reduce-scatters."""

    @staticmethod
    def __new__(cls, data: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, requires_grad: bool = False):
        return torch.Tensor._make_wrapper_subclass(cls, data.shape, strides=data.stride(), dtype=dtype,
                                                   device=data.device, requires_grad=requires_grad)

    def __init__(self, data, scale, dtype, requires_grad=False):
        self._data = data
        self._scale = scale

    def dequantize(self) -> torch.Tensor:
        return torch.ops.fp8pass.dequantize(self._data, self._scale, TILE, TILE, self.dtype)

    def __tensor_flatten__(self):
        return ["_data", "_scale"], self.dtype

    @staticmethod
    def __tensor_unflatten__(inner, dtype, outer_size, outer_stride):
        return Fp8GatheredWeight(inner["_data"], inner["_scale"], dtype)

    def _stable_hash_for_caching(self) -> str:
        return (f"fp8pass.Fp8GatheredWeight:{self.dtype}:{tuple(self.shape)}:{self.stride()}:"
                f"{tuple(self._scale.shape)}:{self.device.type}")

    def __repr__(self):
        return f"Fp8GatheredWeight(shape={tuple(self.shape)}, dtype={self.dtype}, blocks={tuple(self._scale.shape)})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args, kwargs=None):
        kwargs = kwargs or {}
        if func in (aten.detach.default, aten.alias.default):
            t = args[0]
            return Fp8GatheredWeight(t._data, t._scale, t.dtype)
        if func is aten.as_strided.default:  # FSDP2 views the unsharded tensor at its own size
            t, size, stride = args[:3]
            offset = args[3] if len(args) > 3 else kwargs.get("storage_offset", 0)
            if tuple(size) == tuple(t.shape) and tuple(stride) == t.stride() and not offset:
                return Fp8GatheredWeight(t._data, t._scale, t.dtype)
        args, kwargs = tree_map_only(Fp8GatheredWeight, lambda t: t.dequantize(), (args, kwargs))
        return func(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# The sharded weight (FSDP2's local tensor), with the all-gather extension hooks
# ---------------------------------------------------------------------------------------------

# Ops through which FSDP2 builds and pads the local shard: their results stay wrapped so that
# the sharded DTensor's local tensor keeps the hooks. Everything else (optimizer math, grads,
# state_dict consumers) sees the plain master tensor.
_PRESERVE = {
    aten.empty_like.default, aten.new_zeros.default, aten.new_empty.default, aten.slice.Tensor,
    aten.copy_.default, aten.view.default, aten.as_strided.default, aten._to_copy.default,
    aten._pin_memory.default, aten.split.Tensor, aten.split_with_sizes.default, aten.clone.default,
    aten.detach.default, aten.alias.default,
}


def _rows_reason(rows: int, world_size: int) -> Optional[str]:
    """Why a weight with `rows` rows cannot be FP8-all-gathered on `world_size` shards, or None."""
    if rows % world_size:
        return (f"{rows} rows do not split evenly over {world_size} shards (FSDP2 pads the shards, and "
                f"128x128 blocks would straddle them); BF16 all-gather")
    if (rows // world_size) % TILE:
        return (f"{rows // world_size} rows per shard ({rows} over {world_size}) is not a multiple of 128, so "
                f"128x128 blocks would straddle shards; BF16 all-gather")
    return None


class Fp8AllGatherWeight(torch.Tensor):
    """A master weight (any float dtype) that FSDP2 all-gathers as 128x128-block FP8.

    Wraps the plain tensor `_tensor`; ops unwrap it (in-place ops update it), so optimizers and
    gradients see an ordinary tensor. Implements FSDP2's all-gather extension
    (`fsdp_pre_all_gather` with the 5-argument signature of torch >= 2.5, used by 2.11 and 2.13,
    and `fsdp_post_all_gather`)."""

    @staticmethod
    def __new__(cls, tensor: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls, tensor.size(), strides=tensor.stride(), storage_offset=tensor.storage_offset(),
            dtype=tensor.dtype, layout=tensor.layout, device=tensor.device, requires_grad=tensor.requires_grad)

    def __init__(self, tensor: torch.Tensor):
        self._tensor = tensor

    def __tensor_flatten__(self):
        return ["_tensor"], None

    @staticmethod
    def __tensor_unflatten__(inner, ctx, outer_size, outer_stride):
        return Fp8AllGatherWeight(inner["_tensor"])

    def _stable_hash_for_caching(self) -> str:
        return f"fp8pass.Fp8AllGatherWeight:{self.dtype}:{tuple(self.shape)}:{self.stride()}:{self.device.type}"

    def __repr__(self):
        return f"Fp8AllGatherWeight({self._tensor!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args, kwargs=None):
        unwrapped_args, unwrapped_kwargs = tree_map_only(Fp8AllGatherWeight, lambda t: t._tensor,
                                                         (args, kwargs or {}))
        out = func(*unwrapped_args, **unwrapped_kwargs)
        if func._schema.is_mutable and args and isinstance(args[0], Fp8AllGatherWeight):
            return args[0]  # in-place on the master tensor (copy_ too): hand back the wrapper, as torch does
        if func in _PRESERVE:
            return tree_map_only(torch.Tensor, Fp8AllGatherWeight, out)
        return out

    # -- FSDP2 extension ------------------------------------------------------------------------
    def fsdp_pre_all_gather(self, mesh, outer_size, outer_stride, module, mp_policy):
        shard = self._tensor
        world_size = mesh.size()
        if len(outer_size) == 2 and tuple(shard.shape[1:]) != tuple(outer_size[1:]):
            # Neither the FP8 path nor the row-padding fallback below fits another shard dim.
            raise RuntimeError(
                f"fp8pass: the FP8 all-gather supports FSDP2's default dim-0 sharding, but a weight of shape "
                f"{list(outer_size)} is sharded as {list(shard.shape)} (a shard_placement_fn?); leave it out of "
                f"fp8pass.enable_fp8_all_gather (config.module_filter) or shard it along dim 0")
        reason = _rows_reason(outer_size[0], world_size) if len(outer_size) == 2 else "not 2-D"
        param_dtype = getattr(mp_policy, "param_dtype", None) or self.dtype
        if reason is not None:  # fallback: the ordinary high-precision all-gather (shard padded as FSDP2 does)
            _warn_fallback_once(tuple(outer_size), world_size, reason)
            rows = -(-outer_size[0] // world_size)
            padded = shard.new_zeros((rows, *shard.shape[1:]), dtype=param_dtype)
            padded[: shard.shape[0]].copy_(shard)
            return (padded,), None
        # Quantized from the master dtype (fp32 master weights lose nothing to a BF16 cast first).
        data, scale = torch.ops.fp8pass.quantize_128x128(shard)
        return (data, scale), "fp8"

    def fsdp_post_all_gather(self, all_gather_outputs: tuple[torch.Tensor, ...], metadata: Any,
                             param_dtype: torch.dtype, *, out: Optional[torch.Tensor] = None):
        # The outputs are views of FSDP2's all-gather buffers, which it frees after use and
        # refills in place on the next all-gather: an existing `out` already sees the new data.
        if out is not None:
            return
        if metadata is None:
            (weight,) = all_gather_outputs
            return weight, ()
        data, scale = all_gather_outputs
        return Fp8GatheredWeight(data, scale, param_dtype), ()


_warned: set = set()


def _warn_fallback_once(shape, world_size, reason):
    if (shape, world_size) not in _warned:
        _warned.add((shape, world_size))
        warnings.warn(f"fp8pass: FP8 all-gather of a weight of shape {list(shape)}: {reason}", stacklevel=2)


# ---------------------------------------------------------------------------------------------
# The user surface
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AllGatherDecision:
    """One Linear weight and whether it is all-gathered in FP8 (reason when not)."""

    weight: str
    shape: tuple
    fp8: bool
    reason: str = ""


def _head_and_tied(model: nn.Module) -> tuple[Optional[str], set]:
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return (linears[-1] if linears else None), embeddings


def enable_fp8_all_gather(model: nn.Module, world_size: Optional[int] = None, config: Optional[Config] = None,
                          verbose: bool = False) -> list[AllGatherDecision]:
    """Make FSDP2 all-gather the model's eligible Linear weights as 128x128-block FP8.

    Call it after building the model and BEFORE `fully_shard` (the wrapper must be the tensor
    FSDP2 shards). `world_size`: the FSDP shard group size (default: the default process
    group's). `config`: the same Config as the backend, for fp8_output_head and module_filter,
    so that only weights whose GEMMs the pass converts travel in FP8 (a high-precision GEMM
    would otherwise read an FP8-rounded weight). The output head is taken to be the last
    nn.Linear in module order (the pass finds it from the graph; a model whose head is not last
    should exclude it with config.module_filter). Returns one decision per nn.Linear weight."""
    if world_size is None:
        import torch.distributed as dist

        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    cfg = config or Config()
    head, embedding_weights = _head_and_tied(model)
    marked = _marked_high_precision(model)
    # A weight held by more than one module (tied): wrapping it for one would untie it.
    owners: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param_name, param in module.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(param), []).append(f"{module_name}.{param_name}" if module_name else param_name)
    decisions = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        fqn = f"{name}.weight" if name else "weight"
        shape = tuple(weight.shape)
        out_f, in_f = shape
        reason = None
        if isinstance(weight, Fp8AllGatherWeight) or isinstance(getattr(weight, "_local_tensor", None),
                                                                  Fp8AllGatherWeight):
            decisions.append(AllGatherDecision(fqn, shape, True, "already enabled"))
            continue
        if hasattr(weight, "_local_tensor"):
            reason = "already sharded: call enable_fp8_all_gather before fully_shard"
        elif in_f % TILE or out_f % TILE:
            reason = f"in/out features {in_f}/{out_f} not multiples of 128: the pass keeps this Linear in high precision"
        elif id(weight) in embedding_weights and not cfg.fp8_output_head:
            reason = "weight tied to an embedding (output head, kept in high precision)"
        elif len(set(owners.get(id(weight), []))) > 1:
            others = sorted(set(owners[id(weight)]) - {fqn})
            reason = f"weight shared with {', '.join(others)} (tied): a wrapper would untie it"
        elif name == head and not cfg.fp8_output_head:
            reason = "output head (last nn.Linear), kept in high precision; Config(fp8_output_head=True) converts it"
        elif name in marked:
            reason = "marked fp8pass.high_precision"
        elif name.rsplit(".", 1)[-1] in _ROUTER_NAMES and not cfg.fp8_moe_gates:
            # the pass finds routers in the graph (output into topk); here only the name can tell
            reason = ("an MoE router by its name, kept in high precision as in DeepSeek-V3; "
                      "Config(fp8_moe_gates=True) converts it")
        elif cfg.module_filter is not None and not cfg.module_filter(name, module):
            reason = "module_filter returned False"
        else:
            reason = _rows_reason(out_f, world_size)
        if reason is None:
            module.weight = nn.Parameter(Fp8AllGatherWeight(weight.data), requires_grad=weight.requires_grad)
            module.register_state_dict_post_hook(_plain_weight_in_state_dict)
            module.register_load_state_dict_post_hook(_rewrap_weight_after_load)
        decisions.append(AllGatherDecision(fqn, shape, reason is None, reason or ""))
    if verbose:
        for d in decisions:
            print(f"[fp8pass] all-gather {d.weight} {list(d.shape)}: {'FP8' if d.fp8 else 'high precision'}"
                  f"{' (' + d.reason + ')' if d.reason else ''}")
    return decisions


# ---------------------------------------------------------------------------------------------
# Checkpoints: state dicts hold plain tensors; loading keeps the wrapper
# ---------------------------------------------------------------------------------------------

def unwrap_fp8_all_gather(tensor: Any) -> Any:
    """`tensor` without the Fp8AllGatherWeight wrapper: its master tensor (an alias, same dtype
    and values), or a DTensor of the same mesh, placements and shape over it. Anything else is
    returned as it is."""
    if isinstance(tensor, Fp8AllGatherWeight):
        return tensor._tensor
    local = getattr(tensor, "_local_tensor", None)
    if isinstance(local, Fp8AllGatherWeight):
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(local._tensor, tensor.device_mesh, tensor.placements, run_check=False,
                                  shape=tensor.shape, stride=tensor.stride())
    return tensor


def _plain_weight_in_state_dict(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook of a Linear whose weight enable_fp8_all_gather wrapped: the saved
    weight is the plain master tensor (a DTensor over it under FSDP2), so checkpoints (torch.save,
    torch.distributed.checkpoint) never see the wrapper. With keep_vars=True the entry is the
    Parameter itself and stays as it is."""
    key = prefix + "weight"
    value = state_dict.get(key)
    if value is not None and not isinstance(value, nn.Parameter):
        state_dict[key] = unwrap_fp8_all_gather(value)


def _rewrap_weight_after_load(module: nn.Module, incompatible_keys) -> None:
    """load_state_dict post-hook: an ordinary load copies into the wrapped master tensor, so the
    wrapper stays; load_state_dict(assign=True) (and torch.distributed.checkpoint's loads into
    meta-device models) put the loaded tensor in place of the parameter, which is wrapped again
    here. It runs before FSDP2's own post-load hook (registered later, by fully_shard), which then
    takes the wrapped local tensor as the shard."""
    weight = module.weight
    local = getattr(weight, "_local_tensor", None)
    if local is not None:
        if not isinstance(local, Fp8AllGatherWeight):
            weight._local_tensor = Fp8AllGatherWeight(local)
    elif not isinstance(weight, Fp8AllGatherWeight):
        module.weight = nn.Parameter(Fp8AllGatherWeight(weight.data), requires_grad=weight.requires_grad)


def _marked_high_precision(model: nn.Module) -> set[str]:
    """Names of modules under an fp8pass.high_precision mark (on the instance, its class, or an
    enclosing module: a mark covers every matmul traced inside)."""
    marked = set()
    for name, module in model.named_modules():
        forward = getattr(module, "forward", None)
        if getattr(forward, "__fp8pass_high_precision__", None) or any(
                name == m or name.startswith(m + ".") or m == "" for m in marked):
            marked.add(name)
    return marked


def fp8_all_gather_weights(model: nn.Module) -> list[str]:
    """Names of the parameters that FSDP2 all-gathers in FP8."""
    names = []
    for name, p in model.named_parameters():
        local = getattr(p, "_local_tensor", p)
        if isinstance(local, Fp8AllGatherWeight) or isinstance(p, Fp8AllGatherWeight):
            names.append(name)
    return names


class CollectiveBytes(contextlib.ContextDecorator):
    """Counts the bytes this rank puts into all-gathers, reduce-scatters and all-reduces issued
    through torch.distributed's Python functions while active (FSDP2 calls all_gather_single /
    reduce_scatter_single in torch 2.13 and all_gather_into_tensor / reduce_scatter_tensor in
    older versions; every name that exists is counted once, nested calls not again). DDP's
    all-reduces run in its C++ reducer and are not seen. Fields: .all_gather, .reduce_scatter,
    .all_reduce (bytes of the input tensors) and .calls."""

    _FUNCTIONS = {  # name -> (field, index of the input tensor among the positional args)
        "all_gather_single": ("all_gather", 1), "all_gather_into_tensor": ("all_gather", 1),
        "_all_gather_base": ("all_gather", 1),
        "reduce_scatter_single": ("reduce_scatter", 1), "reduce_scatter_tensor": ("reduce_scatter", 1),
        "_reduce_scatter_base": ("reduce_scatter", 1),
        "all_reduce": ("all_reduce", 0),
    }

    def __init__(self):
        self._saved = {}
        self._depth = 0
        self.reset()

    def reset(self):
        self.all_gather = self.reduce_scatter = self.all_reduce = self.calls = 0

    def __enter__(self):
        import torch.distributed as dist

        for name, (field, index) in self._FUNCTIONS.items():
            original = getattr(dist, name, None)
            if original is None:
                continue
            self._saved[name] = original

            def counting(*args, _original=original, _field=field, _index=index, **kwargs):
                if self._depth == 0:
                    tensor = args[_index] if len(args) > _index else next(
                        v for k, v in kwargs.items() if k in ("input_tensor", "input", "tensor"))
                    setattr(self, _field, getattr(self, _field) + tensor.numel() * tensor.element_size())
                    self.calls += 1
                self._depth += 1
                try:
                    return _original(*args, **kwargs)
                finally:
                    self._depth -= 1

            setattr(dist, name, counting)
        return self

    def __exit__(self, *exc):
        import torch.distributed as dist

        for name, original in self._saved.items():
            setattr(dist, name, original)
        self._saved = {}
        return False
