"""Cross-validation of a study's trials over train + val, for when the validation split is small.

The search picks the most accurate feasible trial on validation. On a small split that number
is noisy: 144 validation samples (digits) give a 95 % interval of about +-5 points at 90 %
(:mod:`hwsparse.stats`). So when the split has fewer than :data:`SMALL_VAL` samples, the
pick's settings are judged again on all the labelled data that is not test, and that accuracy
is shown with the pick (n = all train + val samples):

- **Folds**: train + validation, split into stratified folds (fixed by the study's seed), as
  many as make each held-out fold the size of the validation split (:func:`fold_count`; 10
  with the built-in 10 % split). Each fold's training part then has as many samples as the
  train split the trial used, so the ticket trains as many steps as in its trial: with 5
  folds (80 %) tickets whose accuracy still rose at the end of their schedule were judged
  6-18 points below their test accuracy (digits on STM32H7, benchmarks/search/README.md).
  Every one of the ``n`` samples is judged once.
- **Per fold**: the trial's own ticket (its binary masks, so it fits the budget exactly as
  found) is retrained from its own rewind point with its own settings and seed on the other
  folds, then scored on the held-out fold at the target's precision, as validation is.
- **Result**: pooled accuracy (correct / n over the held-out folds) with its Wilson interval.
  The interval treats the n judgements as independent (they come from one training per fold,
  so it is somewhat narrow). It measures the trial's *settings* retrained, not the deployed
  weights (trained once, on the train split): a pick chosen for a lucky run tests above it.

Picking by it was measured and not kept: :func:`shortlist` (the trials inside the best one's
Wilson interval, at most :data:`SHORTLIST`) re-ranked by :func:`choose` gave a worse test
accuracy in 13 of the 19 benchmark checkpoints where it changed the pick, a better one in 5
(validation sees the luck of each trial's own training run, and that luck holds on test).
benchmarks/search keeps the comparison.

On a large validation split (>= :data:`SMALL_VAL` samples) nothing is cross-validated. Every
finished fold is stored in the study (:data:`CV_ATTR`) as it ends, so a killed pick re-done
retrains only the folds it lacked; folds and trainings are seeded, so it is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from hwsparse.data import Dataset
from hwsparse.stats import interval_or_none, wilson_interval

SMALL_VAL = 1000  # validation samples under which the pick is cross-validated
SHORTLIST = 4
CV_ATTR = "hwsparse_cv"  # study attr: {"folds": k, "seed": s, "trials": {number: {fold: [c, n]}}}


class Trial(Protocol):
    """What this module reads of a trial (an Optuna ``FrozenTrial``; optuna stays in search)."""

    @property
    def number(self) -> int: ...

    @property
    def user_attrs(self) -> dict[str, Any]: ...


T = TypeVar("T", bound=Trial)
Judge = Callable[[Any, Dataset], float]  # accuracy (0-1) of a trial on a fold's val split
Stored = dict[str, Any] | None  # what the study holds under CV_ATTR


@dataclass(frozen=True)
class Judged:
    """A trial's pooled cross-validation result: ``correct`` of ``samples`` held-out samples."""

    correct: int
    samples: int
    folds: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for ``show --json`` and the export card."""
        return {
            "cv_accuracy": self.accuracy,
            "cv_samples": self.samples,
            "cv_folds": self.folds,
            "cv_accuracy_interval": interval_or_none(self.accuracy, self.samples),
        }


def val_key(t: Trial) -> tuple[float, float, float]:
    """Validation rank: most accurate first, then lower latency, then fewer FLOPs."""
    lat = t.user_attrs.get("latency_ms")
    return (
        -float(t.user_attrs["val_accuracy"]),
        float(lat) if lat is not None else float("inf"),
        float(t.user_attrs.get("flops", float("inf"))),
    )


def needed(trials: list[T]) -> bool:
    """Whether these (feasible) trials were judged on a small validation split."""
    sizes = [t.user_attrs.get("val_samples") for t in trials]
    return bool(sizes) and all(isinstance(n, int) and 0 < n < SMALL_VAL for n in sizes)


def shortlist(feasible: list[T]) -> list[T]:
    """The trials validation cannot tell from the best (inside its 95 % Wilson interval), best
    first, at most :data:`SHORTLIST`."""
    ranked = sorted(feasible, key=val_key)
    if not ranked:
        return []
    best = ranked[0].user_attrs
    low, _ = wilson_interval(float(best["val_accuracy"]), int(best["val_samples"]))
    return [t for t in ranked if float(t.user_attrs["val_accuracy"]) >= low][:SHORTLIST]


def fold_count(n_train: int, n_val: int) -> int:
    """Folds whose held-out part is the size of the validation split (at least 2)."""
    return max(2, round((n_train + n_val) / n_val))


def folds(y: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """``k`` stratified folds of the indices of ``y`` (each class dealt round-robin after a
    seeded shuffle); sorted index tensors that partition ``range(len(y))``."""
    labels = y.cpu().numpy()
    rng = np.random.default_rng([seed, k])
    parts: list[list[int]] = [[] for _ in range(k)]
    start = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        for i, index in enumerate(members):
            parts[(start + i) % k].append(int(index))
        start = (start + len(members)) % k  # small classes do not all land in fold 0
    return [torch.tensor(sorted(p), dtype=torch.int64) for p in parts]


def fold_data(data: Dataset, held: torch.Tensor) -> Dataset:
    """Train + val of ``data`` with the ``held`` indices (into train then val) as validation and
    the rest as training. The test split is not used: it is set to the held-out fold too."""
    x = torch.cat([data.x_train, data.x_val])
    y = torch.cat([data.y_train, data.y_val])
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[held] = False
    return Dataset(
        name=f"{data.name} (cv fold)",
        x_train=x[keep],
        y_train=y[keep],
        x_val=x[held],
        y_val=y[held],
        x_test=x[held],
        y_test=y[held],
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        source=data.source,
        preprocessing=data.preprocessing,
    )


def _for(stored: Stored, k: int, seed: int) -> dict[str, dict[str, list[int]]]:
    """The fold results in ``stored`` for these folds (none when made for others)."""
    got = stored or {}
    if got.get("folds") != k or got.get("seed") != seed:
        return {}
    return {str(n): dict(r) for n, r in (got.get("trials") or {}).items()}


def judged(stored: Stored, number: int) -> Judged | None:
    """Trial ``number``'s pooled result, when all its folds are ``stored``; else None."""
    got = stored or {}
    k = got.get("folds")
    per_fold = (got.get("trials") or {}).get(str(number)) or {}
    if not isinstance(k, int) or len(per_fold) < k:
        return None
    correct = sum(int(c) for c, _ in per_fold.values())
    samples = sum(int(n) for _, n in per_fold.values())
    return Judged(correct, samples, k) if samples > 0 else None


