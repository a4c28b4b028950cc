"""Relaxed and binary masks attached to the Conv/Linear weights of any nn.Module.

Masks attach with ``torch.nn.utils.parametrize``, so registry models and user models get the
same machinery and ``module.weight`` always reads as ``mask * weight``. Only the ``weight`` of
Conv1d/Conv2d/Conv3d/Linear layers is ever masked; biases and normalisation layers never.

Conventions:
- A *relaxed* mask has entries in [0, 1] and is trained jointly with the weights:
  ``projected`` (the paper's): a plain tensor initialised to 1 and clamped to [0, 1] after each
  optimiser step; ``sigmoid``: m = sigmoid(s / T), with T annealed towards 0 so that m becomes
  binary; the forward pass multiplies by ``m / m_0`` (m_0 = sigmoid(s_0 / T_0)) so the network
  starts from its unmasked function.
- Granularity ``weight``: one entry per weight (unstructured). ``channel``: one entry per output
  channel of a conv (a filter) or per output neuron of a linear layer; the output layer is
  then never masked (its output channels are the classes).
- A *binary* mask (``Masks``) maps a layer's qualified name (as in ``named_modules()``) to a 0/1
  float tensor of the weight's own shape; channel masks are expanded to that shape.
- Density is kept weights / all weights, counted over the weights of every Conv/Linear layer
  (masked or not), so unmasked first/last layers count as fully kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from hwsparse.errors import InputError, lookup

Masks = dict[str, torch.Tensor]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
PARAMETERIZATIONS = ("projected", "sigmoid")
GRANULARITIES = ("weight", "channel")


@dataclass(frozen=True)
class MaskConfig:
    """How masks are attached and relaxed."""

    param: str = "projected"  # projected | sigmoid
    granularity: str = "weight"  # weight | channel
    mask_first: bool = True  # mask the first Conv/Linear layer (the input layer)
    mask_last: bool = True  # mask the last Conv/Linear layer (the classifier)
    temperature: float = 1.0  # sigmoid only: initial temperature T_0
    anneal: float = 200.0  # sigmoid only: T falls geometrically from T_0 to T_0 / anneal
    sigmoid_init: float = 2.0  # sigmoid only: initial logit s_0 / T_0 (m_0 = sigmoid(2) = 0.88)

    def __post_init__(self) -> None:
        lookup({p: p for p in PARAMETERIZATIONS}, self.param, "mask parameterization")
        lookup({g: g for g in GRANULARITIES}, self.granularity, "granularity")
        if not self.temperature > 0:
            raise InputError(f"--temperature must be > 0 (got {self.temperature})")
        if not self.anneal >= 1:
            raise InputError(f"temperature anneal factor must be >= 1 (got {self.anneal})")


def prunable_layers(
    model: nn.Module, *, mask_first: bool = True, mask_last: bool = True
) -> list[tuple[str, nn.Module]]:
    """Conv/Linear layers in ``named_modules()`` order, minus first/last if asked."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    if not layers:
        raise InputError("the model has no Conv/Linear layer to sparsify")
    first, last = layers[0][0], layers[-1][0]
    chosen = [(n, m) for n, m in layers if (mask_first or n != first) and (mask_last or n != last)]
    if not chosen:
        raise InputError("no layer left to mask: the model has one layer and it is excluded")
    return chosen


def _mask_shape(weight: torch.Tensor, granularity: str) -> tuple[int, ...]:
    if granularity == "channel":
        return (weight.shape[0],) + (1,) * (weight.dim() - 1)
    return tuple(weight.shape)


