"""`hwsparse tune`: an Optuna study over the regularizer at a density the user names.

No device and no budget: each trial samples a regularizer (penalty, fixed strength or the
auto-strength controller's settings, eps, mask parameterisation and temperature schedule, mask
learning rate, search epochs, rewind point; ``search_spaces/tune.yaml``), trains its ticket at
the asked density with the machinery of ``hwsparse search`` (:func:`hwsparse.search.configs`,
:func:`hwsparse.train.run_ticket`, the median pruner on ticket epochs, crash recovery) and is
scored on fp32 validation accuracy. Every trial trains with the same seed, so trials differ by
their regularizer only.

The answer, with evidence (:func:`evidence`): the best trial on validation, its regularizer
re-run for ``seeds`` seeds (the first one is the trial's own seed, so its test accuracy is the
trial's ticket evaluated once on test), the default regularizer (the package defaults with
``--strength auto``) for the same seeds, IMP at the same density on the first seed, and
Optuna's parameter importances. It is stored with the study (``RESULT_ATTR``), so ``show``
prints it again, and a resumed study with the same best trial reuses it.

A tune study records ``kind: tune`` in its config: ``hwsparse search`` refuses to resume it and
``tune`` refuses a search study.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hwsparse import masks as M
from hwsparse import search as S
from hwsparse import storage as stores
from hwsparse import train as T
from hwsparse.cost.flops import count_flops
from hwsparse.data import Dataset, load_dataset
from hwsparse.errors import InputError
from hwsparse.models import build_model
from hwsparse.preset import REGULARIZER_KNOBS, Preset
from hwsparse.recovery import recover_interrupted
from hwsparse.space import Param, SearchSpace

KIND = "tune"
RESULT_ATTR = "hwsparse_tune"
# set by --density/--density-range/--granularity, not by the space
_FROM_FLAGS = ("density", "granularity", "binarize", "threshold")
# knob -> (knob it depends on, value that makes it used)
_CONDITIONS = {
    "strength": ("strength_mode", "fixed"),
    "auto_ramp": ("strength_mode", "auto"),
    "auto_rate": ("strength_mode", "auto"),
    "temperature": ("param", "sigmoid"),
    "anneal": ("param", "sigmoid"),
}
_PARENT_DEFAULTS = {"strength_mode": "auto", "param": "projected"}


@dataclass(frozen=True)
class TuneConfig:
    """Everything that defines a tune study; stored with it and compared on resume."""

    dataset: str = "digits"
    model: str = "mlp"
    density: float | None = 0.05  # the density every trial prunes to
    density_range: tuple[float, float] | None = None  # or a range searched on a log scale
    granularity: str = "weight"
    space: dict[str, Any] | None = None  # SearchSpace.as_dict() of the tune space
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.density is None) == (self.density_range is None):
            raise InputError("give --density D or --density-range LO,HI (one of them)")
        if self.density is not None:
            _check_density(self.density, "--density")
        if self.density_range is not None:
            lo, hi = self.density_range
            _check_density(lo, "--density-range")
            _check_density(hi, "--density-range")
            if not lo < hi:
                raise InputError(f"--density-range needs LO < HI (got {lo:g},{hi:g})")
        M.MaskConfig(granularity=self.granularity)  # raises with the valid names

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "dataset": self.dataset,
            "model": self.model,
            "density": self.density,
            "density_range": list(self.density_range) if self.density_range else None,
            "granularity": self.granularity,
            "space": self.space,
        }


def _check_density(value: float, flag: str) -> None:
    if not (isinstance(value, int | float) and 0 < value < 1):
        raise InputError(f"{flag} must be in (0, 1) (got {value:g})")


def parse_range(text: str) -> tuple[float, float]:
    """``"0.01,0.1"`` -> (0.01, 0.1)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"--density-range takes LO,HI (e.g. 0.01,0.1), got {text!r}") from None
    return lo, hi


