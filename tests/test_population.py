"""Population-batched training: each member's result equals its solo run."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from hwsparse import masks as M
from hwsparse import train as T
from hwsparse.data import Dataset, load_dataset
from hwsparse.models import build_model
from hwsparse.penalties import PENALTIES
from hwsparse.population import (
    CPU_SLOTS,
    MAX_SLOTS,
    Candidate,
    Population,
    auto_slots,
    run_population,
)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def _factory(data: Dataset) -> T.ModelFactory:
    return lambda: build_model("mlp", data.input_shape, data.num_classes)


def _candidates() -> list[Candidate]:
    """Every penalty with both parameterisations; members differ in every searched knob."""
    out = []
    combos = itertools.product(PENALTIES, ("projected", "sigmoid"))
    for i, (penalty, param) in enumerate(combos):
        mask = M.MaskConfig(
            param=param,
            granularity=("weight", "channel")[i % 3 == 2],
            temperature=0.5 + 0.1 * i,
            mask_first=i % 4 != 1,
        )
        auto = i % 2 == 0
        ticket = T.TicketConfig(
            penalty=penalty,
            strength=1e-3 if auto else 3e-4 * (1 + i % 3),
            auto_strength=auto,
            density=0.15 + 0.01 * i if mask.mask_first else 0.45,  # fc1 is 38 % of weights
            eps=None if i % 3 else PENALTIES[penalty].default_eps * 1.5,
            mask_lr=0.01 * (1 + i % 4),
            search_epochs=1 + i % 2,
        )
        ticket = T.TicketConfig(**{**ticket.__dict__, "mask": mask})
        train = T.TrainConfig(
            epochs=1 + (i + 1) % 2,
            batch_size=128,
            lr=1e-3 * (1 + 0.1 * i),
            seed=i,
            rewind_steps=i % 3,
            device="cpu",
        )
        out.append(Candidate(ticket, train))
    return out


def _same(solo: T.RunResult, batched: T.RunResult) -> None:
    assert batched.status == solo.status
    assert batched.masks.keys() == solo.masks.keys()
    # The population's kernels (its vectorised Adam; on a GPU its batched matmuls) round in
    # another order than the solo run's, and over hundreds of steps a rounding difference can
    # flip a ReLU or swap two entries that tie at the top-k cut. So: at most 1 % of the kept
    # entries differ, and at most 0.1 % of the weights move by more than 1e-3; a real
    # difference (a wrong learning rate, bias correction or decay) moves nearly all of them.
    differ = sum(int((batched.masks[k] != solo.masks[k]).sum()) for k in solo.masks)
    kept = sum(int(solo.masks[k].sum()) for k in solo.masks)
    assert differ <= 0.01 * kept
    assert batched.val_accuracy == pytest.approx(solo.val_accuracy, abs=3 / 144)
    assert batched.test_accuracy == pytest.approx(solo.test_accuracy, abs=3 / 359)
    assert batched.density == solo.density
    assert (batched.epochs, batched.steps) == (solo.epochs, solo.steps)
    assert [h.phase for h in batched.history] == [h.phase for h in solo.history]
    for a, b in zip(solo.history, batched.history, strict=True):
        assert b.loss == pytest.approx(a.loss, rel=1e-3)
    if solo.strength_final is None:
        assert batched.strength_final is None
    else:
        assert batched.strength_final == pytest.approx(solo.strength_final, rel=1e-3)
    assert solo.model is not None and batched.model is not None
    s, b = solo.model.state_dict(), batched.model.state_dict()
    for k in s:
        off = ~torch.isclose(b[k], s[k], rtol=1e-3, atol=1e-3)
        assert int(off.sum()) <= 0.001 * off.numel(), (k, int(off.sum()), off.numel())


def test_every_member_equals_its_solo_run(digits: Dataset) -> None:
    cands = _candidates()
    assert {c.ticket.penalty for c in cands} == set(PENALTIES)
    solo = [T.run_ticket(_factory(digits), digits, c.ticket, c.train) for c in cands]
    # 4 slots for 12 candidates: members of different lengths leave and new ones join
    batched = run_population(_factory(digits), digits, cands, slots=4)
    for c, a, b in zip(cands, solo, batched, strict=True):
        assert isinstance(b, T.RunResult), (c.ticket.penalty, b)
        _same(a, b)


def test_the_gpu_forward_vmap_gives_the_solo_result_too(digits: Dataset) -> None:
    """The CUDA path's one vmapped call for all members, run on CPU."""
    cands = _candidates()[1:4]
    solo = [T.run_ticket(_factory(digits), digits, c.ticket, c.train) for c in cands]
    batched = run_population(_factory(digits), digits, cands, slots=3, forward="vmap")
    for a, b in zip(solo, batched, strict=True):
        assert isinstance(b, T.RunResult)
        _same(a, b)


