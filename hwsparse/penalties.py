"""Sparsity penalties R(m) on relaxed mask entries m in [0, 1].

Every penalty is normalised so that R(0) = 0 and R'(0) = 1 (our *choice*, see METHOD.md):
the strength lambda then means the same pull on a near-zero entry whatever the penalty, and
values of lambda are comparable across types. ``l1`` pulls every entry equally; the concave
ones pull small entries hard (slope 1 near 0) and large entries little (slope < 1), so kept
weights are not shrunk and the mask ends close to binary.

``eps`` sets the scale of the concavity (smaller = more concave, closer to an l0 count);
for ``scad`` and ``mcp`` it is the knot where the slope starts to fall. ``l1`` ignores it.
The training loss adds ``lambda * sum(R(m))`` over all mask entries, as in the paper: the pull
on one entry is then lambda * R'(m) whatever the model's size, to be weighed against that
entry's loss gradient. A channel entry stands for a whole channel and is weighted by the number
of weights it covers, so one strength scale also serves both granularities.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Penalty:
    """A registered penalty: its name, R(m, eps), its slope R'(m, eps), and whether it is
    concave."""

    name: str
    fn: PenaltyFn
    slope: PenaltyFn
    concave: bool
    description: str

    def __call__(self, m: torch.Tensor, eps: float) -> torch.Tensor:
        return self.fn(m, eps)


PENALTIES: dict[str, Penalty] = {
    p.name: p
    for p in (
        Penalty("l1", _l1, _d_l1, False, "m (convex baseline: the same pull on every entry)"),
        Penalty("log", _log, _d_log, True, "eps*log(1+m/eps) (the paper's main concave one)"),
        Penalty("exp", _exp, _d_exp, True, "eps*(1-exp(-m/eps))"),
        Penalty("lp", _lp, _d_lp, True, f"smoothed l_p, p={_LP_P}"),
        Penalty("scad", _scad, _d_scad, True, f"SCAD, knot eps, a={_SCAD_A}"),
        Penalty("mcp", _mcp, _d_mcp, True, "minimax concave penalty, knot eps"),
    )
}


def get_penalty(name: str) -> Penalty:
    """Look up a penalty by the name users type (``l1``, ``log``, ...)."""
    return lookup(PENALTIES, name, "penalty")


def check_eps(eps: float) -> float:
    if not eps > 0:
        raise InputError(f"--eps must be > 0 (got {eps})")
    return eps
