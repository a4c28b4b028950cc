"""Sparsity-aware FLOP counting: fvcore on the dense graph, scaled per layer by the mask.

Convention (fvcore's): **one multiply-add = one flop**, batch 1, ``input_shape`` is one sample
without the batch dimension. Bias additions, activations, residual adds and max-pooling are not
counted (fvcore ignores them or reports them in ``unsupported_ops``); batch-norm counts
2 flops per element, adaptive average pooling 1 per input element. ``torch.utils.flop_counter``
counts 2 per multiply-add and skips batch-norm: divide it by 2 to compare conv/linear terms.

Sparse-aware count. The dense graph is counted once per architecture (cached), then every
Conv1d/Conv2d/Linear is scaled by the fraction of its weights that still do work:

    kept = #{weights w[o, j, ...] : mask != 0 and input channel of j is live} / weight.numel()

For an element (``weight``) mask with every input live this is the mask's density; for a
channel mask (whole output rows zero) it is kept-output x kept-input channels, the input side
coming from the producers' pruned outputs. Which input channels are live is found by one
dataflow pass (:func:`channel_liveness`): the network is run with every Conv/Linear weight
replaced by its 0/1 mask, biases zeroed, batch-norm set to the identity, other parameters made
non-negative and an all-ones input, and each Conv/Linear output binarised to ``!= 0``. A channel
that is zero in that pass carries no data in any input (it is constant, so a compacted
network folds it into the next bias). Residual adds are unions: a channel stays live after
``a + b`` when either branch carries it, so a channel pruned in one branch of a ResNet block
still costs its flops downstream when the shortcut keeps it. Other layers with counted flops
(batch-norm, pooling) are scaled by the live fraction of their input elements. Flops counted in
a parent's ``forward`` (functional calls) are left dense. Ops that map 0 to a non-zero constant
(``sigmoid``) or subtract means (layer/group norm) can keep a dead channel live; the count is
then conservative (too high), never too low.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.jit._trace import TracerWarning

from hwsparse.errors import InputError

CONVENTION = "fvcore: 1 multiply-add = 1 flop, batch 1"

# Layers whose weights a mask may prune (DESIGN: weights of Conv/Linear only).
MASKABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class LayerFlops:
    """Flops of one module, its own share only (children excluded).

    Attributes:
        name: module qualified name from ``model.named_modules()`` ("" is the root's own ops).
        kind: module class name, e.g. ``Conv2d``.
        dense: flops of the dense layer (1 multiply-add = 1 flop, batch 1).
        flops: flops left after the mask and dead input channels are taken out.
    """

    name: str
    kind: str
    dense: int
    flops: int

    @property
    def density(self) -> float:
        """Fraction of the dense flops that remain (1.0 for a dense layer)."""
        return self.flops / self.dense if self.dense else 1.0


@dataclass(frozen=True)
class FlopCount:
    """Result of :func:`count_flops`.

    Attributes:
        total: sparse-aware flops of one forward pass, batch 1 (1 multiply-add = 1 flop).
        dense: flops of the same network with no mask.
        layers: one row per module with its own flops > 0, in ``named_modules`` order.
        unsupported_ops: ops fvcore saw but did not count (``{"aten::max_pool2d": 2}``).
        convention: the counting convention, for display.
    """

    total: int
    dense: int
    layers: tuple[LayerFlops, ...]
    unsupported_ops: Mapping[str, int] = field(default_factory=dict)
    convention: str = CONVENTION

    @property
    def density(self) -> float:
        """total / dense (1.0 for a dense network)."""
        return self.total / self.dense if self.dense else 1.0


# ---------------------------------------------------------------------------------------------
# Dense counting (fvcore), cached per architecture


@dataclass(frozen=True)
class _DenseCount:
    own: Mapping[str, int]  # module name -> flops of its own ops (children excluded)
    total: int
    unsupported: Mapping[str, int]


_CACHE_SIZE = 128
_dense_cache: OrderedDict[tuple[Any, ...], _DenseCount] = OrderedDict()


def _fvcore_analysis() -> Any:
    """Import fvcore's FlopCountAnalysis without its import-time TorchScript warnings."""
    with warnings.catch_warnings():
        # fvcore/nn/focal_loss.py calls torch.jit.script at import (ecosystem.md §1.3).
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(fvcore|iopath)")
        from fvcore.nn import FlopCountAnalysis
    return FlopCountAnalysis


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Only errors from ``logger_name`` while the block runs; its level is restored after (a
    library does not change its caller's logging)."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def architecture_key(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[Any, ...]:
    """A hashable key that is equal for two models of the same architecture and input shape.

    Module classes, their ``repr`` (kernel, stride, widths...) and every parameter/buffer shape
    enter the key; weight values and masks do not.
    """
    parts: list[Any] = [tuple(input_shape), repr(model)]
    for name, mod in model.named_modules():
        cls = type(mod)
        shapes = tuple(
            (n, tuple(t.shape), str(t.dtype))
            for n, t in (*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False))
            if t is not None
        )
        parts.append((name, cls.__module__, cls.__qualname__, shapes))
    return tuple(parts)


def example_input(model: nn.Module, input_shape: tuple[int, ...], fill: float = 1.0) -> Tensor:
    """A batch-1 input of ``input_shape`` on the model's device and floating dtype."""
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.full((1, *input_shape), fill, device=device, dtype=dtype)


def check_input_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Validate a per-sample input shape (positive ints, no batch dimension)."""
    shape = tuple(input_shape)
    if not shape or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in shape):
        raise InputError(
            f"input shape {shape} must be positive integers per sample (no batch dimension),"
            " e.g. (3, 32, 32)"
        )
    return shape


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the analysis passes on one intra-op thread, then restore the previous setting.

    The passes run tiny batch-1 kernels; with several threads on a busy machine, barrier
    stalls made them 40x slower (2.1 s vs 0.05 s for ResNet-20 on the 2-vCPU dev VM).
    """
    previous = torch.get_num_threads()
    if previous > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous > 1:
            torch.set_num_threads(previous)


def _run_forward(model: nn.Module, fn: Callable[[], Any], input_shape: tuple[int, ...]) -> Any:
    try:
        with single_thread():
            return fn()
    except InputError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"model {type(model).__name__} cannot run on input shape (1, "
            f"{', '.join(map(str, input_shape))}): {msg}"
        ) from None


