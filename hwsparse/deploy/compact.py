"""Exact channel compaction: silence a ticket's dead channels, then remove them physically.

Conventions:

- ``masks`` are :mod:`hwsparse.masks` binary masks: layer name (as in ``named_modules()``) ->
  0/1 tensor of that Conv/Linear weight's shape, ``weight`` or ``channel`` granularity (channel
  masks arrive expanded). Layers without a mask are dense. ``input_shape`` is one sample's shape
  without the batch dimension.
- A channel is **dead** when the cost model's reachability pass
  (:func:`hwsparse.cost.flops.channel_liveness`) says it carries nothing: a Conv/Linear output
  channel none of whose kept weights reaches a live input (a neuron whose incoming weights are
  all masked included); dead inputs propagate forward; a residual add is live where either
  branch is. A BatchNorm channel is dead where its input channel is. This is exactly the set of
  channels the cost model counts as removed.
- In the masked network a dead channel is not zero by itself: the Conv/Linear bias and the next
  BatchNorm's ``beta - gamma * mu / sigma`` leave a constant, which a zero-padded conv cannot
  fold exactly. :func:`silence` makes it exactly zero (dead biases, BatchNorm gamma, beta and
  running mean set to 0, gradient hooks keep them there while training), so the masked network
  *is* the costed network. Every binary ticket trains silenced (``hwsparse.train._rewind``).
  This holds for the dead classes of the output layer too (their logit is then exactly 0, which
  is what the costed network, holding no parameter for them, computes).
- :func:`compact` returns a physically smaller copy computing the silenced masked network:
  every dead channel removed together with the matching input channels of its consumers,
  BatchNorm entries and biases, through residual adds, concatenations, depthwise convs and
  flatten into a classifier (Torch-Pruning's ``DependencyGraph`` finds what is coupled). In a
  coupled group (the channels summed by residual adds) a channel goes only when it is dead at
  every layer of the group. Never removed: the output channels of the **output layer** (the
  last Conv/Linear in ``named_modules()`` order, as in :mod:`hwsparse.masks`: the classes);
  channels coupled to a layer Torch-Pruning slices but we cannot judge (anything with
  parameters other than Conv/Linear/BatchNorm, grouped non-depthwise convs); and, when every
  channel of a group is dead, the lowest-index one, kept (all zeros) so the graph stays valid.
- Parameter count: ``Compaction.params`` are the compacted network's parameters.
  ``Compaction.live_params`` of them can be non-zero; the other ``params - live_params`` are
  exactly zero (masked weights inside kept rows, weights reading a dead input, dead channels
  kept for a coupled group or a fully dead layer, their biases and BatchNorm entries).
  ``live_params == hwsparse.cost.estimate.estimate(model, input_shape, profile,
  masks).nonzero_params``: the cost model and the compacted network agree.

Only :func:`compact` needs ``torch-pruning`` (imported when called); :func:`dead_channels` and
:func:`silence` are plain torch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from hwsparse.cost.flops import (
    MASKABLE,
    Liveness,
    channel_liveness,
    check_input_shape,
    check_masks,
    kept_weights,
    single_thread,
)
from hwsparse.cost.memory import dead_channel_params, weight_storage
from hwsparse.errors import InputError

INSTALL = "pip install 'hwsparse[deploy]'"
_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class DeadChannels:
    """Dead channels of a masked network (True = dead), from :func:`dead_channels`.

    Attributes:
        outputs: every Conv/Linear the forward pass reaches -> bool over its output channels.
        inputs: every Conv/Linear the forward pass reaches -> bool over its input channels
            (Conv: ``C_in``; Linear: ``in_features``, i.e. per feature after a flatten).
        norms: every BatchNorm the forward pass reaches -> bool over its channels.
        liveness: the underlying :class:`~hwsparse.cost.flops.Liveness` (True = live).
    """

    outputs: Mapping[str, Tensor]
    inputs: Mapping[str, Tensor]
    norms: Mapping[str, Tensor]
    liveness: Liveness

    def count(self) -> int:
        """Dead Conv/Linear output channels, over all layers."""
        return sum(int(d.sum()) for d in self.outputs.values())


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every parametrization baked in (``mask * weight``), the original intact.

    Use this, not ``copy.deepcopy`` + ``hwsparse.masks.detach_masks``, to get a plain model out
    of a ticket that is still training.

    ``parametrize.remove_parametrizations`` cannot be used on a deep copy: the copy shares the
    dynamically created ``Parametrized*`` class with the original, and removing deletes the
    tensor's property from that class, breaking the original. The copy's layers get their
    plain class and a plain parameter instead.
    """
    plain = copy.deepcopy(model)
    for layer in list(plain.modules()):
        if not parametrize.is_parametrized(layer):
            continue
        lists = layer._modules["parametrizations"]
        assert isinstance(lists, nn.ModuleDict)
        names: list[str] = list(lists.keys())
        values = {n: getattr(layer, n).detach().clone() for n in names}
        layer.__class__ = type(layer).__bases__[0]
        del layer._modules["parametrizations"]
        for n, v in values.items():
            layer.register_parameter(n, nn.Parameter(v))
    return plain