def test_pruned_and_diverged_members_leave_without_touching_the_others(
    digits: Dataset,
) -> None:
    cands = _candidates()[:3]

    def prune(info: T.EpochInfo) -> None:
        if info.phase == "ticket":
            raise RuntimeError("pruned by the caller")

    cands[0].on_epoch = prune
    cands[1].train = T.TrainConfig(**{**cands[1].train.__dict__, "lr": 1e20})  # diverges
    batched = run_population(_factory(digits), digits, cands, slots=3)
    assert isinstance(batched[0], RuntimeError) and "pruned" in str(batched[0])
    solo_diverged = T.run_ticket(_factory(digits), digits, cands[1].ticket, cands[1].train)
    assert isinstance(batched[1], T.RunResult)
    assert solo_diverged.status == batched[1].status == "diverged"
    third = T.run_ticket(_factory(digits), digits, cands[2].ticket, cands[2].train)
    assert isinstance(batched[2], T.RunResult)
    _same(third, batched[2])


def test_select_can_skip_a_member(digits: Dataset) -> None:
    cand = _candidates()[0]

    def skip(model: nn.Module, masks: M.Masks) -> M.Masks:
        raise T.SkipTicket("over budget")

    cand.select = skip
    solo = T.run_ticket(_factory(digits), digits, cand.ticket, cand.train, select=skip)
    (batched,) = run_population(_factory(digits), digits, [cand], slots=1)
    assert isinstance(batched, T.RunResult)
    assert solo.status == batched.status == "skipped" and batched.message == "over budget"
    _same(solo, batched)


def test_only_candidates_of_the_same_batch_size_share_a_population(digits: Dataset) -> None:
    cand = _candidates()[0]
    pop = Population(_factory(digits), digits, slots=2, batch_size=64, device="cpu")
    assert not pop.fits(cand)  # batch 128
    with pytest.raises(ValueError, match="does not fit"):
        pop.join(cand)
    with pytest.raises(ValueError, match="fp16"):
        Population(_factory(digits), digits, slots=2, batch_size=64, device="cpu",
                   precision="fp16")  # fmt: skip


def test_auto_slots_fill_gpu_memory_and_follow_the_measurement_on_cpu() -> None:
    model = build_model("mlp", (1, 28, 28), 10)  # 266,610 parameters
    assert auto_slots(model, (1, 28, 28), torch.device("cpu")) == CPU_SLOTS == 1  # measured
    gpu = torch.device("cuda:0")
    per_member = 14 * 4 * 266_610 + 2 * 4 * (784 + 300 + 300 + 100 + 100 + 10) * 64
    assert auto_slots(model, (1, 28, 28), gpu, free_bytes=10 * per_member) == 7  # 70 %
    assert auto_slots(model, (1, 28, 28), gpu, free_bytes=10**12) == MAX_SLOTS
    assert auto_slots(model, (1, 28, 28), gpu, free_bytes=1) == 1


def test_compare_trains_a_penalty_s_seeds_together(digits: Dataset) -> None:
    from hwsparse import api

    train = T.TrainConfig(epochs=1, batch_size=128, device="cpu")
    ticket = T.TicketConfig(auto_strength=True, density=0.2, search_epochs=1)
    seen: list[tuple[str, int]] = []
    rows, runs = api.compare(
        "digits", "lenet5", density=0.2, methods="log,random", seeds="2", train=train,
        config=ticket, on_run=lambda m, s, r: seen.append((m, s)), batch_seeds=2,
    )  # fmt: skip
    assert seen == [("log", 0), ("log", 1), ("random", 0), ("random", 1)]
    for seed in (0, 1):
        lenet = lambda: build_model("lenet5", digits.input_shape, digits.num_classes)  # noqa: E731
        solo = T.run_method("log", lenet, digits, 0.2, T.TrainConfig(
            epochs=1, batch_size=128, device="cpu", seed=seed), ticket)  # fmt: skip
        run = next(r for r in runs if r["method"] == "log" and r["seed"] == seed)
        assert run["test_accuracy"] == pytest.approx(solo.test_accuracy, abs=3 / 359)
        assert run["density"] == solo.density