class RelaxedMask(nn.Module):
    """Parametrization ``weight -> scale * m * weight`` with a trainable relaxed mask m."""

    _last: tuple[torch.Tensor, tuple[int, float]] | None

    def __init__(self, weight: torch.Tensor, config: MaskConfig) -> None:
        super().__init__()
        self.param = config.param
        shape = _mask_shape(weight, config.granularity)
        if self.param == "projected":
            init = torch.ones(shape, device=weight.device)
            self.scale = 1.0
        else:
            init = torch.full(
                shape, config.sigmoid_init * config.temperature, device=weight.device
            )
            self.scale = 1.0 / (1.0 / (1.0 + math.exp(-config.sigmoid_init)))
        self.score = nn.Parameter(init)
        self.temperature = config.temperature
        self.entry_size = weight.numel() // init.numel()  # weights covered by one entry
        # sigmoid masks: m of the last forward pass and the (score version, temperature) it
        # was computed at, reused by the penalty's gradient in the same step (recent_soft)
        self._last = None

    def soft(self) -> torch.Tensor:
        """The relaxed mask m in [0, 1] (mask-shaped, not expanded)."""
        if self.param == "projected":
            return self.score
        return torch.sigmoid(self.score / self.temperature)

    def recent_soft(self) -> torch.Tensor:
        """``soft()``, taken from the last forward pass when neither the scores nor the
        temperature changed since (saves a sigmoid over every entry per training step)."""
        last = self._last
        if last is not None and last[1] == (self.score._version, self.temperature):
            return last[0]
        return self.soft().detach()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.param == "projected":
            return weight * self.score
        if self.score.numel() < _SIGMOID_NODE_MIN:
            m = self.soft()
            self._last = (m.detach(), (self.score._version, self.temperature))
            return weight * (m * self.scale)
        with torch.no_grad():
            m = self.soft()
        self._last = (m, (self.score._version, self.temperature))
        out: torch.Tensor = _SigmoidMasked.apply(  # type: ignore[no-untyped-call]
            weight, self.score, m, self.temperature, self.scale
        )
        return out

    @torch.no_grad()
    def kept(self, threshold: float) -> torch.Tensor:
        """How many entries have m > ``threshold``: a 0-d float tensor (no host sync).

        Runs on every step under ``--strength auto``, so it avoids a comparison kernel (slow on
        CPU: 150 us for 235k entries against 65 us) and, for sigmoid masks, the sigmoid: it
        counts ``ceil(clamp(x - cut, 0, 1))`` over the scores x, with cut = threshold
        (projected) or T * logit(threshold) (sigmoid, where m > t iff s > T logit(t)). Exact:
        x - cut > 0 iff x > cut in IEEE arithmetic, and a float32 sum of ones is exact below
        2^24 entries (float64 above).
        """
        values: torch.Tensor = self.score
        cut = threshold
        if self.param == "sigmoid":
            if threshold <= 0:
                values = self.soft()
            else:
                cut = self.temperature * math.log(threshold / (1 - threshold))
        ones = values.sub(cut).clamp_(0.0, 1.0).ceil_()
        return ones.sum(dtype=torch.float32 if ones.numel() < 2**24 else torch.float64)

    @torch.no_grad()
    def project(self) -> None:
        """Clamp a projected mask back to [0, 1] (called after every optimiser step)."""
        if self.param == "projected":
            self.score.clamp_(0.0, 1.0)


# Sigmoid masks with fewer entries run autograd's own chain: below about 100k entries the
# custom node's Python overhead (about 25 us a step) outweighs the passes it saves (measured
# on the 2-core development VM, one thread: 300x300 breaks even, 400x400 saves 28 %).
_SIGMOID_NODE_MIN = 100_000


class _SigmoidMasked(torch.autograd.Function):
    """``scale * sigmoid(s / T) * weight`` with its gradients in fewer passes over the entries
    than autograd's chain of five elementwise nodes (benchmarks/overhead): the forward pass is
    one fused multiply, the backward pass one for the weight and two for the scores (a fused
    multiply, then sigmoid's own backward kernel). ``m = sigmoid(s / T)`` comes in computed."""

    @staticmethod
    def forward(
        ctx: Any,
        weight: torch.Tensor,
        score: torch.Tensor,
        m: torch.Tensor,
        t: float,
        scale: float,
    ) -> torch.Tensor:
        ctx.save_for_backward(weight, m)
        ctx.t, ctx.scale = t, scale
        return torch.addcmul(weight.new_zeros(()), weight, m, value=scale)

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        weight, m = ctx.saved_tensors
        zero = grad.new_zeros(())
        grad_w = torch.addcmul(zero, grad, m, value=ctx.scale) if ctx.needs_input_grad[0] else None
        grad_m = torch.addcmul(zero, grad, weight, value=ctx.scale / ctx.t).sum_to_size(m.shape)
        return grad_w, torch.ops.aten.sigmoid_backward(grad_m, m), None, None, None