def _is_parametrized(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m) for m in model.modules())


def dead_channels(
    model: nn.Module, input_shape: tuple[int, ...], masks: Mapping[str, Tensor] | None
) -> DeadChannels:
    """The channels of ``model`` under ``masks`` that the cost model counts as removed.

    ``model`` may carry mask parametrizations (a ticket in training): the pass then runs on a
    plain copy; ``masks`` decide which weights are kept. See the module docstring.

    Raises:
        InputError: the model cannot run on ``input_shape``, or a mask does not fit its layer.
    """
    shape = check_input_shape(input_shape)
    plain = plain_copy(model) if _is_parametrized(model) else model
    checked = check_masks(plain, masks)
    with single_thread():
        live = channel_liveness(plain, shape, checked)
    return DeadChannels(
        outputs={n: ~v for n, v in live.live_outputs.items()},
        inputs={n: ~v for n, v in live.live_inputs.items()},
        norms={n: ~v for n, v in live.live_norms.items()},
        liveness=live,
    )


# ---------------------------------------------------------------------------------------------
# Silencing


class Silenced:
    """Handle of :func:`silence`: ``remove()`` takes the gradient hooks off (values stay 0).

    Also a context manager that removes the hooks on exit.

    Attributes:
        dead: the dead channels that were silenced.
    """

    def __init__(self, dead: DeadChannels, handles: list[RemovableHandle]) -> None:
        self.dead = dead
        self._handles = handles

    def remove(self) -> None:
        """Remove the gradient hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> Silenced:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def _zero_grad_hook(dead: Tensor) -> Callable[[Tensor], Tensor]:
    def hook(grad: Tensor) -> Tensor:
        return grad.masked_fill(dead.to(grad.device), 0)

    return hook


def _silenced_entries(
    model: nn.Module, dead: DeadChannels
) -> Iterable[tuple[nn.Parameter | Tensor, Tensor, bool]]:
    """(tensor, dead entries, needs a gradient hook) for every entry :func:`silence` zeroes."""
    modules = dict(model.named_modules())
    for name, d in dead.outputs.items():
        bias = getattr(modules[name], "bias", None)
        if isinstance(bias, Tensor) and bool(d.any()) and bias.shape == d.shape:
            yield bias, d, True
    for name, d in dead.norms.items():
        bn = modules[name]
        if not bool(d.any()):
            continue
        for p in (bn.weight, bn.bias):
            if isinstance(p, Tensor) and p.shape == d.shape:
                yield p, d, True
        mean = bn.running_mean
        if isinstance(mean, Tensor) and mean.shape == d.shape:
            # a dead channel's batch mean is exactly 0, so a zero running mean stays 0
            yield mean, d, False


def silenced_parameters(model: nn.Module, dead: DeadChannels) -> dict[str, Tensor]:
    """Parameter name -> the entries :func:`silence` keeps at zero through a gradient hook
    (bool, the parameter's shape), for a loop that trains stacked copies of the parameters
    (hwsparse.population) instead of ``model``'s own."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(t)]: d for t, d, hook in _silenced_entries(model, dead) if hook and id(t) in names
    }