def dense_flops(model: nn.Module, input_shape: tuple[int, ...]) -> _DenseCount:
    """fvcore count of the dense graph, own flops per module; cached per architecture."""
    key = architecture_key(model, input_shape)
    hit = _dense_cache.get(key)
    if hit is not None:
        _dense_cache.move_to_end(key)
        return hit
    analysis_cls = _fvcore_analysis()
    was_training = model.training
    model.eval()
    try:
        x = example_input(model, input_shape)

        def analyse() -> Any:
            with torch.no_grad(), warnings.catch_warnings(), _quiet("fvcore.nn.jit_analysis"):
                warnings.simplefilter("ignore", TracerWarning)
                fca = (
                    analysis_cls(model, (x,))
                    .unsupported_ops_warnings(False)
                    .uncalled_modules_warnings(False)
                    .tracer_warnings("none")
                )
                return fca.by_module(), fca.total(), dict(fca.unsupported_ops())

        by_module, total, unsupported = _run_forward(model, analyse, input_shape)
    finally:
        model.train(was_training)
    own: dict[str, int] = {}
    for name, mod in model.named_modules():
        children = sum(int(by_module.get(_join(name, c), 0)) for c, _ in mod.named_children())
        own[name] = int(by_module.get(name, 0)) - children
    result = _DenseCount(own=own, total=int(total), unsupported=unsupported)
    _dense_cache[key] = result
    if len(_dense_cache) > _CACHE_SIZE:
        _dense_cache.popitem(last=False)
    return result


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ---------------------------------------------------------------------------------------------
# Channel liveness (dataflow pass)


@dataclass(frozen=True)
class Liveness:
    """Result of :func:`channel_liveness`.

    Attributes:
        live_inputs: for every Conv/Linear, a bool vector over its input channels
            (Conv: ``C_in``; Linear: ``in_features``) that is True where data arrives.
        live_fraction: for every other leaf module, the live share of its input elements.
        live_outputs: for every Conv/Linear, a bool vector over its output channels
            (Conv: ``C_out``; Linear: ``out_features``) that is True where its output carries
            data; False is a *dead* channel (what a compacted network removes).
        live_norms: for every BatchNorm, a bool vector over its channels that is True where
            its input carries data.
        kept_outputs: for every Conv/Linear, the output channels a compacted network still
            computes: the live ones, plus dead ones that merge (a residual add, a
            concatenation) into a tensor where the channel is live, and every output of the
            network's last layer. Compaction can remove a channel only from a whole coupled
            group, so the rest stay as zeros that a dense runtime still computes and stores.
        kept_inputs: for every Conv/Linear, the input channels of the compacted network: those
            that carry data once every kept output (live or not) is computed.
    """

    live_inputs: Mapping[str, Tensor]
    live_fraction: Mapping[str, float]
    live_outputs: Mapping[str, Tensor] = field(default_factory=dict)
    live_norms: Mapping[str, Tensor] = field(default_factory=dict)
    kept_outputs: Mapping[str, Tensor] = field(default_factory=dict)
    kept_inputs: Mapping[str, Tensor] = field(default_factory=dict)


