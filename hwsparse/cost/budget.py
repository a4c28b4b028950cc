"""Budget-aware binarisation: cut a candidate's binary mask until its ticket fits a budget.

Plain torch plus the cost model; used by the search (as :func:`hwsparse.train.run_ticket`'s
``select`` hook), by :mod:`hwsparse.api` and by export. When a candidate's binary mask misses the
budget, it is cut to fit instead of thrown away: the mask entries are ranked by mask value per
unit of cost (a weight's cost is its layer's FLOPs per weight when latency or FLOPs are over
budget: a conv weight used at 784 positions costs 784 times a classifier weight) and the
largest density that fits is found by bisection. A candidate that fits at no density raises
:class:`hwsparse.train.SkipTicket`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from hwsparse import masks as M
from hwsparse import train as T
from hwsparse.cost.estimate import Budget, CostReport, estimate
from hwsparse.cost.profiles import DeviceProfile


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
        # the least density top-k can reach: unmasked layers stay whole, plus one weight
        rows = M.layer_densities(plain, masks)
        total = sum(r.total for r in rows)
        floor = (sum(r.total for r in rows if r.name not in masks) + 1) / total
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


def _describe(values: dict[str, float], budget: Budget) -> str:
    limits = budget.__dict__
    return ", ".join(f"{k} {v:.4g} > {limits[k]:g}" for k, v in values.items() if v > limits[k])
