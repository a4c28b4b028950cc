"""Budget-aware binarisation: cut a candidate's binary mask until its ticket fits a budget.

Plain torch plus the cost model; used by the search (as :func:`hwsparse.train.run_ticket`'s
``select`` hook), by :mod:`hwsparse.api` and by export. When a candidate's binary mask misses the
budget, it is cut to fit instead of thrown away: the mask entries are ranked by mask value per
unit of cost (a weight's cost is its layer's FLOPs per weight when latency or FLOPs are over
budget: a conv weight used at 784 positions costs 784 times a classifier weight) and the
largest density that fits is found by bisection. A candidate that fits at no density raises
:class:`hwsparse.train.SkipTicket`.

Floors (:func:`floors`, :func:`check_floors`): what no network can go below on a device. The
device's own floors are the engine's per-invoke overhead (latency) and the runtime's RAM reserve;
a model's floors are the cost of its smallest possible network: every Conv/Linear weight pruned
(what is left is the invoke overhead, each remaining op's fixed cost, biases, the input and output
activations). No mask can make the model cheaper, so a budget below a floor is refused before any
training.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from hwsparse import masks as M
from hwsparse import train as T
from hwsparse.cost.estimate import Budget, CostReport, estimate
from hwsparse.cost.flops import MASKABLE
from hwsparse.cost.profiles import DeviceProfile
from hwsparse.errors import InputError


def plain_copy(model: nn.Module, factory: Callable[[], nn.Module]) -> nn.Module:
    """A bare copy of a masked model (a deepcopy would share torch's parametrized classes)."""
    plain = factory()
    plain.load_state_dict({k: v.cpu() for k, v in T.weight_state(model).items()})
    return plain.eval()


def _cost_weights(model: nn.Module, report: CostReport, masks: M.Masks) -> dict[str, float]:
    """Relative cost of one weight per layer: its layer's dense FLOPs per weight (mean 1)."""
    modules = dict(model.named_modules())
    flops = {row.name: row.dense_flops for row in report.layers}
    per = {n: max(flops.get(n, 0), 1) / M.raw_weight(modules[n]).numel() for n in masks}
    mean = statistics.fmean(per.values())
    return {n: v / mean for n, v in per.items()}


@dataclass
class Cut:
    """What budget-aware binarisation did to one candidate."""

    from_density: float | None = None
    to_density: float | None = None
    evaluations: int = 0
    seconds: float = 0.0  # time spent estimating costs while cutting


class BudgetCutter:
    """``select`` hook for :func:`hwsparse.train.run_ticket`: cut a mask until it fits."""

    STEPS = 7  # bisection steps on the density (each is one cost estimate)
    MIN_FRACTION = 0.01  # never cut below 1 % of the candidate's own density

    def __init__(
        self,
        profile: DeviceProfile,
        budget: Budget,
        input_shape: tuple[int, ...],
        factory: Callable[[], nn.Module],
    ) -> None:
        self.profile, self.budget, self.input_shape = profile, budget, input_shape
        self.factory = factory
        self.cut = Cut()
        self.report: CostReport | None = None  # cost of the masks it returned

    def __call__(self, model: nn.Module, given: M.Masks) -> M.Masks:
        started = time.perf_counter()
        try:
            return self._cut(model, given)
        finally:
            self.cut.seconds += time.perf_counter() - started

    def _cut(self, model: nn.Module, given: M.Masks) -> M.Masks:
        device = next(iter(given.values())).device
        masks = {k: v.cpu() for k, v in given.items()}
        plain = plain_copy(model, self.factory)
        report = estimate(plain, self.input_shape, self.profile, masks)
        self.cut.evaluations += 1
        violations = self.budget.violations(report)
        if all(v <= 0 for v in violations.values()):
            self.report = report
            return given
        relaxed = M.relaxed_masks(model)
        weigh = {"latency_ms", "mflops"} & {k for k, v in violations.items() if v > 0}
        cost = _cost_weights(plain, report, masks) if weigh else dict.fromkeys(masks, 1.0)
        modules = dict(model.named_modules())
        scores = {n: r.soft().detach().cpu() / cost[n] for n, r in relaxed.items()}
        tie = {
            n: M.magnitude_tiebreak(M.raw_weight(modules[n]).detach().cpu(), scores[n].shape)
            for n in relaxed
        }
        start = M.global_density(plain, masks)
        self.cut.from_density = start
        floor = M.min_density(model)  # never cut to a disconnected ticket
        lo, hi = max(start * self.MIN_FRACTION, floor), start  # lo: must fit (checked below)
        best: M.Masks | None = None
        candidate = M.top_k_masks(plain, scores, tie, lo, drop_zeros=True) if lo < hi else masks
        if not self._fits(plain, candidate):
            raise T.SkipTicket(
                f"does not fit the budget even at density {lo:.5f} "
                f"({_describe(self.budget.values(report), self.budget)} at {start:.4f})"
            )
        best = candidate
        for _ in range(self.STEPS):
            mid = math.sqrt(lo * hi)  # bisect in log density
            candidate = M.top_k_masks(plain, scores, tie, mid, drop_zeros=True)
            if self._fits(plain, candidate):
                lo, best = mid, candidate
            else:
                hi = mid
        self.cut.to_density = M.global_density(plain, best)
        self.report = estimate(plain, self.input_shape, self.profile, best)
        return {k: v.to(device) for k, v in best.items()}

    def _fits(self, plain: nn.Module, masks: M.Masks) -> bool:
        self.cut.evaluations += 1
        return self.budget.fits(estimate(plain, self.input_shape, self.profile, masks))


def largest_fitting_density(
    profile: DeviceProfile,
    budget: Budget,
    input_shape: tuple[int, ...],
    factory: Callable[[], nn.Module],
    granularity: str,
) -> float | None:
    """About the largest density (kept / all Conv+Linear weights) at which a freshly
    initialised network of ``factory`` fits ``budget`` with ``granularity`` masks, its entries
    ranked by weight magnitude and cost as :class:`BudgetCutter` ranks them (bisection in log
    density, within a factor of about 1.04). None when it fits at no density.

    A trained candidate keeps other entries, so its cost at the same density differs somewhat;
    the cut still applies to it. Used to place the search's first trials where they can fit.
    """
    model = factory()
    M.attach_relaxed(model, M.MaskConfig(granularity=granularity))
    whole = M.binarize(model)  # every mask starts above the threshold: all ones
    cutter = BudgetCutter(profile, budget, input_shape, factory)
    try:
        cutter(model, whole)
    except T.SkipTicket:
        return None
    return cutter.cut.to_density or M.global_density(plain_copy(model, factory), whole)


def _describe(values: dict[str, float], budget: Budget) -> str:
    limits = budget.__dict__
    return ", ".join(f"{k} {v:.4g} > {limits[k]:g}" for k, v in values.items() if v > limits[k])


# --- floors --------------------------------------------------------------------------------------

# Budget field -> the `hwsparse search` flag that sets it (named in refusals).
FLAGS = {
    "latency_ms": "--latency-ms",
    "weight_kb": "--flash-kb",
    "ram_kb": "--ram-kb",
    "activation_kb": "activation_kb",
    "mflops": "--max-mflops",
}


@dataclass(frozen=True)
class Floors:
    """What no network goes below on one engine of a device (``None``: unknown or not asked).

    Attributes:
        profile, engine: where.
        invoke_ms: the engine's per-invoke overhead, ms (the device's latency floor).
        runtime_reserve_kb: RAM the runtime takes before any model, KiB (the RAM floor).
        model: the model the ``smallest_*`` fields are for (None: device floors only).
        smallest_latency_ms, smallest_weight_kb, smallest_ram_kb, smallest_activation_kb,
        smallest_mflops: the cost of that model with every Conv/Linear weight pruned.
    """

    profile: str
    engine: str
    invoke_ms: float | None
    runtime_reserve_kb: float | None
    model: str | None = None
    smallest_latency_ms: float | None = None
    smallest_weight_kb: float | None = None
    smallest_ram_kb: float | None = None
    smallest_activation_kb: float | None = None
    smallest_mflops: float | None = None

    def floor(self, key: str) -> float | None:
        """The floor of one :class:`Budget` field (the largest known one), or None."""
        device = {"latency_ms": self.invoke_ms, "ram_kb": self.runtime_reserve_kb}.get(key)
        model = {
            "latency_ms": self.smallest_latency_ms,
            "weight_kb": self.smallest_weight_kb,
            "ram_kb": self.smallest_ram_kb,
            "activation_kb": self.smallest_activation_kb,
            "mflops": self.smallest_mflops,
        }[key]
        known = [v for v in (device, model) if v is not None]
        return max(known) if known else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def smallest_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """All-zero masks for every Conv/Linear weight: the smallest network ``model`` can be."""
    return {
        name: torch.zeros_like(mod.weight, dtype=torch.bool)
        for name, mod in model.named_modules()
        if isinstance(mod, MASKABLE)
    }


def floors(
    profile: DeviceProfile,
    model: nn.Module | None = None,
    input_shape: tuple[int, ...] | None = None,
    *,
    engine: str | None = None,
    model_name: str | None = None,
) -> Floors:
    """The device's floors on ``engine`` (default: the first), and ``model``'s when given.

    Args:
        profile: the device profile.
        model: a dense model (its smallest network is costed with every weight pruned).
        input_shape: one sample's shape (required with ``model``).
        engine: the profile's engine.
        model_name: how refusals name the model (default: its class name).
    """
    eng = profile.engine(engine)
    reserve = profile.capacity.runtime_reserved_bytes
    device = Floors(
        profile=profile.id,
        engine=eng.name,
        invoke_ms=None if eng.invoke_overhead_us is None else eng.invoke_overhead_us / 1e3,
        runtime_reserve_kb=None if reserve is None else reserve / 1024,
    )
    if model is None:
        return device
    if input_shape is None:
        raise InputError("floors of a model need its input shape")
    r = estimate(model, input_shape, profile, smallest_masks(model), engine=eng.name)
    return replace(
        device,
        model=model_name or type(model).__name__,
        smallest_latency_ms=r.latency_ms,
        smallest_weight_kb=r.weight_bytes / 1024,
        smallest_ram_kb=None if r.ram_bytes is None else r.ram_bytes / 1024,
        smallest_activation_kb=r.peak_activation_bytes / 1024,
        smallest_mflops=r.flops / 1e6,
    )


def _ms(x: float) -> str:
    return f"{x:.2f}" if x >= 0.1 else f"{x:.3g}"


def below_floor(budget: Budget, fl: Floors) -> list[str]:
    """One message per limit of ``budget`` that no network can meet (empty: all can be met)."""
    messages = []
    for f in fields(budget):
        limit = getattr(budget, f.name)
        floor = fl.floor(f.name)
        if limit is None or floor is None or not limit < floor * (1 - 1e-9):
            continue
        flag, model = FLAGS[f.name], fl.model or "the model"
        if f.name == "latency_ms":
            invoke, smallest = fl.invoke_ms, fl.smallest_latency_ms
            device = f"per-invoke overhead of engine {fl.engine}"
            if invoke is not None and limit < invoke:
                text = (
                    f"{flag} {limit:g} is below {fl.profile}'s floor of {_ms(invoke)} ms"
                    f" ({device})"
                )
                if smallest is not None:
                    cost = _ms(smallest)
                    text += f"; the smallest network {model} can be costs {cost} ms"
            else:
                text = (
                    f"{flag} {limit:g} is below the {_ms(floor)} ms that the smallest network"
                    f" {model} can be (every weight pruned) costs on {fl.profile}"
                    + ("" if invoke is None else f" ({_ms(invoke)} ms of it: {device})")
                )
        elif f.name == "ram_kb":
            reserve, smallest = fl.runtime_reserve_kb, fl.smallest_ram_kb
            if reserve is not None and limit < reserve:
                text = (
                    f"{flag} {limit:g} is below {fl.profile}'s floor of {reserve:.1f} KiB"
                    " (runtime RAM reserve)"
                )
                if smallest is not None:
                    text += (
                        f"; the smallest network {model} can be needs {smallest:.1f} KiB"
                        " (reserve + input and output activations)"
                    )
            else:
                text = (
                    f"{flag} {limit:g} is below the {floor:.1f} KiB of RAM that the smallest"
                    f" network {model} can be needs on {fl.profile}"
                    + ("" if reserve is None else f" ({reserve:.1f} KiB reserve + activations)")
                )
        else:
            unit = "MFLOPs" if f.name == "mflops" else "KiB"
            text = (
                f"{flag} {limit:g} is below the {floor:.4g} {unit} that the smallest network"
                f" {model} can be (every weight pruned) needs on {fl.profile}"
            )
        messages.append(text)
    return messages


def check_floors(budget: Budget, fl: Floors) -> None:
    """Refuse a budget no network can meet.

    Raises:
        InputError: one line per limit below its floor, each naming the floor.
    """
    messages = below_floor(budget, fl)
    if messages:
        raise InputError("; ".join(messages) + ": ask for at least the floor")