def tune_space(space: SearchSpace, config: TuneConfig, epochs: int | None) -> SearchSpace:
    """The space as tune runs it: the flags' density/granularity fixed or searched, top-k
    binarisation, ``--epochs N`` fixing both schedules (as in ``hwsparse search``)."""
    for name in [p.name for p in space.params] + [k for k, _ in space.fixed]:
        if name in _FROM_FLAGS:
            raise InputError(
                f"{space.source}: {name!r} is set by --density/--density-range/--granularity "
                "in a tune space; remove it"
            )
    space = S.apply_epochs(space, epochs)
    fixed = dict(space.fixed)
    fixed.update(binarize="density", granularity=config.granularity)
    params = space.params
    if config.density is not None:
        fixed["density"] = config.density
    else:
        assert config.density_range is not None
        lo, hi = config.density_range
        params = (*params, Param("density", low=lo, high=hi, log=True))
    fixed.setdefault("epochs", T.TrainConfig.epochs)
    return replace(space, params=params, fixed=tuple(fixed.items()))


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample the space (conditional knobs only where they matter) plus its fixed values."""
    return S.suggest(trial, space, _CONDITIONS, lambda parent, _v, _p: _PARENT_DEFAULTS[parent])


def _used(values: dict[str, Any]) -> dict[str, Any]:
    """Drop knobs a value of another knob makes unused (a fixed strength under auto, ...)."""
    out = dict(values)
    for name, (parent, needed) in _CONDITIONS.items():
        if name in out and out.get(parent, _PARENT_DEFAULTS[parent]) != needed:
            del out[name]
    return out


def default_values(values: dict[str, Any]) -> dict[str, Any]:
    """The default regularizer at the same density, granularity and schedule: the package's
    defaults with --strength auto, search phase as long as the ticket schedule."""
    epochs = int(values.get("epochs", T.TrainConfig.epochs))
    return {
        "binarize": "density",
        "density": values["density"],
        "granularity": values.get("granularity", "weight"),
        "epochs": epochs,
        "search_epochs": epochs,
    }


def default_params(space: SearchSpace) -> dict[str, Any]:
    """The default regularizer (:func:`default_values`) as knob values of a tune space."""
    fixed = dict(space.fixed)
    epochs = int(fixed.get("epochs", T.TrainConfig.epochs))
    t, m = T.TicketConfig(), M.MaskConfig()
    return {"penalty": t.penalty, "strength_mode": "auto", "auto_ramp": t.auto_ramp,
            "auto_rate": t.auto_rate, "eps_factor": 1.0, "param": m.param,
            "mask_lr": t.mask_lr, "search_epochs": epochs, "rewind_steps": 0}  # fmt: skip


def _in_space(space: SearchSpace, values: dict[str, Any]) -> dict[str, Any]:
    """The values of knobs the space searches, where they lie inside its ranges."""
    out = {}
    for p in space.params:
        v = values.get(p.name)
        if v is None:
            continue
        if p.choices is not None and v in p.choices:
            out[p.name] = v
        elif p.choices is None and p.low is not None and p.high is not None:
            if p.low <= v <= p.high and (p.step is None or (v - p.low) % p.step == 0):
                out[p.name] = v
    return out


# --- the objective -------------------------------------------------------------------------------


class Objective:
    """suggest -> ticket at the density -> fp32 validation accuracy (pruned on ticket epochs)."""

    def __init__(
        self,
        config: TuneConfig,
        space: SearchSpace,
        data: Dataset,
        device: str,
        on_epoch: T.OnEpoch | None = None,
        on_trial_start: Callable[[int], None] | None = None,
    ) -> None:
        self.config, self.space, self.data, self.device = config, space, data, device
        self.on_epoch, self.on_trial_start = on_epoch, on_trial_start

    def factory(self) -> Any:
        return build_model(self.config.model, self.data.input_shape, self.data.num_classes)

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", stores.worker_id())
        if self.on_trial_start is not None:
            self.on_trial_start(trial.number)
        values = suggest(trial, self.space)
        curve: list[float] = []
        try:
            result = run(self.factory, self.data, values, self.config.seed, self.device,
                         self._hook(trial, curve), trial)  # fmt: skip
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except InputError as exc:  # a combination this model cannot take
            trial.set_user_attr("message", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        ok = result.status == "ok" and result.model is not None
        model = result.model
        flops = count_flops(model, self.data.input_shape, result.masks) if model and ok else None
        attrs: dict[str, Any] = {
            "val_curve": curve,
            "status": result.status,
            "strength_final": result.strength_final,
            "train_seconds": round(result.seconds, 3),
            "device": result.device,
            "val_accuracy": result.val_accuracy if ok else None,
            "val_accuracy_fp32": result.val_accuracy if ok else None,
            "dtype": "fp32",  # tune has no target: the ticket as trained
            "density": result.density if ok else None,
            "flops": flops.total if flops else None,
            "dense_flops": flops.dense if flops else None,
            "epochs": result.epochs,
            "fits_budget": ok,  # no budget: every trained ticket counts (show, plot)
            "message": result.message,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return result.val_accuracy if ok else float("nan")

    def _hook(self, trial: optuna.Trial, curve: list[float]) -> T.OnEpoch:
        def hook(info: T.EpochInfo) -> None:
            if self.on_epoch is not None:
                self.on_epoch(info)
            if info.phase != "ticket":
                return
            curve.append(info.val_accuracy)
            trial.report(info.val_accuracy, len(curve) - 1)
            if trial.should_prune():
                trial.set_user_attr("val_curve", curve)
                raise optuna.TrialPruned(f"below the median at ticket epoch {len(curve)}")

        return hook


def run(
    factory: T.ModelFactory,
    data: Dataset,
    values: dict[str, Any],
    seed: int,
    device: str,
    on_epoch: T.OnEpoch | None = None,
    trial: optuna.Trial | None = None,
) -> T.RunResult:
    """One ticket of knob ``values`` (as :func:`hwsparse.search.configs` reads them)."""
    ticket_cfg, train_cfg = S.configs(values, seed, device)
    ticket_cfg = S.connected_density(ticket_cfg, factory(), trial)
    return T.run_ticket(factory, data, ticket_cfg, train_cfg, on_epoch)


# --- running a study -----------------------------------------------------------------------------


@dataclass
class TuneOutcome:
    study: optuna.Study
    storage: stores.Storage
    config: TuneConfig
    answer: dict[str, Any] | None  # None when no trial completed
    retried: list[int]
    ran: int = 0
    total: int = 0


def check_resume(study: optuna.Study, config: TuneConfig) -> None:
    """A resumed tune study must be a tune study with the same dataset, model, density, ..."""
    S.check_stored_config(study, config.to_dict(), KIND)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The most accurate completed trial on validation (ties: the earlier trial)."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("val_accuracy") is not None
    ]
    if not done:
        return None
    return max(done, key=lambda t: (float(t.user_attrs["val_accuracy"]), -t.number))


def run_tune(
    study_name: str,
    storage: stores.Storage,
    config: TuneConfig,
    space: SearchSpace,
    *,
    trials: int,
    seeds: int = 3,
    timeout: float | None = None,
    device: str = "auto",
    data_dir: str | Path | None = None,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    on_epoch: T.OnEpoch | None = None,
    on_trial_start: Callable[[int], None] | None = None,
    on_stage: Callable[[str, int], None] | None = None,
) -> TuneOutcome:
    """Create or resume a tune study until it has ``trials`` finished trials (or ``timeout``
    seconds of trials have passed), then answer with evidence (:func:`evidence`)."""
    if trials < 1:
        raise InputError(f"--trials must be >= 1 (got {trials})")
    if seeds < 1:
        raise InputError(f"--seeds must be >= 1 (got {seeds})")
    if timeout is not None and timeout <= 0:
        raise InputError(f"--timeout must be > 0 seconds (got {timeout})")
    T.resolve_device(device)
    data = load_dataset(config.dataset, data_dir)
    dense = build_model(config.model, data.input_shape, data.num_classes)

    def describe(study: optuna.Study) -> None:
        study.set_user_attr("metrics", ["val_accuracy"])
        study.set_user_attr("input_shape", list(data.input_shape))
        dense_flops = count_flops(dense, data.input_shape).total
        study.set_user_attr("dense", {"flops": dense_flops, "latency_ms": None})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val_accuracy"])
        # trial 0 is the default regularizer: the best on validation is never below it
        first = _in_space(space, default_params(space))
        if first:
            study.enqueue_trial(first, user_attrs={"default_regularizer": True})
        study.set_user_attr(S.CONFIG_ATTR, config.to_dict())  # last: the study is described

    study = stores.open_study(
        study_name,
        storage,
        [optuna.study.StudyDirection.MAXIMIZE],
        describe,
        lambda s: check_resume(s, config),
        S.CONFIG_ATTR,
    )
    retried = recover_interrupted(study, storage)
    to_run = max(0, trials - S.count_finished(study))
    study.sampler = optuna.samplers.TPESampler(
        seed=config.seed + len(study.trials), n_startup_trials=5
    )
    study.pruner = optuna.pruners.MedianPruner(
        n_startup_trials=S.PRUNE_PEERS, n_warmup_steps=S.PRUNE_WARMUP
    )
    objective = Objective(config, space, data, device, on_epoch, on_trial_start)
    ran = 0

    def count(s: optuna.Study, t: FrozenTrial) -> None:
        nonlocal ran
        ran += 1
        if on_trial is not None:
            on_trial(s, t)

    if to_run > 0:
        study.optimize(objective, n_trials=to_run, timeout=timeout, callbacks=[count],
                       catch=(), gc_after_trial=False)  # fmt: skip
    answer = evidence(study, space, data, config, seeds, device, on_epoch, on_stage)
    return TuneOutcome(study, storage, config, answer, retried, ran, S.count_finished(study))


# --- the answer ----------------------------------------------------------------------------------


def _stats(results: list[T.RunResult]) -> dict[str, Any]:
    acc = [r.test_accuracy for r in results if r.status == "ok"]
    return {
        "test_accuracy_seeds": [r.test_accuracy if r.status == "ok" else None for r in results],
        "test_accuracy_mean": statistics.fmean(acc) if acc else None,
        "test_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0 if acc else None,
    }


def _ok(x: float) -> float | None:
    return x if math.isfinite(x) else None


def evidence(
    study: optuna.Study,
    space: SearchSpace,
    data: Dataset,
    config: TuneConfig,
    seeds: int,
    device: str,
    on_epoch: T.OnEpoch | None = None,
    on_stage: Callable[[str, int], None] | None = None,
) -> dict[str, Any] | None:
    """Best on validation, evaluated once on test; its spread over ``seeds`` seeds; the default
    regularizer for the same seeds; IMP on the first seed; the importances. Stored with the
    study and reused while the best trial and the seeds stay the same."""
    best = best_trial(study)
    if best is None:
        return None
    shares = S.importance(study)
    stored = study.user_attrs.get(RESULT_ATTR) or {}
    if stored.get("best", {}).get("trial") == best.number and stored.get("seeds") == seeds:
        return {**stored, "importance": shares, "n_complete": _n_complete(study)}

    def factory() -> Any:
        return build_model(config.model, data.input_shape, data.num_classes)

    values = dict(space.fixed)
    values.update(best.params)
    values = _used(values)
    density = float(values["density"])
    epochs = int(values.get("epochs", T.TrainConfig.epochs))
    seed_list = [config.seed + i for i in range(seeds)]

    def stage(what: str, total: int) -> None:
        if on_stage is not None:
            on_stage(what, total)

    best_runs = []
    search_epochs = int(values.get("search_epochs", T.TicketConfig.search_epochs))
    for s in seed_list:
        stage(f"best (trial {best.number}), seed {s}", search_epochs + epochs)
        best_runs.append(run(factory, data, values, s, device, on_epoch))
    dvalues = default_values(values)
    default_runs = []
    for s in seed_list:
        stage(f"default regularizer, seed {s}", 2 * epochs)
        default_runs.append(run(factory, data, dvalues, s, device, on_epoch))
    train = T.TrainConfig(epochs=epochs, seed=config.seed, device=device)
    stage("IMP", T.planned_epochs("imp", density, train))
    imp = T.run_imp(factory, data, density, train, on_epoch=on_epoch)
    first = best_runs[0]  # the trial's own seed: the trial's ticket, evaluated once on test
    val = float(best.user_attrs["val_accuracy"])
    answer: dict[str, Any] = {
        "study": study.study_name,
        "dataset": config.dataset,
        "model": config.model,
        "seeds": seeds,
        "seed_list": seed_list,
        "epochs": epochs,
        "best": {
            "trial": best.number,
            "params": {k: v for k, v in values.items() if k in REGULARIZER_KNOBS},
            "val_accuracy": val,
            "test_accuracy": _ok(first.test_accuracy),
            "density": _ok(first.density),
            # the re-run on the trial's seed gave the trial's validation accuracy again
            "reproduced": abs(first.val_accuracy - val) < 1e-9,
            **_stats(best_runs),
        },
        "default": {
            "params": {
                "penalty": "log",
                "strength_mode": "auto",
                "search_epochs": dvalues["search_epochs"],
            },  # fmt: skip
            "val_accuracy": _ok(default_runs[0].val_accuracy),
            "test_accuracy": _ok(default_runs[0].test_accuracy),
            "density": _ok(default_runs[0].density),
            **_stats(default_runs),
        },
        "imp": {
            "val_accuracy": _ok(imp.val_accuracy),
            "test_accuracy": _ok(imp.test_accuracy),
            "density": _ok(imp.density),
            "epochs": imp.epochs,
            "seed": config.seed,
        },
        "density": density,
        "granularity": config.granularity,
    }
    study.set_user_attr(RESULT_ATTR, answer)
    test = answer["best"]["test_accuracy"]
    study.set_user_attr(
        S.PICK_ATTR,
        {
            "trial": best.number,
            "test_accuracy": test,
            "test_accuracy_fp32": test,
            "dtype": "fp32",
        },  # fmt: skip
    )
    return {**answer, "importance": shares, "n_complete": _n_complete(study)}


def _n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def preset_of(answer: dict[str, Any], config: TuneConfig) -> Preset:
    """The tuned regularizer as a preset (``hwsparse tune --out FILE.yaml``)."""
    best, default, imp = answer["best"], answer["default"], answer["imp"]
    evidence = {
        "study": answer["study"],
        "trial": best["trial"],
        "trials_complete": answer.get("n_complete"),
        "epochs": answer["epochs"],
        "val_accuracy": best["val_accuracy"],
        "test_accuracy": best["test_accuracy"],
        "test_accuracy_mean": best["test_accuracy_mean"],
        "test_accuracy_std": best["test_accuracy_std"],
        "seeds": answer["seeds"],
        "default_test_accuracy_mean": default["test_accuracy_mean"],
        "imp_test_accuracy": imp["test_accuracy"],
    }
    return Preset(
        dict(best["params"]),
        config.dataset,
        config.model,
        float(answer["density"]),
        config.granularity,
        evidence,
    )