def silence(
    model: nn.Module, input_shape: tuple[int, ...], masks: Mapping[str, Tensor] | None
) -> Silenced:
    """Make ``model``'s dead channels exactly zero and keep them zero while it trains.

    Zeroes, in place: the bias entries of every Conv/Linear dead output channel, and the
    weight (gamma), bias (beta) and running mean of every BatchNorm channel whose input is
    dead. Gradient hooks zero the gradients of those parameter entries, so any optimiser whose
    update of a zero parameter with zero gradient is zero (Adam, AdamW, SGD with momentum and
    L2 or decoupled weight decay) leaves them exactly 0; the running mean of a channel that is
    exactly 0 stays 0. Masked weights are the mask parametrization's business (not touched).
    Call it after loading weights (a rewind overwrites the zeros).

    Returns:
        A :class:`Silenced` handle; ``.remove()`` removes the hooks.

    Raises:
        InputError: the model cannot run on ``input_shape``, or a mask does not fit its layer.
    """
    dead = dead_channels(model, input_shape, masks)
    handles: list[RemovableHandle] = []
    with torch.no_grad():
        for tensor, d, hook in _silenced_entries(model, dead):
            d = d.to(tensor.device)
            tensor.masked_fill_(d, 0)
            if hook and tensor.requires_grad:
                hook_fn = _zero_grad_hook(d)
                handles.append(tensor.register_hook(hook_fn))  # type: ignore[no-untyped-call]
    return Silenced(dead, handles)


# ---------------------------------------------------------------------------------------------
# Compaction


@dataclass(frozen=True)
class Compaction:
    """Result of :func:`compaction`.

    Attributes:
        model: the compacted copy (plain ``nn.Module``, no parametrizations, same training
            flag as the original; the original is untouched).
        params: its number of parameters.
        live_params: of those, the ones that can be non-zero; the rest are exactly zero.
            Equals the cost model's ``nonzero_params`` for the same masks.
        removed: Conv/Linear name -> the output channels removed (indices in the original).
        kept_dead: Conv/Linear name -> dead output channels kept (coupled to a live channel,
            the lowest one of a fully dead group, or the output layer's classes).
        max_abs_diff: max |output difference| to the silenced masked network on a random
            check batch (None when ``check`` was off).
    """

    model: nn.Module
    params: int
    live_params: int
    removed: Mapping[str, tuple[int, ...]]
    kept_dead: Mapping[str, tuple[int, ...]]
    max_abs_diff: float | None


def compact(
    model: nn.Module, input_shape: tuple[int, ...], masks: Mapping[str, Tensor] | None
) -> nn.Module:
    """A physically smaller copy of ``model`` with every dead channel removed.

    Shorthand for ``compaction(model, input_shape, masks).model``; see :func:`compaction`.
    """
    return compaction(model, input_shape, masks).model


def _import_tp() -> Any:
    try:
        import torch_pruning as tp  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise InputError(f"channel compaction needs torch-pruning: {INSTALL}") from None
    return tp


def _zero_non_live(model: nn.Module, masks: Mapping[str, Tensor], dead: DeadChannels) -> None:
    """Make ``model`` (plain) the silenced masked network with every non-live entry exactly 0."""
    live = dead.liveness
    with torch.no_grad():
        for name, mod in model.named_modules():
            if not isinstance(mod, MASKABLE):
                continue
            keep = kept_weights(mod, masks.get(name), live.live_inputs.get(name))
            out = live.live_outputs.get(name)
            if out is not None:
                keep = keep & out.to(keep.device).view(-1, *([1] * (keep.dim() - 1)))
            mod.weight.mul_(keep.to(mod.weight.dtype))
        for tensor, d, _ in _silenced_entries(model, dead):
            tensor.masked_fill_(d.to(tensor.device), 0)