def choose(stored: Stored, shortlisted: list[T]) -> T | None:
    """The shortlisted trial with the best pooled accuracy (ties: the better validation rank),
    or None while any of them lacks a fold (the pick then stays by validation)."""
    results = [judged(stored, t.number) for t in shortlisted]
    if not shortlisted or any(r is None for r in results):
        return None
    scores = [r.accuracy for r in results if r is not None]
    return shortlisted[max(range(len(scores)), key=lambda i: (scores[i], -i))]


def run(
    stored: Stored,
    save: Callable[[dict[str, Any]], None],
    shortlisted: list[T],
    data: Dataset,
    judge: Judge,
    seed: int,
) -> None:
    """Judge each shortlisted trial on each fold (:func:`fold_count`; ``judge`` trains and
    scores), passing the results to ``save`` as every fold ends; folds already in ``stored``
    are not trained again."""
    k = fold_count(len(data.y_train), len(data.y_val))
    y = torch.cat([data.y_train, data.y_val])
    parts = folds(y, k, seed)
    done = _for(stored, k, seed)
    for t in shortlisted:
        mine = done.setdefault(str(t.number), {})
        for f, held in enumerate(parts):
            if str(f) in mine:
                continue
            acc = judge(t, fold_data(data, held))
            mine[str(f)] = [round(acc * len(held)), len(held)]
            save({"folds": k, "seed": seed, "trials": done})
