"""Sparsity penalties R(m) on relaxed mask entries m in [0, 1].

Every penalty is normalised so that R(0) = 0 and R'(0) = 1 (our *choice*, see METHOD.md):
the strength lambda then means the same pull on a near-zero entry whatever the penalty, and
values of lambda are comparable across types. ``l1`` pulls every entry equally; the concave
ones pull small entries hard (slope 1 near 0) and large entries little (slope < 1), so kept
weights are not shrunk and the mask ends close to binary.

``eps`` sets the scale of the concavity (smaller = more concave, closer to an l0 count);
for ``scad`` and ``mcp`` it is the knot where the slope starts to fall. ``l1`` ignores it.
The same eps means very different shapes across penalties (``exp`` with eps 0.05 has slope
e^-20 at m = 1, so a mask starting at 1 never feels it), so each penalty has its own default
eps, chosen so that its pull at m = 1 is 1/21 of its pull at 0, as for ``log`` with eps 0.05
(our *choice*; ``--eps`` overrides it).
The training loss adds ``lambda * sum(R(m))`` over all mask entries, as in the paper: the pull
on one entry is then lambda * R'(m) whatever the model's size, to be weighed against that
entry's loss gradient. A channel entry stands for a whole channel and is weighted by the number
of weights it covers, so one strength scale also serves both granularities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hwsparse.errors import InputError, lookup

PenaltyFn = Callable[[torch.Tensor, float], torch.Tensor]


def _l1(m: torch.Tensor, eps: float) -> torch.Tensor:
    return m


def _log(m: torch.Tensor, eps: float) -> torch.Tensor:
    # eps * log(1 + m / eps): the paper's main concave choice; slope 1 / (1 + m / eps).
    return eps * torch.log1p(m / eps)


def _exp(m: torch.Tensor, eps: float) -> torch.Tensor:
    # eps * (1 - exp(-m / eps)): slope exp(-m / eps), saturates at eps.
    return eps * -torch.expm1(-m / eps)


_LP_P = 0.5  # exponent of the `lp` penalty (0 < p < 1)


def _lp(m: torch.Tensor, eps: float) -> torch.Tensor:
    # ((m + eps)^p - eps^p) / (p * eps^(p - 1)): smoothed l_p; slope ((m + eps) / eps)^(p - 1).
    p = _LP_P
    out: torch.Tensor = ((m + eps) ** p - eps**p) / (p * eps ** (p - 1))
    return out


_SCAD_A = 3.7  # Fan & Li (2001) recommend a = 3.7


def _scad(m: torch.Tensor, eps: float) -> torch.Tensor:
    # SCAD with knot eps: slope 1 up to eps, then falls linearly to 0 at a * eps.
    a = _SCAD_A
    mid = (2 * a * eps * m - m**2 - eps**2) / (2 * (a - 1) * eps)
    top = torch.full_like(m, (a + 1) * eps / 2)
    return torch.where(m <= eps, m, torch.where(m <= a * eps, mid, top))


def _mcp(m: torch.Tensor, eps: float) -> torch.Tensor:
    # Minimax concave penalty (Zhang 2010) with knot eps: slope 1 - m / eps, flat after eps.
    return torch.where(m <= eps, m - m**2 / (2 * eps), torch.full_like(m, eps / 2))


_R = 1 / 21  # default concavity: R'(1) / R'(0), the ratio of log with eps = 0.05


# Closed-form slopes R'(m): training adds lambda * R'(m) to the mask gradient directly, which
# is cheaper than back-propagating through R (tests check them against autograd).


def _d_l1(m: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.ones_like(m)


def _d_log(m: torch.Tensor, eps: float) -> torch.Tensor:
    return eps / (eps + m)


def _d_exp(m: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.exp(-m / eps)


def _d_lp(m: torch.Tensor, eps: float) -> torch.Tensor:
    return ((m + eps) / eps) ** (_LP_P - 1)


def _d_scad(m: torch.Tensor, eps: float) -> torch.Tensor:
    a = _SCAD_A
    return torch.where(m <= eps, torch.ones_like(m), ((a * eps - m) / ((a - 1) * eps)).clamp(0))


def _d_mcp(m: torch.Tensor, eps: float) -> torch.Tensor:
    return (1 - m / eps).clamp(0)


# In-place ``grad += scale * R'(m)`` (scale a tensor broadcasting against ``grad``: lambda times
# the entry size). Runs on every training step over every mask entry, so each is written with
# as few passes over the entries as eager PyTorch allows (benchmarks/overhead): the generic
# form is two (the slope, then one fused multiply-add); l1 and log need one and two.
AccumulateFn = Callable[[torch.Tensor, torch.Tensor, float, torch.Tensor], None]


def _acc_l1(grad: torch.Tensor, m: torch.Tensor, eps: float, scale: torch.Tensor) -> None:
    grad.add_(scale)


def _acc_log(grad: torch.Tensor, m: torch.Tensor, eps: float, scale: torch.Tensor) -> None:
    grad.addcdiv_(scale, m + eps, value=eps)  # scale * eps / (eps + m)


def _accumulate(slope: PenaltyFn) -> AccumulateFn:
    def acc(grad: torch.Tensor, m: torch.Tensor, eps: float, scale: torch.Tensor) -> None:
        grad.addcmul_(slope(m, eps), scale)

    return acc


@dataclass(frozen=True)
class Penalty:
    """A registered penalty: its name, R(m, eps), its slope R'(m, eps), and whether it is
    concave."""

    name: str
    fn: PenaltyFn
    slope: PenaltyFn
    concave: bool
    description: str
    default_eps: float  # R'(1) / R'(0) = 1/21 with this eps (see the module docstring)
    add_slope_: AccumulateFn  # grad += scale * R'(m, eps) in place (the training step's)

    def __call__(self, m: torch.Tensor, eps: float) -> torch.Tensor:
        return self.fn(m, eps)


PENALTIES: dict[str, Penalty] = {
    p.name: p
    for p in (
        Penalty("l1", _l1, _d_l1, False, "m (convex: the same pull on every entry)", 1.0, _acc_l1),
        # log: eps / (eps + 1) = r  ->  eps = r / (1 - r)
        Penalty(
            "log", _log, _d_log, True, "eps*log(1+m/eps) (the paper's)", _R / (1 - _R), _acc_log
        ),
        # exp: exp(-1 / eps) = r  ->  eps = -1 / ln r
        Penalty(
            "exp",
            _exp,
            _d_exp,
            True,
            "eps*(1-exp(-m/eps))",
            -1 / math.log(_R),
            _accumulate(_d_exp),
        ),
        # lp: ((1 + eps) / eps)^(p - 1) = r  ->  eps = 1 / (r^(1 / (p - 1)) - 1)
        Penalty(
            "lp",
            _lp,
            _d_lp,
            True,
            f"smoothed l_p, p={_LP_P}",
            1 / (_R ** (1 / (_LP_P - 1)) - 1),
            _accumulate(_d_lp),
        ),
        # scad: (a eps - 1) / ((a - 1) eps) = r  ->  eps = 1 / (a - r (a - 1))
        Penalty(
            "scad",
            _scad,
            _d_scad,
            True,
            f"SCAD, knot eps, a={_SCAD_A}",
            1 / (_SCAD_A - _R * (_SCAD_A - 1)),
            _accumulate(_d_scad),
        ),
        # mcp: 1 - 1 / eps = r  ->  eps = 1 / (1 - r)
        Penalty(
            "mcp",
            _mcp,
            _d_mcp,
            True,
            "minimax concave penalty, knot eps",
            1 / (1 - _R),
            _accumulate(_d_mcp),
        ),
    )
}


def get_penalty(name: str) -> Penalty:
    """Look up a penalty by the name users type (``l1``, ``log``, ...)."""
    return lookup(PENALTIES, name, "penalty")


def resolve_eps(penalty: str, eps: float | None) -> float:
    """``eps`` if given (it must be > 0), else the penalty's default."""
    if eps is None:
        return get_penalty(penalty).default_eps
    if not eps > 0:
        raise InputError(f"--eps must be > 0 (got {eps})")
    return eps