def check_masks(model: nn.Module, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """Validate masks against the model: known Conv/Linear names, weight shape, 0/1 values.

    Returns:
        A dict name -> bool tensor (True = weight kept) on the weight's device; bool masks
        (already checked) pass through without the value scan.
    """
    if not masks:
        return {}
    modules = dict(model.named_modules())
    maskable = sorted(n for n, m in modules.items() if isinstance(m, MASKABLE))
    checked: dict[str, Tensor] = {}
    for name, mask in masks.items():
        mod = modules.get(name)
        if mod is None or not isinstance(mod, MASKABLE):
            shown = ", ".join(maskable[:12]) + (" ..." if len(maskable) > 12 else "")
            raise InputError(f"mask for unknown Conv/Linear layer {name!r}; layers: {shown}")
        weight = mod.weight
        if tuple(mask.shape) != tuple(weight.shape):
            raise InputError(
                f"mask {name!r} has shape {tuple(mask.shape)}, its weight {tuple(weight.shape)}"
            )
        m = mask.detach()
        if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
            raise InputError(f"mask {name!r} is not binary (0/1); binarize relaxed masks first")
        checked[name] = (
            m.to(weight.device) if m.dtype == torch.bool else (m != 0).to(weight.device)
        )
    return checked


def _positive_state(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Parameters/buffers that make the forward a non-negative reachability pass."""
    state: dict[str, Tensor] = {}
    for mname, mod in model.named_modules():
        for pname, p in (*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)):
            if p is None or not p.is_floating_point():
                continue
            full = _join(mname, pname)
            if isinstance(mod, MASKABLE) and pname == "weight":
                kept = masks.get(mname)
                state[full] = kept.to(p.dtype) if kept is not None else torch.ones_like(p)
            elif isinstance(mod, MASKABLE) and pname == "bias":
                state[full] = torch.zeros_like(p)
            elif isinstance(mod, _NORMS):
                neutral = {"running_mean": 0.0, "bias": 0.0, "running_var": 1.0, "weight": 1.0}
                fill = neutral.get(pname)
                state[full] = torch.full_like(p, fill) if fill is not None else p.detach()
            else:
                state[full] = p.detach().abs()
    return state


def channel_liveness(
    model: nn.Module, input_shape: tuple[int, ...], masks: Mapping[str, Tensor]
) -> Liveness:
    """Which channels of each layer carry data once the masked weights are removed.

    See the module docstring for the method. ``masks`` must come from :func:`check_masks`.
    Besides the input channels of every Conv/Linear, it records their output channels and the
    channels entering every BatchNorm (:class:`Liveness`); a channel is *dead* where these are
    False. :mod:`hwsparse.deploy.compact` makes dead channels exactly zero and removes them.
    """
    live_inputs: dict[str, Tensor] = {}
    live_fraction: dict[str, float] = {}
    live_outputs: dict[str, Tensor] = {}
    live_norms: dict[str, Tensor] = {}
    handles = []

    def per_channel(into: dict[str, Tensor], name: str, x: Tensor, last: bool) -> None:
        _accumulate(into, name, _live_per_channel(x, last))

    def conv_pre(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            per_channel(live_inputs, name, args[0], isinstance(mod, nn.Linear))

        return hook

    def binarize(name: str) -> Callable[[nn.Module, tuple[Any, ...], Tensor], Tensor]:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
            per_channel(live_outputs, name, out, isinstance(mod, nn.Linear))
            return (out != 0).to(out.dtype)

        return hook

    def norm_pre(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            per_channel(live_norms, name, args[0], False)

        return hook

    def other_pre(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], Tensor) and args[0].numel():
                frac = float((args[0] != 0).float().mean())
                live_fraction[name] = max(frac, live_fraction.get(name, 0.0))

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, MASKABLE):
            handles.append(mod.register_forward_pre_hook(conv_pre(name)))
            handles.append(mod.register_forward_hook(binarize(name)))
        elif not any(True for _ in mod.children()):
            handles.append(mod.register_forward_pre_hook(other_pre(name)))
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            handles.append(mod.register_forward_pre_hook(norm_pre(name)))
    _reachability_pass(model, input_shape, masks, handles)
    kept = _kept_outputs(model, input_shape, masks, live_inputs, live_outputs)
    return Liveness(
        live_inputs=live_inputs,
        live_fraction=live_fraction,
        live_outputs=live_outputs,
        live_norms=live_norms,
        kept_outputs=kept,
        kept_inputs=kept_inputs(model, input_shape, masks, kept),
    )


def _kept_outputs(
    model: nn.Module,
    input_shape: tuple[int, ...],
    masks: Mapping[str, Tensor],
    live_inputs: Mapping[str, Tensor],
    live_outputs: Mapping[str, Tensor],
) -> dict[str, Tensor]:
    """:attr:`Liveness.kept_outputs`, by one backward pass through the reachability network.

    Every Conv/Linear output gets a zero probe per channel; the sum of the live channels of
    every Conv/Linear input (each input detached, so gradients stop at the next layer) and of
    the network's output is differentiated. Every Conv/Linear output is set to 1 in this pass
    so that every activation passes gradient: a probe's gradient is non-zero exactly where its
    channel reaches a live consumer channel through the ops in between (adds, concatenations,
    pooling, norms, activations), which is where compaction's dependency groups keep it.
    """
    probes: dict[str, Tensor] = {}
    sources: list[Tensor] = []
    handles = []

    def consumer_pre(name: str) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x, live = args[0], live_inputs.get(name)
            if live is not None and x.requires_grad:
                shape = _channel_view(x, isinstance(mod, nn.Linear))
                sources.append((x * live.to(x.dtype).view(shape)).sum())
            return (x.detach(), *args[1:])

        return hook

    def probe(name: str) -> Callable[[nn.Module, tuple[Any, ...], Tensor], Tensor]:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
            shape = _channel_view(out, isinstance(mod, nn.Linear))
            c = out.shape[-1] if isinstance(mod, nn.Linear) else out.shape[1]
            shape = tuple(c if d == -1 else d for d in shape)
            p = torch.zeros(shape, dtype=out.dtype, requires_grad=True)
            probes[name] = p
            return torch.ones_like(out) + p  # positive: every activation passes gradient

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, MASKABLE):
            handles.append(mod.register_forward_pre_hook(consumer_pre(name)))
            handles.append(mod.register_forward_hook(probe(name)))
    out = _reachability_pass(model, input_shape, masks, handles, grad=True)
    with torch.enable_grad():  # the caller may be under no_grad
        total = sum((t.sum() for t in _tensors(out)), start=torch.zeros(()))
        total = total + sum(sources, start=torch.zeros(()))
        used = [p for p in probes.values() if p.requires_grad]
        grads = torch.autograd.grad(total, used, allow_unused=True) if used else ()
    kept: dict[str, Tensor] = {}
    by_probe = {id(p): g for p, g in zip(used, grads, strict=True)}
    for name, p in probes.items():
        g = by_probe.get(id(p))
        reached = (
            (g != 0).reshape(-1) if g is not None else torch.zeros(p.numel(), dtype=torch.bool)
        )
        live = live_outputs.get(name)
        k = reached if live is None else (reached | live.reshape(-1))
        if not bool(k.any()):
            k = k.clone()
            k[0] = True  # compaction keeps the lowest channel of a wholly dead layer
        kept[name] = k
    return kept


def kept_inputs(
    model: nn.Module,
    input_shape: tuple[int, ...],
    masks: Mapping[str, Tensor],
    kept_outputs: Mapping[str, Tensor],
) -> dict[str, Tensor]:
    """:attr:`Liveness.kept_inputs`: the reachability pass again, with every kept output
    channel of every Conv/Linear forced to carry data."""
    inputs: dict[str, Tensor] = {}
    handles = []

    def pre(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            _accumulate(inputs, name, _live_per_channel(args[0], isinstance(mod, nn.Linear)))

        return hook

    def force(name: str) -> Callable[[nn.Module, tuple[Any, ...], Tensor], Tensor]:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
            kept = kept_outputs.get(name)
            if kept is None:
                return out
            shape = _channel_view(out, isinstance(mod, nn.Linear))
            return ((out != 0) | kept.view(shape)).to(out.dtype)

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, MASKABLE):
            handles.append(mod.register_forward_pre_hook(pre(name)))
            handles.append(mod.register_forward_hook(force(name)))
    _reachability_pass(model, input_shape, masks, handles)
    return inputs


def _reachability_pass(
    model: nn.Module,
    input_shape: tuple[int, ...],
    masks: Mapping[str, Tensor],
    handles: list[Any],
    grad: bool = False,
) -> Any:
    """Run the reachability network (module docstring) once in eval mode with the hooks of
    ``handles`` installed; they are removed and the training flag restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        state = _positive_state(model, masks)
        x = example_input(model, input_shape)
        with torch.set_grad_enabled(grad):
            return _run_forward(model, lambda: functional_call(model, state, (x,)), input_shape)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def _live_per_channel(x: Tensor, last: bool) -> Tensor:
    """Bool per channel: carries data anywhere (channels last for Linear, else axis 1)."""
    if last:
        return (x != 0).reshape(-1, x.shape[-1]).any(dim=0)
    return (x != 0).transpose(0, 1).reshape(x.shape[1], -1).any(dim=1)


def _accumulate(into: dict[str, Tensor], name: str, live: Tensor) -> None:
    prev = into.get(name)
    into[name] = live if prev is None else (prev | live)


def _channel_view(t: Tensor, last: bool) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector over ``t`` (channels last for Linear)."""
    return (*[1] * (t.dim() - 1), -1) if last else (1, -1, *[1] * (t.dim() - 2))


def _tensors(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def kept_weights(mod: nn.Module, kept: Tensor | None, live_in: Tensor | None) -> Tensor:
    """Bool tensor of ``mod.weight``'s shape: True where the weight still does work."""
    weight = mod.weight
    assert isinstance(weight, Tensor)
    keep = kept if kept is not None else torch.ones(weight.shape, dtype=torch.bool)
    keep = keep.to(weight.device)
    if live_in is None:
        return keep
    live_in = live_in.to(weight.device)
    if isinstance(mod, nn.Linear):
        return keep & live_in.view(1, -1)
    groups = int(getattr(mod, "groups", 1))
    c_out, c_in_g = weight.shape[0], weight.shape[1]
    per_group = live_in.view(groups, 1, c_in_g).expand(groups, c_out // groups, c_in_g)
    live_w = per_group.reshape(c_out, c_in_g, *([1] * (weight.dim() - 2)))
    return keep & live_w


# ---------------------------------------------------------------------------------------------
# Public entry point


def count_flops(
    model: nn.Module,
    input_shape: tuple[int, ...],
    masks: Mapping[str, Tensor] | None = None,
    *,
    liveness: Liveness | None = None,
) -> FlopCount:
    """Count the flops of one forward pass, sparse-aware.

    Args:
        model: a plain ``nn.Module`` (no parametrizations); it is run in eval mode and its
            training flag is restored afterwards.
        input_shape: one sample's shape without the batch dimension, e.g. ``(3, 32, 32)``.
        masks: optional binary (0/1) masks keyed by Conv/Linear qualified names, each of the
            layer's weight shape. Channel masks arrive expanded (whole output rows zero).
        liveness: a :func:`channel_liveness` result for these masks, to skip recomputing it.

    Returns:
        A :class:`FlopCount` (1 multiply-add = 1 flop, batch 1). ``total`` honours masks and
        dead input channels; ``dense`` is the unmasked graph.

    Raises:
        InputError: the model cannot run on ``input_shape``, or a mask does not fit its layer.
    """
    with single_thread():
        return _count(model, check_input_shape(input_shape), masks, liveness)


def _count(
    model: nn.Module,
    input_shape: tuple[int, ...],
    masks: Mapping[str, Tensor] | None,
    liveness: Liveness | None,
) -> FlopCount:
    dense = dense_flops(model, input_shape)
    checked = check_masks(model, masks)
    if checked and liveness is None:
        liveness = channel_liveness(model, input_shape, checked)
    if not checked:
        liveness = None
    rows: list[LayerFlops] = []
    for name, mod in model.named_modules():
        own = dense.own.get(name, 0)
        if own <= 0:
            continue
        flops = own
        if liveness is not None:
            if isinstance(mod, MASKABLE):
                keep = kept_weights(mod, checked.get(name), liveness.live_inputs.get(name))
                flops = round(own * int(keep.sum()) / keep.numel())
            elif name in liveness.live_fraction:
                flops = round(own * liveness.live_fraction[name])
        rows.append(LayerFlops(name=name, kind=type(mod).__name__, dense=own, flops=flops))
    total = dense.total - sum(r.dense - r.flops for r in rows)
    return FlopCount(
        total=total, dense=dense.total, layers=tuple(rows), unsupported_ops=dense.unsupported
    )