def compaction(
    model: nn.Module,
    input_shape: tuple[int, ...],
    masks: Mapping[str, Tensor] | None,
    *,
    check: bool = True,
) -> Compaction:
    """Remove every dead channel of ``model`` under ``masks`` from a copy (see module doc).

    The copy computes the *silenced* masked network: equal to ``model`` when ``model`` was
    silenced (:func:`silence`, as every ticket trains), otherwise without the constants its dead
    channels emitted. Masked weights that remain (weight granularity) stay exactly zero.

    Args:
        model: plain or carrying mask parametrizations; not modified.
        input_shape: one sample's shape, no batch dimension.
        masks: binary masks by Conv/Linear name (None or empty: nothing is dead).
        check: run the copy before and after the removal on a random batch of 2 in eval mode
            and raise when they differ (by more than 1e-3 x (1 + max |output|)).

    Returns:
        A :class:`Compaction`; ``.model`` is the compacted network, ``.params`` its size.

    Raises:
        InputError: torch-pruning is missing, the model cannot run on ``input_shape``, or a
            mask does not fit its layer.
        RuntimeError: the check found a different output (an op between layers that maps a
            zero channel to a non-zero value, which the reachability pass did not see).
    """
    tp = _import_tp()
    shape = check_input_shape(input_shape)
    was_training = model.training
    net = plain_copy(model)
    net.eval()
    checked = check_masks(net, masks)
    with single_thread():
        dead = dead_channels(net, shape, checked)
        _zero_non_live(net, checked, dead)
        live_params = _live_params(net, checked, dead.liveness)
        param = next(iter(net.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((2, *shape), generator=gen, dtype=dtype).to(device)
        with torch.no_grad():
            reference = net(x) if check else None
        removed, kept_dead = _prune(tp, net, x[:1], dead)
        diff: float | None = None
        if reference is not None:
            with torch.no_grad():
                got = net(x)
            diff = float((got - reference).abs().max()) if got.numel() else 0.0
            tol = 1e-3 * (1.0 + float(reference.abs().max()) if reference.numel() else 1.0)
            if not diff <= tol:
                raise RuntimeError(
                    f"channel compaction changed the output by {diff:.3g} (tolerance {tol:.3g}):"
                    " an op of this model maps a zero channel to a non-zero value"
                )
    for p in net.parameters():
        p.grad = None
    net.train(was_training)
    return Compaction(
        model=net,
        params=sum(p.numel() for p in net.parameters()),
        live_params=live_params,
        removed=removed,
        kept_dead=kept_dead,
        max_abs_diff=diff,
    )


def _live_params(net: nn.Module, masks: Mapping[str, Tensor], live: Liveness) -> int:
    """Parameters that can be non-zero: the cost model's ``nonzero_params`` (same functions)."""
    rows = weight_storage(net, masks, live, "fp32", ("dense",))
    weights = {id(m.weight) for m in net.modules() if isinstance(m, MASKABLE)}
    other = sum(p.numel() for p in net.parameters() if id(p) not in weights)
    return sum(r.nnz for r in rows) + other - dead_channel_params(net, live)


class _Index:
    """Original channel indices of every (module, side) as Torch-Pruning slices them."""

    def __init__(self) -> None:
        self._orig: dict[tuple[int, str], list[int]] = {}

    def get(self, mod: nn.Module, side: str, size: int) -> list[int]:
        return self._orig.setdefault((id(mod), side), list(range(size)))

    def drop(self, mod: nn.Module, side: str, size: int, idxs: Iterable[int]) -> None:
        gone = set(idxs)
        orig = self.get(mod, side, size)
        self._orig[(id(mod), side)] = [o for i, o in enumerate(orig) if i not in gone]


def _sides(dg: Any, mod: nn.Module, handler: Any) -> tuple[str, ...]:
    """Which channel sides of ``mod`` a Torch-Pruning handler slices."""
    if _is_depthwise(mod):
        return ("out", "in")
    return ("out",) if dg.is_out_channel_pruning_fn(handler) else ("in",)


def _is_depthwise(mod: nn.Module) -> bool:
    return (
        isinstance(mod, nn.modules.conv._ConvNd)
        and mod.groups > 1
        and mod.groups == mod.in_channels == mod.out_channels
    )


def _size(mod: nn.Module, side: str) -> int:
    if isinstance(mod, nn.Linear):
        return mod.out_features if side == "out" else mod.in_features
    if isinstance(mod, nn.modules.conv._ConvNd):
        return mod.out_channels if side == "out" else mod.in_channels
    assert isinstance(mod, _BN)
    return mod.num_features


def _prune(
    tp: Any, net: nn.Module, example: Tensor, dead: DeadChannels
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Slice every removable dead channel out of ``net`` in place (Torch-Pruning groups)."""
    names = {id(m): n for n, m in net.named_modules()}
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, MASKABLE)]
    if not layers:
        return {}, {}
    output_layer = layers[-1][1]
    with torch.enable_grad():  # Torch-Pruning traces the autograd graph
        dg = tp.DependencyGraph().build_dependency(net, example_inputs=example)
    index = _Index()
    done: set[int] = set()
    removed: dict[str, list[int]] = {}

    def is_dead(mod: nn.Module, side: str, i: int) -> bool:
        """Whether current index ``i`` on ``side`` of ``mod`` is a dead channel."""
        name = names.get(id(mod))
        if isinstance(mod, _BN):
            table = dead.norms
        elif isinstance(mod, MASKABLE):
            table = dead.outputs if side == "out" else dead.inputs
        else:
            return False
        d = table.get(name) if name is not None else None
        if d is None:
            return False
        return bool(d[index.get(mod, side, _size(mod, side))[i]])

    for name, root in layers:
        d = dead.outputs.get(name)
        if root is output_layer or id(root) in done or d is None or not bool(d.any()):
            continue
        fn = (
            tp.prune_linear_out_channels
            if isinstance(root, nn.Linear)
            else (tp.prune_conv_out_channels)
        )
        current = index.get(root, "out", _size(root, "out"))
        candidates = [i for i, o in enumerate(current) if bool(d[o])]
        group = dg.get_pruning_group(root, fn, idxs=candidates)
        blocked: set[int] = set()
        for item in group.items:
            mod, handler = item.dep.target.module, item.dep.handler
            if isinstance(mod, MASKABLE) and dg.is_out_channel_pruning_fn(handler):
                done.add(id(mod))
            judged = isinstance(mod, (*MASKABLE, _BN))
            if mod is output_layer and dg.is_out_channel_pruning_fn(handler):
                blocked.update(candidates)  # coupled to the classes: keep every channel
            elif judged and isinstance(mod, nn.modules.conv._ConvNd) and mod.groups > 1:
                if not _is_depthwise(mod):
                    blocked.update(candidates)
            elif not judged and not _has_params(mod):
                continue  # ReLU, pooling, flatten, add, concat...: nothing to judge
            elif not judged:
                blocked.update(candidates)  # parameters we cannot judge: keep
                continue
            sides = _sides(dg, mod, handler)
            for i, r in zip(item.idxs, item.root_idxs, strict=True):
                if not all(is_dead(mod, s, int(i)) for s in sides):
                    if r is None:
                        blocked.update(candidates)
                    else:
                        blocked.add(int(r))
        allowed = [i for i in candidates if i not in blocked]
        if len(allowed) == len(current):
            allowed = allowed[1:]  # every channel dead: keep the lowest one
        if not allowed:
            continue
        group = dg.get_pruning_group(root, fn, idxs=allowed)
        sliced: set[tuple[int, str]] = set()
        for item in group.items:
            mod, handler = item.dep.target.module, item.dep.handler
            if not isinstance(mod, (*MASKABLE, _BN)):
                continue
            for side in _sides(dg, mod, handler):
                if (id(mod), side) in sliced:
                    continue
                sliced.add((id(mod), side))
                size = _size(mod, side)
                if side == "out" and isinstance(mod, MASKABLE):
                    orig = index.get(mod, side, size)
                    removed.setdefault(names[id(mod)], []).extend(orig[int(i)] for i in item.idxs)
                index.drop(mod, side, size, (int(i) for i in item.idxs))
        group.prune()
    kept_dead: dict[str, tuple[int, ...]] = {}
    for name, mod in layers:
        d = dead.outputs.get(name)
        if d is None:
            continue
        left = [o for o in index.get(mod, "out", _size(mod, "out")) if bool(d[o])]
        if left:
            kept_dead[name] = tuple(left)
    return {n: tuple(sorted(v)) for n, v in removed.items()}, kept_dead


def _has_params(mod: Any) -> bool:
    if isinstance(mod, nn.Parameter):
        return True
    if not isinstance(mod, nn.Module):
        return False
    return any(True for _ in mod.parameters(recurse=False))
