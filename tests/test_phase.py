"""The public search phase: its penalty term, the device-tensor strength controller, the
per-step mask work, and the baselines registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hwsparse import masks as M
from hwsparse import train as T
from hwsparse.data import Dataset, load_dataset
from hwsparse.errors import InputError
from hwsparse.models import build_model
from hwsparse.phase import MaskStep, PenaltyTerm, SearchPhase, Trainer, search_phase


def _spec(**kw: object) -> SearchPhase:
    ticket = T.TicketConfig(**kw)  # type: ignore[arg-type]
    return SearchPhase.of(ticket)


def _meta_masks(param: str) -> dict[str, M.RelaxedMask]:
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    return M.attach_relaxed(net, M.MaskConfig(param=param))


@pytest.mark.parametrize("param", ["projected", "sigmoid"])
def test_a_step_of_mask_work_never_syncs_with_the_host(param: str) -> None:
    """Meta tensors have no values: any int()/float()/item() in the step would raise here."""
    relaxed = _meta_masks(param)
    spec = _spec(density=0.1, auto_strength=True, mask=M.MaskConfig(param=param))
    term = PenaltyTerm(relaxed, spec)
    work = MaskStep(relaxed, term, lambda p: 1.0 - 0.5 * p, spec.mask_lr)
    for step in range(3):
        work.before(step / 2)
        work.grad()
        work.after(step / 2)
    assert term.lam.device.type == "meta"
    assert all(m.score.grad is not None for m in relaxed.values())
    with pytest.raises((RuntimeError, NotImplementedError)):
        term.value()  # reporting does read values (once per epoch): it cannot run on meta


def test_auto_controller_follows_the_density_path() -> None:
    net = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 2))
    relaxed = M.attach_relaxed(net, M.MaskConfig())
    spec = _spec(density=0.1, auto_strength=True, strength=1e-3, auto_ramp=0.5, auto_rate=0.02)
    term = PenaltyTerm(relaxed, spec)
    term.after_step(0.0)  # goal 1, density 1: no error, no change
    assert float(term.lam) == pytest.approx(1e-3)
    term.after_step(0.5)  # goal 0.11, density 1: error clipped at 1 -> lambda * e^rate
    assert float(term.lam) == pytest.approx(1e-3 * math.exp(0.02), rel=1e-6)
    with torch.no_grad():
        for m in relaxed.values():
            m.score.zero_()  # density 0 < goal: error -1, ten times the rate down
    term.after_step(1.0)
    assert float(term.lam) == pytest.approx(1e-3 * math.exp(0.02 - 0.2), rel=1e-6)
    assert float(term.soft_density()) == 0.0


def test_closed_form_gradient_equals_autograd() -> None:
    torch.manual_seed(0)
    for param in ("projected", "sigmoid"):
        net = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
        relaxed = M.attach_relaxed(net, M.MaskConfig(param=param, temperature=0.7))
        with torch.no_grad():
            for m in relaxed.values():
                m.score.uniform_(0.05, 0.95)
        spec = _spec(penalty="mcp", strength=0.3, mask=M.MaskConfig(param=param))
        term = PenaltyTerm(relaxed, spec)
        total = sum(term.fn(m.soft(), term.eps).sum() * m.entry_size for m in relaxed.values())
        expected = torch.autograd.grad(0.3 * total, [m.score for m in relaxed.values()])
        term.add_grad()
        for m, g in zip(relaxed.values(), expected, strict=True):
            torch.testing.assert_close(m.score.grad, g)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_search_phase_reports_lambda_and_the_snapshot(digits: Dataset) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes)
    relaxed = M.attach_relaxed(model, M.MaskConfig())
    spec = _spec(search_epochs=2, density=0.2, auto_strength=True)
    run = Trainer(digits, T.TrainConfig(epochs=1, batch_size=256, device="cpu"), None)
    out = search_phase(run, model, relaxed, spec, snapshot_step=0)
    assert out.snapshot is not None and out.strength_final is not None
    assert out.strength_final != spec.strength  # the controller moved it
    assert [h.phase for h in run.history] == ["search", "search"]
    assert run.history[-1].density == M.soft_density(relaxed, spec.threshold)


def test_baselines_are_a_registry() -> None:
    assert list(T.BASELINES) == ["dense", "imp", "cs", "magnitude", "random"]
    assert T.method_names()[-5:] == list(T.BASELINES)
    cfg = T.TrainConfig(epochs=10)
    assert T.planned_epochs("imp", 0.05, cfg) == 150
    assert T.planned_epochs("cs", 0.05, cfg) == 3 * 10 + 10
    assert T.planned_epochs("log", 0.05, cfg) == T.TicketConfig().search_epochs + 10
    with pytest.raises(InputError, match="unknown method 'foo'; valid: cs, dense, exp"):
        T.run_method("foo", lambda: nn.Linear(2, 2), None, 0.1, cfg)  # type: ignore[arg-type]
