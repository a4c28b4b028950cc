"""The CUDA path itself: skipped without a GPU (benchmarks/gpu/check.sh runs them on one).

The CPU suite covers the same logic (tests/test_accel.py, test_phase.py, test_population.py);
these check what only a GPU can show: no host sync in a step, autocast on CUDA, the vmapped
population on CUDA against solo runs on CUDA.
"""

from __future__ import annotations

import pytest
import torch

from hwsparse import accel as A
from hwsparse import masks as M
from hwsparse import train as T
from hwsparse.data import Dataset, load_dataset
from hwsparse.errors import InputError
from hwsparse.models import build_model
from hwsparse.phase import MaskStep, PenaltyTerm, SearchPhase
from hwsparse.population import Candidate, Population, run_population

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def _cand(seed: int, param: str = "projected") -> Candidate:
    ticket = T.TicketConfig(
        density=0.2, auto_strength=True, search_epochs=2, mask=M.MaskConfig(param=param)
    )
    return Candidate(ticket, T.TrainConfig(epochs=2, batch_size=128, device="cuda", seed=seed))


def test_mask_work_and_population_step_never_sync(digits: Dataset) -> None:
    model = build_model("mlp", digits.input_shape, digits.num_classes).cuda()
    relaxed = M.attach_relaxed(model, M.MaskConfig(param="sigmoid"))
    cand = _cand(0, "sigmoid")
    spec = SearchPhase.of(cand.ticket)
    work = MaskStep(relaxed, PenaltyTerm(relaxed, spec), lambda p: 1.0 - 0.5 * p, spec.mask_lr)
    for m in relaxed.values():
        m.score.grad = torch.zeros_like(m.score)
    pop = Population(
        lambda: build_model("mlp", digits.input_shape, digits.num_classes),
        digits,
        slots=2,
        batch_size=128,
        device="cuda",
    )
    pop.join(_cand(1))
    pop.join(_cand(2, "sigmoid"))
    idx = torch.stack([torch.arange(128), torch.arange(128, 256)]).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3):
            work.before(step / 2)
            work.grad()
            work.after(step / 2)
            pop._step(idx)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_population_on_cuda_equals_solo_on_cuda(digits: Dataset) -> None:
    def factory() -> torch.nn.Module:
        return build_model("mlp", digits.input_shape, digits.num_classes)

    cands = [_cand(0), _cand(1, "sigmoid")]
    solo = [T.run_ticket(factory, digits, c.ticket, c.train) for c in cands]
    batched = run_population(factory, digits, cands, slots=2)
    for a, b in zip(solo, batched, strict=True):
        assert isinstance(b, T.RunResult) and b.status == a.status == "ok"
        assert b.device.startswith("cuda")
        assert abs(a.test_accuracy - b.test_accuracy) <= 3 / 359
        assert b.density == pytest.approx(a.density, abs=1e-3)


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16", "fp32"])
def test_each_precision_trains_on_cuda(digits: Dataset, precision: str) -> None:
    device = torch.device("cuda")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        with pytest.raises(InputError, match="bf16"):
            A.select_precision("bf16", device)
        return
    cfg = T.TrainConfig(epochs=1, batch_size=128, device="cuda", precision=precision)
    r = T.run_ticket(
        lambda: build_model("mlp", digits.input_shape, digits.num_classes),
        digits,
        T.TicketConfig(search_epochs=1, density=0.3, auto_strength=True),
        cfg,
    )
    assert r.status == "ok" and r.test_accuracy > 0.3
    assert r.model is not None
    x, y = digits.x_test.cuda(), digits.y_test.cuda()
    assert r.test_accuracy == A.evaluate(r.model.cuda(), x, y)  # fp32, same batching


def test_a_gpu_past_the_last_one_is_refused() -> None:
    n = torch.cuda.device_count()
    with pytest.raises(InputError, match=f"this machine has {n} CUDA device"):
        A.resolve_device(f"cuda:{n}")
