"""Value, gradient and concavity of every registered penalty."""

from __future__ import annotations

import pytest
import torch

from hwsparse.errors import InputError
from hwsparse.penalties import PENALTIES, get_penalty

EPS = 0.1
GRID = torch.linspace(0.0, 1.0, 201, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_zero_at_zero_and_unit_slope(name: str) -> None:
    p = get_penalty(name)
    m = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    value = p(m, EPS).sum()
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-12)  # R(0) = 0
    assert m.grad is not None
    assert m.grad.item() == pytest.approx(1.0, rel=1e-6)  # R'(0) = 1: one strength scale


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_gradient_matches_finite_differences(name: str) -> None:
    p = get_penalty(name)
    m = torch.tensor([0.02, 0.07, 0.3, 0.55, 0.9], dtype=torch.float64, requires_grad=True)
    p(m, EPS).sum().backward()
    h = 1e-6
    numeric = (p(m.detach() + h, EPS) - p(m.detach() - h, EPS)) / (2 * h)
    assert m.grad is not None
    torch.testing.assert_close(m.grad, numeric, rtol=1e-4, atol=1e-6)
    # the closed-form slope used in training agrees with autograd
    torch.testing.assert_close(p.slope(m.detach(), EPS), m.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_nondecreasing_and_concavity(name: str) -> None:
    p = get_penalty(name)
    v = p(GRID, EPS)
    assert torch.all(v[1:] - v[:-1] >= -1e-12)  # more mask never costs less
    second = v[2:] - 2 * v[1:-1] + v[:-2]
    if p.concave:
        assert torch.all(second <= 1e-12)  # concave on [0, 1]
        assert second.min() < -1e-6  # and strictly somewhere (unlike l1)
    else:
        torch.testing.assert_close(second, torch.zeros_like(second), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", sorted(n for n, p in PENALTIES.items() if p.concave))
def test_concave_pull_weaker_on_large_entries(name: str) -> None:
    # The point of concavity: entries near 1 feel less pull than entries near 0.
    p = get_penalty(name)
    m = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    p(m, EPS).sum().backward()
    assert m.grad is not None
    assert m.grad[1] < 0.5 * m.grad[0]


def test_log_matches_formula() -> None:
    m = torch.tensor([0.5], dtype=torch.float64)
    expected = EPS * torch.log(1 + m / EPS)
    torch.testing.assert_close(get_penalty("log")(m, EPS), expected)


def test_unknown_penalty_lists_valid_names() -> None:
    with pytest.raises(InputError, match="valid: .*l1.*log"):
        get_penalty("l0")


@pytest.mark.parametrize("name", sorted(n for n, p in PENALTIES.items() if p.concave))
def test_default_eps_matches_the_pull_at_one(name: str) -> None:
    # every concave penalty's default eps gives the same ratio of pulls at m = 1 and m = 0
    p = get_penalty(name)
    m = torch.tensor([0.0, 1.0], dtype=torch.float64)
    slope = p.slope(m, p.default_eps)
    assert (slope[1] / slope[0]).item() == pytest.approx(1 / 21, rel=1e-6)


def test_resolve_eps() -> None:
    from hwsparse.penalties import resolve_eps

    assert resolve_eps("log", None) == pytest.approx(0.05)
    assert resolve_eps("exp", 0.2) == 0.2
    with pytest.raises(InputError, match="eps"):
        resolve_eps("log", 0.0)


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_in_place_slope_adds_scale_times_slope(name: str) -> None:
    # the training step's in-place form: grad += scale * R'(m), scale a 0-d tensor
    p = get_penalty(name)
    m = torch.rand(7, 5, dtype=torch.float64)
    grad = torch.randn(7, 5, dtype=torch.float64)
    scale = torch.tensor(0.37, dtype=torch.float64)
    expected = grad + scale * p.slope(m, EPS)
    p.add_slope_(grad, m, EPS, scale)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
