"""Cross-validation on a small validation split (hwsparse.crossval): folds, the shortlist rule
measured in benchmarks/search, the pick's cross-validated accuracy in a study (stored,
resumable, shown), and when a search may prune (search.may_prune)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, create_trial
from typer.testing import CliRunner

from hwsparse import crossval, search
from hwsparse import storage as stores
from hwsparse.cli import app
from hwsparse.cost.estimate import Budget
from hwsparse.data import Dataset, load_dataset
from hwsparse.space import load_space
from hwsparse.stats import wilson_interval

runner = CliRunner()


def _trial(number: int, acc: float, n: int = 144, latency: float = 1.0) -> FrozenTrial:
    t = create_trial(
        params={"density": 0.1},
        distributions={"density": FloatDistribution(0.01, 0.5)},
        value=acc,
        user_attrs={"val_accuracy": acc, "val_samples": n, "latency_ms": latency, "flops": 1},
    )
    t.number = number
    return t


def test_folds_partition_the_samples_stratified_and_seeded() -> None:
    y = torch.tensor([0] * 23 + [1] * 11 + [2] * 7)
    parts = crossval.folds(y, 5, seed=3)
    assert sorted(torch.cat(parts).tolist()) == list(range(len(y)))  # each sample once
    for label in (0, 1, 2):
        per_fold = [int((y[p] == label).sum()) for p in parts]
        assert max(per_fold) - min(per_fold) <= 1  # every class spread evenly
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    again = crossval.folds(y, 5, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))
    other = crossval.folds(y, 5, seed=4)
    assert not all(torch.equal(a, b) for a, b in zip(parts, other, strict=True))


def test_fold_data_trains_on_the_rest_of_train_and_val_and_never_sees_test() -> None:
    data = load_dataset("digits")
    y = torch.cat([data.y_train, data.y_val])
    held = crossval.folds(y, 5, seed=0)[2]
    fold = crossval.fold_data(data, held)
    assert len(fold.y_train) + len(fold.y_val) == len(data.y_train) + len(data.y_val)
    assert torch.equal(fold.y_val, y[held]) and torch.equal(fold.x_test, fold.x_val)
    x = torch.cat([data.x_train, data.x_val])
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[held] = False
    assert torch.equal(fold.x_train, x[rest]) and torch.equal(fold.x_val, x[held])
    assert fold.input_shape == data.input_shape and fold.num_classes == data.num_classes


def test_small_validation_splits_only_are_cross_validated() -> None:
    assert crossval.needed([_trial(0, 0.9, n=144), _trial(1, 0.8, n=144)])
    assert not crossval.needed([_trial(0, 0.9, n=crossval.SMALL_VAL)])
    assert not crossval.needed([])
    unknown = create_trial(value=0.5, user_attrs={"val_accuracy": 0.5})  # an older study
    assert not crossval.needed([unknown])


def test_the_shortlist_is_what_validation_cannot_tell_from_the_best() -> None:
    low, _ = wilson_interval(0.9, 144)  # about 0.84
    accs = [0.9, 0.6, low + 0.001, low - 0.001, 0.88, 0.89, 0.895]
    trials = [_trial(i, a) for i, a in enumerate(accs)]
    short = crossval.shortlist(trials)
    assert [t.number for t in short] == [0, 6, 5, 4][: crossval.SHORTLIST]
    assert all(t.user_attrs["val_accuracy"] >= low for t in short)
    few = crossval.shortlist([_trial(0, 0.9), _trial(1, 0.6), _trial(2, low + 0.001)])
    assert [t.number for t in few] == [0, 2]
    # same accuracy: the lower latency ranks first, as in the pick by validation
    tie = crossval.shortlist([_trial(0, 0.9, latency=2.0), _trial(1, 0.9, latency=1.0)])
    assert [t.number for t in tie] == [1, 0]


def _stored(results: dict[int, list[tuple[int, int]]], k: int = 2) -> dict[str, Any]:
    trials = {str(n): {str(f): list(r) for f, r in enumerate(rs)} for n, rs in results.items()}
    return {"folds": k, "seed": 0, "trials": trials}


def test_choose_waits_for_every_fold_then_takes_the_best_pooled_accuracy() -> None:
    short = [_trial(0, 0.9), _trial(1, 0.88)]
    assert crossval.choose(None, short) is None
    partial = _stored({0: [(50, 100), (50, 100)], 1: [(90, 100)]})
    assert crossval.choose(partial, short) is None  # trial 1 lacks a fold: not decided
    done = _stored({0: [(50, 100), (50, 100)], 1: [(90, 100), (80, 100)]})
    chosen = crossval.choose(done, short)
    assert chosen is not None and chosen.number == 1
    judged = crossval.judged(done, 1)
    assert judged is not None and (judged.correct, judged.samples) == (170, 200)
    assert judged.as_dict()["cv_accuracy_interval"] == list(wilson_interval(0.85, 200))
    tie = _stored({0: [(80, 100), (90, 100)], 1: [(90, 100), (80, 100)]})
    chosen = crossval.choose(tie, short)
    assert chosen is not None and chosen.number == 0  # a tie: the better validation rank


def _label_judge(calls: list[tuple[int, int]]) -> crossval.Judge:
    """A judge without training: the share of the fold's val labels equal to trial % 10."""

    def judge(t: Any, fold: Dataset) -> float:
        calls.append((t.number, len(fold.y_val)))
        return float((fold.y_val == t.number % 10).float().mean())

    return judge