class FixedMask(nn.Module):
    """Parametrization ``weight -> mask * weight`` with a fixed binary mask (a ticket)."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def attach_relaxed(model: nn.Module, config: MaskConfig) -> dict[str, RelaxedMask]:
    """Attach a trainable relaxed mask to every chosen layer; returns them by layer name."""
    out: dict[str, RelaxedMask] = {}
    for name, layer in _chosen_layers(model, config):
        mask = RelaxedMask(raw_weight(layer), config)
        parametrize.register_parametrization(layer, "weight", mask)
        out[name] = mask
    return out


def _chosen_layers(model: nn.Module, config: MaskConfig) -> list[tuple[str, nn.Module]]:
    # A channel of the output layer is a class: channel masks never touch that layer.
    mask_last = config.mask_last and config.granularity != "channel"
    return prunable_layers(model, mask_first=config.mask_first, mask_last=mask_last)


def attach_fixed(model: nn.Module, masks: Masks) -> None:
    """Attach fixed binary masks (weight-shaped) to the named layers."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        layer = modules[name]
        parametrize.register_parametrization(layer, "weight", FixedMask(mask))


def detach_masks(model: nn.Module, *, bake: bool = True) -> None:
    """Remove every mask parametrization; with ``bake`` the weights keep the masked values."""
    for _, layer in _parametrized(model):
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=bake)