def test_each_fold_trains_on_as_many_samples_as_the_train_split() -> None:
    data = load_dataset("digits")
    k = crossval.fold_count(len(data.y_train), len(data.y_val))
    assert k == 10  # the val split is 10 % of train + val
    parts = crossval.folds(torch.cat([data.y_train, data.y_val]), k, seed=0)
    sizes = {len(crossval.fold_data(data, p).y_train) for p in parts}
    assert all(abs(n - len(data.y_train)) <= 1 for n in sizes)
    assert crossval.fold_count(900, 100) == 10 and crossval.fold_count(100, 900) == 2


def test_run_stores_every_fold_and_a_killed_run_redoes_only_the_missing_ones() -> None:
    data = load_dataset("digits")
    folds = crossval.fold_count(len(data.y_train), len(data.y_val))
    short = [_trial(3, 0.9), _trial(7, 0.88)]
    whole: list[dict[str, Any]] = []
    crossval.run(None, whole.append, short, data, _label_judge([]), seed=0)
    expected = whole[-1]
    assert len(whole) == 2 * folds  # saved after each fold
    n = len(data.y_train) + len(data.y_val)
    for number in (3, 7):
        judged = crossval.judged(expected, number)
        assert judged is not None and judged.samples == n
        labels = torch.cat([data.y_train, data.y_val])
        assert judged.correct == int((labels == number).sum())  # every sample judged once

    saved: list[dict[str, Any]] = []
    calls: list[tuple[int, int]] = []

    def killed(t: Any, fold: Dataset) -> float:
        if len(calls) == 6:
            raise KeyboardInterrupt
        return _label_judge(calls)(t, fold)

    with pytest.raises(KeyboardInterrupt):
        crossval.run(None, saved.append, short, data, killed, seed=0)
    assert len(saved) == 6
    calls.clear()
    crossval.run(saved[-1], saved.append, short, data, _label_judge(calls), seed=0)
    assert len(calls) == 2 * folds - 6  # only the folds it lacked
    assert saved[-1] == expected  # and the same result as the run that was not killed
    calls.clear()
    crossval.run(saved[-1], saved.append, short, data, _label_judge(calls), seed=1)
    assert len(calls) == 2 * folds  # other folds: judged again


def test_a_digits_search_cross_validates_its_pick_and_shows_it(tmp_path: Path) -> None:
    space = search.apply_epochs(load_space("default"), 1)
    config = search.SearchConfig(
        dataset="digits", model="mlp", target="raspberry-pi-4",
        budget=Budget(latency_ms=10.0), space=space.as_dict(),
    )  # fmt: skip
    storage = stores.open_storage(tmp_path / "s.journal", create=True)
    outcome = search.run_search("s", storage, config, space, trials=4, device="cpu", design=False)
    study = outcome.study
    feasible = [t for t in study.trials if search.feasible(t)]
    assert outcome.pick is not None
    assert outcome.pick.number == min(feasible, key=crossval.val_key).number  # by validation
    stored = study.user_attrs[crossval.CV_ATTR]
    assert list(stored["trials"]) == [str(outcome.pick.number)]  # only the pick is judged
    data = load_dataset("digits")
    n = len(data.y_train) + len(data.y_val)
    judged = crossval.judged(stored, outcome.pick.number)
    assert judged is not None and judged.samples == n and 0.0 < judged.accuracy <= 1.0
    assert judged.folds == 10

    # a pick killed during cross-validation: re-done, it retrains only the missing fold
    trimmed = json.loads(json.dumps(stored))
    del trimmed["trials"][str(outcome.pick.number)]["4"]  # one of its folds
    study.set_user_attr(crossval.CV_ATTR, trimmed)
    calls: list[int] = []
    inner = search.fold_judge(study, outcome.storage, config, space, "fp32", "cpu")

    def judge(t: Any, fold: Dataset) -> float:
        calls.append(t.number)
        return inner(t, fold)

    chosen, _ = search.pick_and_test(study, outcome.storage, data, "fp32", judge, config.seed)
    assert calls == [outcome.pick.number]
    assert study.user_attrs[crossval.CV_ATTR] == stored  # seeded: the same fold result again
    assert chosen is not None and chosen.number == outcome.pick.number

    base = ["--storage", str(tmp_path / "s.journal")]
    shown = runner.invoke(app, ["show", "s", *base], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "cross-validated accuracy" in shown.output and f"n={n}" in shown.output
    payload = json.loads(runner.invoke(app, ["show", "s", *base, "--json"]).stdout)
    assert payload["picked"]["cv_samples"] == n
    assert payload["picked"]["cv_accuracy"] == pytest.approx(judged.accuracy)


@pytest.mark.parametrize(
    ("epochs", "steps"),
    [(10, [5, 6, 7, 8]), (5, [3]), (4, [2]), (2, []), (1, [])],
)
def test_a_trial_may_be_pruned_from_half_its_schedule_and_never_after_its_last_epoch(
    epochs: int, steps: list[int]
) -> None:
    assert [s for s in range(epochs) if search.may_prune(s, epochs)] == steps