def _parametrized(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, layer in list(model.named_modules()):
        if parametrize.is_parametrized(layer, "weight"):
            yield name, layer


def relaxed_masks(model: nn.Module) -> dict[str, RelaxedMask]:
    """The relaxed masks attached to ``model``, by layer name."""
    out: dict[str, RelaxedMask] = {}
    for name, layer in _parametrized(model):
        for p in layer.parametrizations.weight:  # type: ignore[union-attr]
            if isinstance(p, RelaxedMask):
                out[name] = p
    return out


def raw_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight without its mask applied."""
    if parametrize.is_parametrized(layer, "weight"):
        w = layer.parametrizations.weight.original  # type: ignore[union-attr]
    else:
        w = layer.weight
    assert isinstance(w, torch.Tensor)
    return w


def set_temperature(masks: dict[str, RelaxedMask], temperature: float) -> None:
    for m in masks.values():
        m.temperature = temperature


def project(masks: dict[str, RelaxedMask]) -> None:
    for m in masks.values():
        m.project()


# --- binarisation --------------------------------------------------------------------------------


def _weight_counts(model: nn.Module) -> dict[str, int]:
    return {
        n: raw_weight(m).numel() for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)
    }


def binarize(model: nn.Module, *, threshold: float = 0.5, density: float | None = None) -> Masks:
    """Turn the relaxed masks of ``model`` into binary, weight-shaped masks.

    Without ``density``: keep entries with m > ``threshold``. With ``density``: keep the entries
    with the largest m (ties broken by weight magnitude) so that the density over all Conv/Linear
    weights is as close to ``density`` as the mask's granularity allows, never above it. Entries
    the projection set to exactly 0 are dropped, so the result can be sparser than asked; the
    one exception is a layer with no other entry, whose guard keeps its best weights by
    magnitude (:func:`top_k_masks`), since an empty layer cuts the network.
    Sigmoid masks are ranked by their logits: at a low temperature sigmoid(s / T) rounds to 0
    or 1 for most entries, and the ranking lives in s.
    """
    relaxed = relaxed_masks(model)
    if not relaxed:
        raise ValueError("binarize needs a model with relaxed masks attached")
    modules = dict(model.named_modules())
    if density is None:
        return {
            name: _expand((m.soft() > threshold).float(), raw_weight(modules[name]))
            for name, m in relaxed.items()
        }
    projected = all(m.param == "projected" for m in relaxed.values())
    scores = {n: (m.soft() if projected else m.score).detach() for n, m in relaxed.items()}
    magnitudes = {
        name: magnitude_tiebreak(raw_weight(modules[name]).detach(), scores[name].shape)
        for name in relaxed
    }
    return top_k_masks(model, scores, magnitudes, density, drop_zeros=projected)


def magnitude_tiebreak(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """|w| per mask entry (a channel's mean |w|), divided by the layer's mean |w|.

    Relative to its own layer, so a tie between layers is not decided by their init scales
    (a wide layer's weights are smaller, and would otherwise lose every tie).
    """
    magnitude = weight.abs()
    if tuple(shape) != tuple(weight.shape):
        magnitude = magnitude.flatten(1).mean(1).view(shape)
    return magnitude / magnitude.mean().clamp_min(1e-12)


def _expand(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return mask.expand_as(weight).contiguous().float()


def top_k_masks(
    model: nn.Module,
    scores: dict[str, torch.Tensor],
    tiebreak: dict[str, torch.Tensor],
    density: float,
    *,
    drop_zeros: bool = False,
) -> Masks:
    """Keep the highest-scoring mask entries, globally across layers, to hit ``density``.

    ``scores`` are mask-shaped (weight- or channel-shaped) per layer; each entry stands for the
    weights it covers. ``density`` is over all Conv/Linear weights; layers not in ``scores`` are
    kept whole. Raises InputError when the unmasked layers alone exceed the density.

    Layer-collapse guard: every layer first keeps its own best entries worth
    ``1 / (4 x layers)`` of the budget (at least one entry), so a global ranking can never
    empty a layer and disconnect the network (seen at 1 % density without it); each layer's
    best entry comes before all other guarded ones, so a budget of :func:`min_density` keeps
    one entry in every layer. With ``drop_zeros`` only entries with a positive score count,
    for the guard too, unless a layer has none: then its guard keeps its entries of largest
    ``tiebreak`` (an empty layer makes the output constant).
    """
    check_density(density)
    counts = _weight_counts(model)
    total = sum(counts.values())
    fixed = sum(c for n, c in counts.items() if n not in scores)
    budget = math.floor(density * total + 1e-9) - fixed
    if budget < 0:
        raise InputError(
            f"density {density:g} is impossible: the unmasked layers alone hold "
            f"{fixed / total:.4f} of the weights (mask the first/last layer or raise the density)"
        )
    names = list(scores)
    flat_score = torch.cat([scores[n].flatten().float().cpu() for n in names])
    flat_tie = torch.cat([tiebreak[n].flatten().float().cpu() for n in names])
    per_entry = torch.cat(
        [
            torch.full((scores[n].numel(),), counts[n] // scores[n].numel(), dtype=torch.long)
            for n in names
        ]
    )
    # Lexicographic order: each layer's best entry, the other guarded ones, then by score, ties
    # by magnitude (stable sorts, least significant key first).
    priority = _layer_floor(scores, tiebreak, counts, budget, drop_zeros)
    guarded = priority > 0
    order = torch.sort(flat_tie, descending=True, stable=True).indices
    order = order[torch.sort(flat_score[order], descending=True, stable=True).indices]
    order = order[torch.sort(priority[order], descending=True, stable=True).indices]
    cum = torch.cumsum(per_entry[order], 0)
    n_keep = int(torch.searchsorted(cum, torch.tensor(budget), right=True))
    kept = torch.zeros(flat_score.numel(), dtype=torch.bool)
    kept[order[:n_keep]] = True
    if drop_zeros:
        kept &= (flat_score > 0) | guarded
    modules = dict(model.named_modules())
    out: Masks = {}
    offset = 0
    for n in names:
        k = scores[n].numel()
        mask = kept[offset : offset + k].view(scores[n].shape).float()
        weight = raw_weight(modules[n])
        out[n] = _expand(mask.to(weight.device), weight)
        offset += k
    return out


def _layer_floor(
    scores: dict[str, torch.Tensor],
    tiebreak: dict[str, torch.Tensor],
    counts: dict[str, int],
    budget: int,
    drop_zeros: bool,
) -> torch.Tensor:
    """Flat guard priority over all entries: 2 for each layer's best entry, 1 for its other
    guarded ones, 0 for the rest."""
    floor_weights = budget / (4 * len(scores))
    parts = []
    for n, s in scores.items():
        flat, tie = s.flatten().float().cpu(), tiebreak[n].flatten().float().cpu()
        per_entry = counts[n] // s.numel()
        take = min(s.numel(), max(1, math.floor(floor_weights / per_entry)))
        order = torch.sort(tie, descending=True, stable=True).indices
        order = order[torch.sort(flat[order], descending=True, stable=True).indices][:take]
        guard = torch.zeros(s.numel(), dtype=torch.long)
        guard[order] = 1
        guard[order[:1]] = 2
        # never resurrect what was dropped: zeros (with drop_zeros) and negative scores (IMP
        # marks its already-pruned weights with -1); but a layer all of whose entries were
        # projected to zero keeps its guard, by magnitude
        positive = flat > 0
        alive = positive if drop_zeros and bool(positive.any()) else flat >= 0
        parts.append(guard * alive)
    return torch.cat(parts)


def min_density(model: nn.Module, config: MaskConfig | None = None) -> float:
    """The smallest density of a connected ticket: the layers ``config`` leaves unmasked stay
    whole and every masked layer keeps one mask entry (a weight, or a channel's weights), the
    first its layer guard keeps (:func:`top_k_masks`). Below it a channel ticket has an empty
    layer, so a constant output. Without ``config``: of the relaxed masks attached to ``model``.
    """
    counts = _weight_counts(model)
    if config is None:
        masked = {n: m.entry_size for n, m in relaxed_masks(model).items()}
    else:
        masked = {
            n: counts[n] // math.prod(_mask_shape(raw_weight(m), config.granularity))
            for n, m in _chosen_layers(model, config)
        }
    kept = sum(masked.get(n, c) for n, c in counts.items())  # entry sizes: weights per entry
    return kept / sum(counts.values())


def check_density(density: float) -> float:
    if not 0 < density <= 1:
        raise InputError(f"density must be in (0, 1] (got {density})")
    return density


# --- reporting -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerDensity:
    name: str
    kept: int
    total: int

    @property
    def density(self) -> float:
        return self.kept / self.total


def layer_densities(model: nn.Module, masks: Masks | None = None) -> list[LayerDensity]:
    """Kept / total weights per Conv/Linear layer; layers without a mask count as dense."""
    masks = masks or {}
    rows = []
    for name, layer in model.named_modules():
        if isinstance(layer, PRUNABLE_TYPES):
            total = raw_weight(layer).numel()
            kept = int(masks[name].count_nonzero()) if name in masks else total
            rows.append(LayerDensity(name, kept, total))
    return rows


def global_density(model: nn.Module, masks: Masks | None = None) -> float:
    """Kept / total over the weights of every Conv/Linear layer."""
    rows = layer_densities(model, masks)
    return sum(r.kept for r in rows) / sum(r.total for r in rows)


def soft_density(masks: dict[str, RelaxedMask], threshold: float = 0.5) -> float:
    """Fraction of masked weights whose relaxed mask is above ``threshold`` (for progress)."""
    kept = total = 0
    for m in masks.values():
        kept += int(m.kept(threshold)) * m.entry_size
        total += m.score.numel() * m.entry_size
    return kept / max(total, 1)
