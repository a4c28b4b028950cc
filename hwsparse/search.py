"""The Optuna glue: search space -> suggestions -> one ticket per trial -> cost on a device.

Storages, worker identity and crash recovery live in :mod:`hwsparse.storage`.

Objectives. ``budget`` mode maximises validation accuracy; the budget enters as constraints
(``trial.set_constraint``, relative excess value / limit - 1, feasible when <= 0) and Optuna's
MedianPruner stops hopeless trials on their validation accuracy per ticket epoch (never in the
search phase, where a candidate that will not fit looks as good as any). ``pareto`` mode
minimises latency (when the target's profile can estimate it) and MFLOPs while maximising
accuracy; Optuna cannot prune multi-objective trials, so we raise ``TrialPruned`` ourselves when
a ticket's accuracy at an epoch is below the median of the completed tickets that cost no more
at the same epoch (it is then dominated where it stands).

Budget-aware binarisation (:mod:`hwsparse.cost.budget`) cuts a candidate that misses the budget
until it fits; one that fits at no density skips ticket training (its trial completes infeasible,
with its constraint values, so the sampler learns from it).

Picking uses validation accuracy only (on a split under 1,000 samples the pick's settings are
also cross-validated over train + val, for a less noisy accuracy: :mod:`hwsparse.crossval`); the
picked ticket is then evaluated once on the test split, at the target's precision, and that
number is stored with the study.
"""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from hwsparse import accel as A
from hwsparse import artifact_store as AS
from hwsparse import crossval as CV
from hwsparse import masks as M
from hwsparse import storage as stores
from hwsparse import train as T
from hwsparse.cost.budget import BudgetCutter, check_floors, floors, largest_fitting_density
from hwsparse.cost.estimate import Budget, CostReport, estimate
from hwsparse.cost.profiles import DeviceProfile, load_profile
from hwsparse.data import Dataset, load_dataset
from hwsparse.deploy.quantize import accuracy, calibration_batch, simulate
from hwsparse.errors import InputError
from hwsparse.models import build_model
from hwsparse.penalties import get_penalty
from hwsparse.population import MAX_SLOTS, Candidate, Population, auto_slots
from hwsparse.preset import REGULARIZER_KNOBS, fits_param
from hwsparse.recovery import (
    mark_worker,
    recover_interrupted,
    release_worker_lock,
    retried_numbers,
)
from hwsparse.space import SearchSpace
from hwsparse.storage import Storage
from hwsparse.tickets import META_FILE, WEIGHTS_FILE, load_ticket, save_ticket
from hwsparse.workers import SEED_STRIDE, worker_index

STOP_AFTER_SAME_ERRORS = 3  # identical errors in a row, no trial trained: stop the study
OTHERS_POLL_S = 0.5  # how often a worker with nothing left to start looks at the others' trials
CONFIG_ATTR = "hwsparse_config"
PICK_ATTR = "hwsparse_pick"


class NoFailedTrialLog(logging.Filter):
    """run_search re-raises every failure of a trial (``catch=()``) to its caller, who reports
    it (the CLI in one line); Optuna's own log of it (with a traceback) would say it twice.
    The CLI installs it on ``optuna.study._optimize``; the library changes no logging."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Trial ") and " failed with " in msg)


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a study; stored with it and compared on resume."""

    dataset: str = "digits"
    model: str = "mlp"
    target: str = "raspberry-pi-4"
    budget: Budget = field(default_factory=Budget)
    objective: str = "budget"  # budget | pareto
    space: dict[str, Any] = field(default_factory=dict)  # SearchSpace.as_dict()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in ("budget", "pareto"):
            raise InputError(f"unknown --objective {self.objective!r}; valid: budget, pareto")

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "target": self.target,
            "budget": {k: v for k, v in self.budget.__dict__.items() if v is not None},
            "objective": self.objective,
            "space": self.space,
        }


def fix_knobs(space: SearchSpace, **values: Any) -> SearchSpace:
    """``space`` with these knobs fixed to these values (no longer searched)."""
    keep = tuple(p for p in space.params if p.name not in values)
    return replace(space, params=keep, fixed=tuple({**dict(space.fixed), **values}.items()))


def apply_epochs(space: SearchSpace, epochs: int | None) -> SearchSpace:
    """``--epochs N`` fixes both the search phase and the ticket schedule to N epochs."""
    if epochs is None:
        return space
    if epochs < 1:
        raise InputError(f"--epochs must be >= 1 (got {epochs})")
    return fix_knobs(space, epochs=epochs, search_epochs=epochs)


def apply_batch_size(space: SearchSpace, batch_size: int | None) -> SearchSpace:
    """``--batch-size N`` fixes the training batch size (samples per step) of every trial."""
    if batch_size is None:
        return space
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1 (got {batch_size})")
    return fix_knobs(space, batch_size=batch_size)


# --- suggestions -> configs ----------------------------------------------------------------------

# knob -> (knob it depends on, value that makes it used)
_CONDITIONS = {
    "density": ("binarize", "density"),
    "strength": ("binarize", "threshold"),
    "threshold": ("binarize", "threshold"),
    "temperature": ("param", "sigmoid"),
    "anneal": ("param", "sigmoid"),
}


ParentDefault = Callable[[str, dict[str, Any], dict[str, Any]], Any]


def suggest(
    trial: optuna.Trial,
    space: SearchSpace,
    conditions: dict[str, tuple[str, Any]] | None = None,
    parent_default: ParentDefault | None = None,
) -> dict[str, Any]:
    """Sample the space's params (conditional ones only where they matter) plus fixed values.

    ``conditions`` maps a knob to (the knob it depends on, the value that makes it used);
    ``parent_default(parent, values, params)`` is a parent's value when the space leaves it
    unset. Both default to the device search's (``hwsparse tune`` passes its own).
    """
    conditions = _CONDITIONS if conditions is None else conditions
    parent_default = parent_default or _default_parent
    values: dict[str, Any] = dict(space.fixed)
    params = {p.name: p for p in space.params}
    # parents first, so conditional knobs see their values
    order = sorted(params, key=lambda n: (n in conditions, list(params).index(n)))
    for name in order:
        cond = conditions.get(name)
        if cond is not None:
            parent, needed = cond
            if values.get(parent, parent_default(parent, values, params)) != needed:
                continue
        p = params[name]
        if p.choices is not None:
            values[name] = trial.suggest_categorical(name, list(p.choices))
        elif p.is_int:
            assert p.low is not None and p.high is not None
            values[name] = trial.suggest_int(
                name, int(p.low), int(p.high), step=p.step or 1, log=p.log
            )
        else:
            assert p.low is not None and p.high is not None
            values[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
    return values


def _default_parent(parent: str, values: dict[str, Any], params: dict[str, Any]) -> Any:
    if parent == "binarize":
        return "density" if "density" in params or "density" in values else "threshold"
    return "projected"


def configs(
    values: dict[str, Any],
    seed: int,
    device: str,
    precision: str = "auto",
    deterministic: bool = False,
) -> tuple[T.TicketConfig, T.TrainConfig]:
    """Turn sampled knob values into the engine's configs (unset knobs keep their defaults);
    ``precision`` and ``deterministic`` are the run's, not searched."""
    mask_fields = {"param", "granularity", "mask_first", "mask_last", "temperature", "anneal"}
    mask = M.MaskConfig(**{k: v for k, v in values.items() if k in mask_fields})
    penalty = values.get("penalty", "log")
    binarize = values.get("binarize", "density" if "density" in values else "threshold")
    ticket_kw: dict[str, Any] = {
        k: values[k]
        for k in ("mask_lr", "search_epochs", "threshold", "auto_ramp", "auto_rate")
        if k in values
    }
    eps = get_penalty(penalty).default_eps * values.get("eps_factor", 1.0)
    if binarize == "density":
        # strength_mode fixed (hwsparse tune, presets): a fixed lambda, top-k to the density
        auto = values.get("strength_mode", "auto") == "auto"
        ticket_kw.update(density=values.get("density", 0.1), auto_strength=auto)
        if "strength" in values:  # the fixed lambda, or auto's start value
            ticket_kw.update(strength=values["strength"])
    else:
        ticket_kw.update(strength=values.get("strength", T.TicketConfig.strength))
    ticket = T.TicketConfig(penalty=penalty, eps=eps, mask=mask, **ticket_kw)
    train_kw = {
        k: values[k] for k in ("epochs", "lr", "rewind_steps", "batch_size") if k in values
    }
    train = T.TrainConfig(
        seed=seed, device=device, precision=precision, deterministic=deterministic, **train_kw
    )
    return ticket, train


def connected_density(
    ticket: T.TicketConfig, model: nn.Module, trial: optuna.Trial | None = None
) -> T.TicketConfig:
    """``ticket`` with a density below the smallest connected ticket's (:func:`masks.min_density`:
    channel masks leave the classifier whole and keep a channel per layer) raised just above
    it; the trial records the density it ran at (``density_raised_to``)."""
    floor = M.min_density(model, ticket.mask)
    if ticket.density is None or ticket.density > floor:
        return ticket
    ticket = replace(ticket, density=min(1.0, floor * 1.01))
    if trial is not None:
        trial.set_user_attr("density_raised_to", ticket.density)
    return ticket


# --- the objective -------------------------------------------------------------------------------


class Objective:
    """The per-trial work: suggest -> ticket (budget-aware) -> cost -> constraints -> attrs."""

    def __init__(
        self,
        config: SearchConfig,
        space: SearchSpace,
        data: Dataset,
        profile: DeviceProfile,
        storage: Storage,
        device: str,
        metrics: list[str],
        on_epoch: T.OnEpoch | None = None,
        on_trial_start: Callable[[int], None] | None = None,
        precision: str = "auto",
        deterministic: bool = False,
    ) -> None:
        self.config, self.space, self.data = config, space, data
        self.precision, self.deterministic = precision, deterministic
        self.profile, self.storage, self.device = profile, storage, device
        self.metrics = metrics
        self.on_epoch = on_epoch
        self.on_trial_start = on_trial_start
        self.store = AS.open_store(storage.artifacts)  # the study's location (run_search)
        self.dtype = profile.engine().dtype  # the precision the target runs the ticket at
        self.calibration = calibration_batch(data.x_train)
        self.last_error: str | None = None  # the InputError of the trials just before
        self.same_errors = 0  # how many trials in a row failed with it
        self.worked = False  # a trial of this run got as far as training
        self.systematic: str | None = None  # set when every trial fails the same way
        self.batched = False  # trials run in populations (run_batched), not study.optimize

    def factory(self) -> nn.Module:
        return build_model(self.config.model, self.data.input_shape, self.data.num_classes)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        """One trial trained alone (``--batch-trials 1``, and any trial a batch cannot take)."""
        job = self.prepare(trial)
        with self.failures(trial):
            result = T.run_ticket(
                self.factory, self.data, job.ticket, job.train, job.on_epoch, job.select
            )
        return self.finish(trial, job, result)

    def prepare(self, trial: optuna.Trial) -> Candidate:
        """Suggest the trial's knobs and build its training job (the trial is the ``tag``);
        a combination this model cannot take prunes the trial."""
        mark_worker(trial, self.storage)
        if self.on_trial_start is not None:
            self.on_trial_start(trial.number)
        values = suggest(trial, self.space)
        ticket_cfg, train_cfg = configs(
            values,
            self.config.seed + trial.number,
            self.device,
            self.precision,
            self.deterministic,
        )
        cutter = BudgetCutter(
            self.profile, self.config.budget, self.data.input_shape, self.factory
        )
        curve: list[float] = []
        with self.failures(trial):
            ticket_cfg = connected_density(ticket_cfg, self.factory(), trial)
        hook = self._epoch_hook(trial, curve, cutter)
        return Candidate(ticket_cfg, train_cfg, hook, cutter, tag=(trial, curve))

    @contextmanager
    def failures(self, trial: optuna.Trial) -> Iterator[None]:
        """Ctrl-C marks the trial interrupted (it runs again on resume); an InputError (a
        combination of the space this model cannot take) prunes it, with the reason."""
        try:
            yield
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except InputError as exc:
            reason = str(exc)
            trial.set_user_attr("message", reason)
            trial.set_user_attr("pruned_reason", reason)
            self._same_error(trial, reason)
            raise optuna.TrialPruned(reason) from None

    def finish(
        self, trial: optuna.Trial, job: Candidate, result: T.RunResult
    ) -> float | tuple[float, ...]:
        """Cost the trained ticket, set the trial's attributes, upload it; the trial's values."""
        ticket_cfg, train_cfg = job.ticket, job.train
        curve = job.tag[1]
        cutter = job.select
        assert isinstance(cutter, BudgetCutter)
        self.worked, self.last_error = True, None
        trial.set_user_attr("val_curve", curve)
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("strength_final", result.strength_final)  # lambda at the end
        # the cut ran inside run_ticket: its estimates count as costing, not training
        trial.set_user_attr("train_seconds", round(result.seconds - cutter.cut.seconds, 3))
        trial.set_user_attr("device", result.device)
        if result.status == "diverged" or result.model is None:
            trial.set_user_attr("message", result.message)
            return self._failed()
        t0 = time.perf_counter()
        # The cut already costed these masks (a cost depends on the masks, not the weights);
        # a candidate it skipped is costed here.
        report = cutter.report or estimate(
            result.model, self.data.input_shape, self.profile, result.masks
        )
        violations = self.config.budget.violations(report)
        cost_s = time.perf_counter() - t0 + cutter.cut.seconds
        # Scored as it will run: the (exactly compactable) ticket at the target's precision.
        deployed = simulate(result.model, self.dtype, self.calibration)
        val_accuracy = accuracy(deployed, self.data.x_val.cpu(), self.data.y_val.cpu())
        for key, value in violations.items():
            trial.set_constraint(key, value)
        fits = all(v <= 0 for v in violations.values()) and result.status == "ok"
        attrs: dict[str, Any] = {
            "val_accuracy": val_accuracy,
            "val_accuracy_fp32": result.val_accuracy,
            "val_samples": len(self.data.y_val),  # its binomial interval: hwsparse.stats
            "dtype": self.dtype,
            "density": result.density,
            "flops": report.flops,
            "dense_flops": report.dense_flops,
            "latency_ms": report.latency_ms,
            "latency_ms_low": report.latency_ms_low,
            "latency_ms_high": report.latency_ms_high,
            "weight_bytes": report.weight_bytes,
            "peak_activation_bytes": report.peak_activation_bytes,
            "ram_bytes": report.ram_bytes,
            "cost_seconds": round(cost_s, 3),
            "epochs": result.epochs,
            "fits_budget": fits,
            "violations": violations,
            "cut_from_density": cutter.cut.from_density,
            "cut_to_density": cutter.cut.to_density,
            "message": result.message,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        self._upload(trial, result, ticket_cfg, train_cfg, report)
        return self._values(val_accuracy, report)

    def _same_error(self, trial: optuna.Trial, reason: str) -> None:
        """Count identical errors in a row; STOP_AFTER_SAME_ERRORS of them before any trial of
        this run trained is a mistake every trial hits, not a bad combination: stop the study
        (run_search then raises it)."""
        self.same_errors = self.same_errors + 1 if reason == self.last_error else 1
        self.last_error = reason
        if self.same_errors >= STOP_AFTER_SAME_ERRORS and not self.worked:
            self.systematic = reason
            if not self.batched:  # the batched loop checks `systematic` itself
                trial.study.stop()

    def _failed(self) -> float | tuple[float, ...]:
        if self.config.objective == "budget":
            return float("nan")
        return tuple(float("nan") for _ in self.metrics)

    def _values(self, accuracy: float, report: CostReport) -> float | tuple[float, ...]:
        if self.config.objective == "budget":
            return accuracy
        out = [accuracy]
        if "latency_ms" in self.metrics:
            assert report.latency_ms is not None
            out.append(report.latency_ms)
        out.append(report.flops / 1e6)
        return tuple(out)

    def _epoch_hook(
        self, trial: optuna.Trial, curve: list[float], cutter: BudgetCutter
    ) -> T.OnEpoch:
        """Early stopping on the ticket phase only.

        The search phase is not judged: there a candidate that will not fit the budget looks
        as good as any, and a pruner would stop the feasible ones for being smaller. Ticket
        epochs come after the budget cut, so trials are compared as the tickets they are.
        """
        peers: list[FrozenTrial] = []

        def hook(info: T.EpochInfo) -> None:
            if self.on_epoch is not None:
                self.on_epoch(info)
            if info.phase != "ticket":
                return
            curve.append(info.val_accuracy)
            step = len(curve) - 1
            if self.config.objective == "budget":
                trial.report(info.val_accuracy, step)
                if may_prune(step, info.epochs) and trial.should_prune():
                    trial.set_user_attr("val_curve", curve)
                    reason = f"below the median at ticket epoch {step + 1}"
                    trial.set_user_attr("pruned_reason", reason)
                    self.worked, self.last_error = True, None  # it trained: no mistake
                    raise optuna.TrialPruned(reason)
                return
            if not may_prune(step, info.epochs):
                return
            if not peers:
                peers.extend(_no_costlier(trial.study, cutter.report))
            if _below_median(peers, curve, step):
                trial.set_user_attr("val_curve", curve)
                reason = f"dominated at ticket epoch {step + 1}"
                trial.set_user_attr("pruned_reason", reason)
                self.worked, self.last_error = True, None
                raise optuna.TrialPruned(reason)

        return hook

    def _upload(
        self,
        trial: optuna.Trial,
        result: T.RunResult,
        ticket_cfg: T.TicketConfig,
        train_cfg: T.TrainConfig,
        report: CostReport,
    ) -> None:
        assert result.model is not None
        with tempfile.TemporaryDirectory() as tmp:
            folder = save_ticket(
                Path(tmp) / "ticket",
                result.model,
                result.masks,
                model_name=self.config.model,
                input_shape=self.data.input_shape,
                num_classes=self.data.num_classes,
                dataset=self.config.dataset,
                method=ticket_cfg.penalty,
                config={"ticket": asdict(ticket_cfg), "train": asdict(train_cfg)},
                metrics={**result.summary(), "test_accuracy": None, **report.to_dict()},
                study_trial=trial.number,
            )
            for name in (META_FILE, WEIGHTS_FILE):
                try:
                    artifact = AS.upload(self.store, folder / name, trial)
                except OSError as exc:  # a full disk: say where (copying leaves no filename)
                    where = exc.filename or str(self.storage.artifacts)
                    raise OSError(exc.errno, exc.strerror, where) from None
                trial.set_user_attr(f"artifact:{name}", artifact)


PRUNE_WARMUP = 3  # hwsparse tune's MedianPruner: never prune before this many epochs
PRUNE_PEERS = 5  # never prune with fewer completed trials to compare with
PRUNE_FROM = 0.5  # a search trial runs this share of its ticket epochs before it may be pruned


def may_prune(step: int, epochs: int) -> bool:
    """Whether a search trial may be pruned after ticket epoch ``step + 1`` of ``epochs``.

    Not before :data:`PRUNE_FROM` of the schedule (a fixed 3 epochs was most of a 5-epoch
    schedule, or a third of a 10-epoch one): early accuracy ranks tickets poorly while their
    curves still rise. Never after the last epoch: the training is then done, and pruning would
    save nothing but discard a finished result the sampler and the pick could use (on MNIST-1D
    at 5 + 5 epochs, trials were pruned at epoch 5 of 5; benchmarks/search/README.md).
    """
    return math.ceil(PRUNE_FROM * epochs) <= step < epochs - 1


def _no_costlier(study: optuna.Study, report: CostReport | None) -> list[FrozenTrial]:
    """Completed trials whose ticket costs no more than ``report`` (latency and FLOPs)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if report is None:
        return done
    lat = report.latency_ms if report.latency_ms is not None else math.inf
    return [
        t
        for t in done
        if t.user_attrs.get("flops", math.inf) <= report.flops
        and (t.user_attrs.get("latency_ms") or 0.0) <= lat
    ]


def _below_median(peers: list[FrozenTrial], curve: list[float], step: int) -> bool:
    """Pareto-mode pruning: below the median of no-costlier peers at this ticket epoch, the
    trial is dominated where it stands."""
    values = [
        t.user_attrs["val_curve"][step]
        for t in peers
        if len(t.user_attrs.get("val_curve", [])) > step
    ]
    return len(values) >= PRUNE_PEERS and curve[step] < statistics.median(values)


# --- running a study -----------------------------------------------------------------------------


@dataclass
class SearchOutcome:
    study: optuna.Study
    storage: Storage
    config: SearchConfig
    pick: FrozenTrial | None
    test_accuracy: float | None
    closest: FrozenTrial | None
    retried: list[int]
    ran: int = 0  # trials this call finished
    total: int = 0  # finished trials of the study afterwards (see count_finished)


def count_finished(study: optuna.Study) -> int:
    """Finished trials (complete, pruned, failed), not counting a failed trial that is queued
    to run again (``retry_of``): its re-run counts instead."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(
        t.state in done and not (t.state == TrialState.FAIL and t.number in retried)
        for t in trials
    )


def _storage_failure(exc: AssertionError) -> BaseException:
    """The OSError under Optuna's ``assert False, "Should not reach."``, else ``exc``.

    When a trial's end state cannot be written (a full disk), Optuna's ``_run_trial`` reads
    the trial back in its ``finally``, finds it still RUNNING and asserts, hiding the OSError
    that says where and why; the CLI turns that OSError into its one line."""
    cause: BaseException | None = exc.__context__
    while cause is not None:
        if isinstance(cause, OSError):
            return cause
        cause = cause.__context__
    return exc


def others_finish(study: optuna.Study, storage: Storage, total: int) -> bool:
    """Whether this worker should stop because the study reaches ``total`` finished trials
    with the ones other workers are running. While it would reach it only with those, wait:
    a trial of a dead worker is failed and queued again (:func:`recover_interrupted`), and
    this worker then runs it instead of leaving it."""
    while True:
        finished = count_finished(study)
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if finished >= total:
            return True
        if finished + running < total:
            return False
        recover_interrupted(study, storage)
        time.sleep(OTHERS_POLL_S)


def check_resume(study: optuna.Study, config: SearchConfig) -> None:
    """A resumed study must have the same dataset, model, target, budget, objective, space."""
    check_stored_config(study, config.to_dict(), "search")


def check_stored_config(study: optuna.Study, now: dict[str, Any], kind: str) -> None:
    """A resumed study must be a ``hwsparse KIND`` study whose stored config equals ``now``."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        raise InputError(
            f"study {study.study_name!r} was not made by hwsparse {kind}; use another --study"
        )
    made = stored.get("kind", "search")
    if made != kind:
        raise InputError(
            f"study {study.study_name!r} is a `hwsparse {made}` study, not hwsparse {kind}; "
            "use another --study"
        )
    diff = [k for k in now if stored.get(k) != now[k]]
    if diff:
        k = diff[0]
        raise InputError(
            f"study {study.study_name!r} exists with a different {k}: "
            f"stored {stored.get(k)!r}, asked {now[k]!r}; resume with the same options or "
            "use a new --study"
        )


def directions_for(
    config: SearchConfig, latency_known: bool
) -> tuple[list[StudyDirection], list[str]]:
    up, down = StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE
    if config.objective == "budget":
        return [up], ["val_accuracy"]
    if latency_known:
        return [up, down, down], ["val_accuracy", "latency_ms", "mflops"]
    return [up, down], ["val_accuracy", "mflops"]


SAMPLERS = ("tpe", "tpe-group", "gp", "random")
PRUNERS = ("median", "hyperband", "none")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The study's sampler, by name (``tpe`` is the default; benchmarks/search compares them).

    - ``tpe``: Optuna's TPE (multivariate over the knobs every trial has, the conditional ones
      independently), 5 random startup trials (Optuna's default, 10, is too late for short
      studies);
    - ``tpe-group``: the same with ``group=True``: conditional knobs modelled jointly within
      the groups of trials that have them;
    - ``gp``: Optuna's GPSampler (Gaussian process, constraint-aware);
    - ``random``: RandomSampler, the baseline.
    Samplers are not stored with a study: each run rebuilds one, seeded by how far the study
    is, so a resumed run or a second worker does not replay the first one's startup trials.
    """
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    if name == "tpe-group":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=5, multivariate=True, group=True
            )
    if name == "gp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise InputError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """How a budget study stops trials early, on validation accuracy per ticket epoch. Every
    pruner is asked only at the epochs :func:`may_prune` allows (the objective asks there).

    - ``median`` (default): below the median of the completed trials at the same epoch, with
      ``PRUNE_PEERS`` completed trials;
    - ``hyperband``: Optuna's HyperbandPruner (successive halving over brackets: many
      candidates get few epochs, the best get all; rungs from epoch ``PRUNE_WARMUP``);
    - ``none``: every trial trains to the end.
    """
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_PEERS, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=PRUNE_WARMUP)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise InputError(f"unknown pruner {name!r}; valid: {', '.join(PRUNERS)}")


def parse_batch_trials(batch_trials: int | str, device: str, precision: str) -> int | None:
    """``--batch-trials K|auto`` checked: K, or None for auto."""
    fp16 = A.select_precision(precision, A.resolve_device(device)).scaler
    if batch_trials == "auto":
        return 1 if fp16 else None  # fp16's loss scaler is shared: one trial at a time
    if isinstance(batch_trials, str) and not batch_trials.isdigit():
        raise InputError(f"--batch-trials must be a number >= 1 or auto (got {batch_trials!r})")
    k = int(batch_trials)
    if not 1 <= k <= MAX_SLOTS:
        raise InputError(f"--batch-trials must be in 1..{MAX_SLOTS} or auto (got {k})")
    if k > 1 and fp16:
        raise InputError("--precision fp16 trains one trial at a time: use --batch-trials 1")
    return k


def batch_slots(
    batch_trials: int | str, config: SearchConfig, data: Dataset, device: str, precision: str
) -> int:
    """How many trials train together: ``--batch-trials``, or auto's choice for the model."""
    k = parse_batch_trials(batch_trials, device, precision)
    if k is not None:
        return k
    model = build_model(config.model, data.input_shape, data.num_classes)
    return auto_slots(model, data.input_shape, A.resolve_device(device))


def run_batched(
    study: optuna.Study,
    objective: Objective,
    n_trials: int,
    timeout: float | None,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]],
    slots: int,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Optuna ask/tell over a population: ask for trials while a slot is free, train the
    members an epoch at a time, tell each trial's result as its member leaves (finished,
    pruned, diverged). A trial the population cannot take (another batch size) trains alone.
    Like ``study.optimize(catch=())``, a failure fails its trial and is raised; no trial is
    asked for once ``stop()`` says so (the study has its trials, with other workers')."""
    started = time.monotonic()
    asked = 0
    pop: Population | None = None
    slots = min(slots, n_trials)  # no empty slots to carry through the study

    def tell(trial: optuna.Trial, **kw: Any) -> None:
        frozen = study.tell(trial, **kw)
        for cb in callbacks:
            cb(study, frozen)

    def want() -> bool:
        late = timeout is not None and time.monotonic() - started > timeout
        return asked < n_trials and not late and objective.systematic is None and not stop()

    def settle(trial: optuna.Trial, job: Candidate, outcome: T.RunResult | Exception) -> None:
        if isinstance(outcome, InputError):  # pruned with its reason, as a solo trial is
            try:
                with objective.failures(trial):
                    raise outcome
            except optuna.TrialPruned as exc:
                outcome = exc
        if isinstance(outcome, optuna.TrialPruned):
            tell(trial, state=TrialState.PRUNED)
            return
        if isinstance(outcome, Exception):
            tell(trial, state=TrialState.FAIL)
            raise outcome
        try:
            values = objective.finish(trial, job, outcome)
        except Exception:
            tell(trial, state=TrialState.FAIL)
            raise
        tell(trial, values=values)

    def alone(job: Candidate) -> T.RunResult | Exception:
        try:
            return T.run_ticket(objective.factory, objective.data, job.ticket, job.train,
                                job.on_epoch, job.select)  # fmt: skip
        except Exception as exc:
            return exc

    running: list[optuna.Trial] = []
    try:
        while True:
            while want() and (pop is None or pop.free()):
                trial = study.ask()
                asked += 1
                try:
                    job = objective.prepare(trial)
                except optuna.TrialPruned:
                    tell(trial, state=TrialState.PRUNED)
                    continue
                if pop is None:
                    pop = Population(objective.factory, objective.data, slots=slots,
                                     batch_size=job.train.batch_size, device=objective.device,
                                     precision=objective.precision,
                                     deterministic=objective.deterministic)  # fmt: skip
                running.append(trial)
                if not pop.fits(job):
                    result = alone(job)
                    running.remove(trial)
                    settle(trial, job, result)
                    continue
                pop.join(job)
                objective.worked, objective.last_error = True, None  # it trains: no mistake
            if pop is None or not pop.active():
                return
            for gone in pop.run_epoch():
                trial = gone.candidate.tag[0]
                running.remove(trial)
                outcome = gone.result if gone.result is not None else gone.error
                assert outcome is not None
                settle(trial, gone.candidate, outcome)
    except KeyboardInterrupt:
        for trial in running:  # as study.optimize does: failed, marked to run again
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
        raise


def check_device(device: str, precision: str) -> None:
    """Check ``device`` and ``precision`` for it: bad values raise InputError before any study
    is opened or trained. (Several GPUs: one worker process each, :mod:`hwsparse.workers`.)"""
    A.select_precision(precision, A.resolve_device(device))


def run_search(
    study_name: str,
    storage: Storage,
    config: SearchConfig,
    space: SearchSpace,
    *,
    trials: int,
    timeout: float | None = None,
    device: str = "auto",
    data_dir: str | Path | None = None,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    on_epoch: T.OnEpoch | None = None,
    sampler: str = "tpe",
    in_total: bool = False,
    on_trial_start: Callable[[int], None] | None = None,
    enqueue: list[dict[str, Any]] | None = None,
    design: bool = True,
    pruner: str = "median",
    precision: str = "auto",
    deterministic: bool = False,
    batch_trials: int | str = "auto",
    pick_best: bool = True,
    redraws: bool = True,
) -> SearchOutcome:
    """Create or resume a study and run ``trials`` more trials (or until ``timeout`` s).

    With ``in_total``, ``trials`` is what the study should have in all: only the missing ones
    run (none when it has them; :func:`count_finished` counts). ``sampler`` and ``pruner``:
    see :func:`make_sampler` and :func:`make_pruner` (the defaults are what benchmarks/search
    chose). ``on_trial_start(number)`` is called as each trial begins, ``on_epoch`` after
    each of its training epochs. ``enqueue``: params of the first trials (``--warm-start``),
    queued when the study has no trial yet; without it, ``design`` queues
    :func:`initial_design` instead.
    ``precision`` (``hwsparse.accel.PRECISIONS``) and ``deterministic`` apply to every trial.
    ``batch_trials``:
    how many trials train together in one population (:mod:`hwsparse.population`), an int
    or ``auto``; 1 trains them one at a time through ``study.optimize``.
    Several workers may run it on one study at once (``in_total`` is then the study's total:
    a worker starts no trial once the finished and running ones reach it). ``pick_best=False``
    leaves the final pick to the caller (the parent of ``--workers``).
    ``redraws``: with the budget objective, the last ``REDRAW_SHARE`` of the trials (of the
    run, or of the study's total with ``in_total``) train the best settings so far again with
    new seeds (:func:`redraw`), each queued as the trial before it ends; one queued when the
    run stops (a timeout, Ctrl-C) runs first when the study resumes.
    """
    if trials < 1:
        raise InputError(f"--trials must be >= 1 (got {trials})")
    if timeout is not None and timeout <= 0:
        raise InputError(f"--timeout must be > 0 seconds (got {timeout})")
    check_device(device, precision)
    profile = load_profile(config.target)
    data = load_dataset(config.dataset, data_dir)
    dense = build_model(config.model, data.input_shape, data.num_classes)
    report = estimate(dense, data.input_shape, profile)
    # a budget no network of this model can meet is refused before any training
    check_floors(config.budget, floors(profile, dense, data.input_shape, model_name=config.model))
    config.budget.values(report)  # raises when the profile cannot judge a set limit
    directions, metrics = directions_for(config, report.latency_ms is not None)
    first: list[dict[str, Any]] = []  # the first trials of a new study
    if study_name not in optuna.study.get_all_study_names(storage=storage.backend):
        AS.check_writable(AS.for_new_study(storage))  # before the study depends on it
        factory = lambda: build_model(config.model, data.input_shape, data.num_classes)  # noqa: E731
        first = enqueue or (
            initial_design(config, space, profile, factory, data.input_shape) if design else []
        )

    def describe(study: optuna.Study) -> None:
        """Run by the worker that creates the study, before any other can use it."""
        study.set_user_attr("metrics", metrics)
        study.set_user_attr(AS.ATTR, AS.for_new_study(storage))
        study.set_user_attr("input_shape", list(data.input_shape))
        study.set_user_attr("dense", {"flops": report.flops, "latency_ms": report.latency_ms})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metrics)  # shown by optuna-dashboard and the optuna CLI
        # the first trials (computed before: the description stays short), once, as many as
        # the study will have (none left waiting)
        for params in first[:trials]:
            study.enqueue_trial(params, user_attrs={"warm_start": True})
        study.set_user_attr(CONFIG_ATTR, config.to_dict())  # last: the study is described

    def check(study: optuna.Study) -> None:
        check_resume(study, config)
        AS.check_writable(AS.of_study(study, storage))

    study = stores.open_study(study_name, storage, directions, describe, check, CONFIG_ATTR)
    storage = replace(storage, artifacts=AS.of_study(study, storage))
    retried = recover_interrupted(study, storage)
    before = count_finished(study)
    to_run = max(0, trials - before) if in_total else trials
    # a second worker must not replay the first one's startup trials
    study.sampler = make_sampler(
        sampler, config.seed + len(study.trials) + SEED_STRIDE * worker_index()
    )
    if config.objective == "budget":
        study.pruner = make_pruner(pruner)
    objective = Objective(
        config, space, data, profile, storage, device, metrics, on_epoch, on_trial_start,
        precision, deterministic,
    )  # fmt: skip
    callbacks = [lambda s, t: on_trial(s, t)] if on_trial is not None else []
    ran = 0

    enough = [False]  # the study has its trials (with other workers'): start no more

    def count(s: optuna.Study, t: FrozenTrial) -> None:
        nonlocal ran
        ran += 1
        if in_total and others_finish(s, storage, trials):
            enough[0] = True
            s.stop()

    n_redraws = (
        math.floor(REDRAW_SHARE * trials) if redraws and config.objective == "budget" else 0
    )

    def queue_redraw(s: optuna.Study, t: FrozenTrial) -> None:
        """Before each of the last ``n_redraws`` trials: queue a redraw (one at a time, after
        any queued trial: the design's, a re-run's). ``left``: trials still to start (a
        population, or other workers, may be running some)."""
        left = trials - count_finished(s) if in_total else to_run - ran
        left -= len(s.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if enough[0] or not 0 < left <= n_redraws:
            return
        if s.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return
        best = redraw(s)
        if best is not None:
            s.enqueue_trial(best.params, user_attrs={"redraw_of": best.number})

    slots = batch_slots(batch_trials, config, data, device, precision)
    try:
        if to_run > 0 and slots > 1:
            objective.batched = True
            run_batched(
                study,
                objective,
                to_run,
                timeout,
                [count, queue_redraw, *callbacks],
                slots,
                lambda: enough[0],
            )
        elif to_run > 0:
            study.optimize(
                objective,
                n_trials=to_run,
                timeout=timeout,
                callbacks=[count, queue_redraw, *callbacks],
                catch=(),
                gc_after_trial=False,
            )
    except AssertionError as exc:
        raise _storage_failure(exc) from None
    finally:
        if storage.journal is not None:
            release_worker_lock(storage.journal)
    if to_run > 0:
        if objective.systematic is not None:
            raise InputError(
                f"stopped study {study_name!r}: its last {objective.same_errors} trials failed "
                f"with the same error, so every trial would: {objective.systematic}"
            )
    dtype = profile.engine().dtype
    judge = fold_judge(study, storage, config, space, dtype, device, precision, deterministic)
    pick, test_acc = (
        pick_and_test(study, storage, data, dtype, judge, config.seed)
        if pick_best
        else (None, None)
    )
    return SearchOutcome(
        study,
        storage,
        config,
        pick,
        test_acc,
        None if pick else closest(study),
        retried,
        ran=ran,
        total=count_finished(study),
    )


def importance(study: optuna.Study) -> dict[str, float]:
    """Which knobs mattered for validation accuracy: Optuna's parameter importances (its default
    evaluator, PED-ANOVA, over completed trials), as shares summing to 1, most important first.
    Empty with fewer than 4 completed trials, where the estimate is noise.

    PED-ANOVA ranks the parameters that lead to *low* values of a custom target, so the target
    is minus the accuracy."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 4:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its note on custom targets: handled as above
            imp = optuna.importance.get_param_importances(
                study, target=lambda t: -float(t.user_attrs.get("val_accuracy") or 0.0)
            )
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}
    total = sum(imp.values())
    if not total > 0:
        return {}
    return {k: round(v / total, 4) for k, v in imp.items()}


DESIGN_FRACTIONS = (1.0, 0.5, 0.25)  # first trials: these fractions of the largest density


REDRAW_SHARE = 0.25  # the last quarter of a budget study's trials: its best settings, new seeds
REDRAW_TOP = 3  # how many of the best distinct settings share those trials


def redraw(study: optuna.Study) -> FrozenTrial | None:
    """The trial whose settings (params) the study draws again next: of its ``REDRAW_TOP``
    best distinct settings (feasible trials ranked as :func:`pick_among` ranks them; each
    setting by its best trial), the one trained the fewest times so far (ties: the better
    one); None while no trial is feasible.

    A trial's seed is the study's seed + its number, so a redraw trains the same settings from
    another initialisation and batch order. Within one setting, tickets differ by several
    points from seed to seed, and validation tracks test (correlation 0.65-0.96 within a
    setting; benchmarks/search/README.md, "Redraws"): drawing the best settings again is a
    search for the luckier ticket, which the pick by validation then finds.
    """
    trials = study.get_trials(deepcopy=False)
    top: list[FrozenTrial] = []
    for t in sorted((t for t in trials if feasible(t)), key=CV.val_key):
        if all(t.params != best.params for best in top):
            top.append(t)
        if len(top) == REDRAW_TOP:
            break
    if not top:
        return None
    draws = [sum(t.params == best.params for t in trials) for best in top]
    return top[draws.index(min(draws))]


def initial_design(
    config: SearchConfig,
    space: SearchSpace,
    profile: DeviceProfile,
    factory: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
) -> list[dict[str, Any]]:
    """Known-good first trials: the default regularizer (:class:`hwsparse.train.TicketConfig`'s
    penalty and mask lr, the penalty's default eps, projected masks), for each granularity the
    space offers, at :data:`DESIGN_FRACTIONS` of the largest density that fits the budget
    (:func:`hwsparse.cost.budget.largest_fitting_density`), clipped to the space's density range.

    Ordered densest first, the granularities taking turns, so that a short run still tries
    both. Only knobs the space searches are set (the sampler fills in the rest); a granularity
    that fits at no density gets no point. Empty when the space does not search the density.
    """
    params = {p.name: p for p in space.params}
    density = params.get("density")
    if density is None or density.low is None or density.high is None:
        return []
    default = {
        "binarize": "density",
        "penalty": T.TicketConfig.penalty,
        "eps_factor": 1.0,
        "mask_lr": T.TicketConfig.mask_lr,
        "param": M.MaskConfig.param,
    }
    regularizer = {k: v for k, v in default.items() if k in params and fits_param(params[k], v)}
    searched = params.get("granularity")
    fixed = dict(space.fixed).get("granularity", M.MaskConfig.granularity)
    kinds = list(searched.choices) if searched and searched.choices else [fixed]
    tops: dict[str, float | None] = {}
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        for kind in kinds:
            try:
                tops[kind] = largest_fitting_density(
                    profile, config.budget, input_shape, factory, kind
                )
            except InputError:  # the model cannot take these masks: its trials will say so
                tops[kind] = None
    design: list[dict[str, Any]] = []
    for fraction in DESIGN_FRACTIONS:  # densest first, granularities taking turns
        for kind, top in tops.items():
            if top is None:
                continue
            point = {**regularizer, "density": min(max(top * fraction, density.low),
                                                   density.high)}  # fmt: skip
            if searched is not None:
                point["granularity"] = kind
            if point not in design:
                design.append(point)
    return design


WARM_START_TRIALS = 3  # distinct regularizer settings a finished study seeds a new one with


def warm_start_from(
    source: optuna.Study, config: SearchConfig, space: SearchSpace
) -> list[dict[str, Any]]:
    """The regularizer settings of ``source`` to try first in a new study of ``config``.

    ``source`` is a finished ``hwsparse search`` or ``hwsparse tune`` study on the same dataset
    and model (refused otherwise). Its trained, completed trials (for a search: those that fit
    its budget first), best validation accuracy first, give up to :data:`WARM_START_TRIALS`
    distinct settings of the regularizer knobs (:data:`hwsparse.preset.REGULARIZER_KNOBS`)
    that the new space searches, each inside the new space's range. Density and granularity
    are not carried over: the new target's budget decides them.
    """
    made = source.user_attrs.get(CONFIG_ATTR) or {}
    for key in ("dataset", "model"):
        if made.get(key) != getattr(config, key):
            raise InputError(
                f"--warm-start study {source.study_name!r} is on {key} {made.get(key)!r}, this "
                f"search on {getattr(config, key)!r}; warm-start from a study on the same "
                "dataset and model"
            )
    done = [
        t
        for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("val_accuracy") is not None and t.user_attrs.get("status") != "skipped"
    ]
    tune = made.get("kind") == "tune"  # no budget: every trial counts as fitting
    done.sort(key=lambda t: (not (tune or feasible(t)), -float(t.user_attrs["val_accuracy"])))
    params = {p.name: p for p in space.params}
    firsts: list[dict[str, Any]] = []
    for t in done:
        values = {
            k: v
            for k, v in t.params.items()
            if k in REGULARIZER_KNOBS and k in params and fits_param(params[k], v)
        }
        if values and values not in firsts:
            firsts.append(values)
        if len(firsts) == WARM_START_TRIALS:
            break
    if not firsts:
        raise InputError(
            f"--warm-start study {source.study_name!r} has no completed trial with regularizer "
            "settings this search space searches; run it longer or warm-start from another"
        )
    return firsts


# --- picking -------------------------------------------------------------------------------------


def feasible(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and bool(t.user_attrs.get("fits_budget"))


def pick(study: optuna.Study) -> FrozenTrial | None:
    """The study's pick among its feasible trials (:func:`pick_among`)."""
    return pick_among([t for t in study.get_trials(deepcopy=False) if feasible(t)])


def pick_among(candidates: list[FrozenTrial]) -> FrozenTrial | None:
    """The most accurate of ``candidates`` on validation (ties: lower latency, fewer FLOPs);
    not the cross-validated best, which was measured and not kept (:mod:`hwsparse.crossval`)."""
    if not candidates:
        return None
    return min(candidates, key=CV.val_key)


def fold_judge(
    study: optuna.Study,
    storage: Storage,
    config: SearchConfig,
    space: SearchSpace,
    dtype: str,
    device: str = "auto",
    precision: str = "auto",
    deterministic: bool = False,
) -> CV.Judge:
    """How :mod:`hwsparse.crossval` judges a trial on a fold: its ticket's binary masks,
    retrained from its rewind point with its own settings and seed on the fold's training
    part (as its trial trained them; the rewind point is re-made on the fold: at rewind step 0
    it is the seeded initialisation, which one search epoch makes as well as all of them),
    scored on the held-out part at the target's ``dtype``."""

    def judge(t: FrozenTrial, fold: Dataset) -> float:
        values = {**dict(space.fixed), **t.params}
        ticket_cfg, train_cfg = configs(
            values, config.seed + t.number, device, precision, deterministic
        )
        if t.user_attrs.get("density_raised_to") is not None:
            ticket_cfg = replace(ticket_cfg, density=float(t.user_attrs["density_raised_to"]))
        if train_cfg.rewind_steps == 0:
            ticket_cfg = replace(ticket_cfg, search_epochs=1)
        with tempfile.TemporaryDirectory() as tmp:
            found = load_ticket(AS.fetch_ticket(study, t, storage, Path(tmp)), model=config.model)

        def select(model: nn.Module, _: M.Masks) -> M.Masks:
            where = next(model.parameters()).device
            return {k: v.to(where) for k, v in found.masks.items()}

        def factory() -> nn.Module:
            return build_model(config.model, fold.input_shape, fold.num_classes)

        result = T.run_ticket(factory, fold, ticket_cfg, train_cfg, select=select)
        if result.model is None:  # diverged on this fold: none of it judged right
            return 0.0
        deployed = simulate(result.model, dtype, calibration_batch(fold.x_train))
        return accuracy(deployed, fold.x_val.cpu(), fold.y_val.cpu())

    return judge


def closest(study: optuna.Study) -> FrozenTrial | None:
    """When nothing fits: the completed trial whose worst budget excess is smallest."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("violations")
    ]
    if not done:
        return None
    return min(done, key=lambda t: max(t.user_attrs["violations"].values()))


def pick_and_test(
    study: optuna.Study,
    storage: Storage,
    data: Dataset,
    dtype: str,
    judge: CV.Judge | None = None,
    seed: int = 0,
) -> tuple[FrozenTrial | None, float | None]:
    """Pick the trial and evaluate its ticket once on the test split, at the target's ``dtype``
    (simulated, :mod:`hwsparse.deploy.quantize`) and in fp32; both are stored with the study.
    With ``judge`` (:func:`fold_judge`) and a small validation split, the pick's settings are
    also cross-validated over train + val (folds seeded by ``seed``; :mod:`hwsparse.crossval`),
    shown with the pick as its accuracy on n = all train + val samples."""
    candidates = [t for t in study.get_trials(deepcopy=False) if feasible(t)]
    chosen = pick_among(candidates)
    if chosen is not None and judge is not None and CV.needed(candidates):
        save = lambda v: study.set_user_attr(CV.CV_ATTR, v)  # noqa: E731
        CV.run(study.user_attrs.get(CV.CV_ATTR), save, [chosen], data, judge, seed)
    if chosen is None:
        return None, None
    stored = study.user_attrs.get(PICK_ATTR) or {}
    if stored.get("trial") == chosen.number:
        return chosen, float(stored["test_accuracy"])
    with tempfile.TemporaryDirectory() as tmp:
        # the study's model is the one this caller named (run_search checked it on resume)
        model = str((study.user_attrs.get(CONFIG_ATTR) or {}).get("model", ""))
        ticket = load_ticket(AS.fetch_ticket(study, chosen, storage, Path(tmp)), model=model)
    x, y = data.x_test.cpu(), data.y_test.cpu()
    deployed = simulate(ticket.model, dtype, calibration_batch(data.x_train))
    # fp32 through the routine that measured val during training (same batching)
    acc, fp32 = accuracy(deployed, x, y), A.evaluate(ticket.model, x, y)
    study.set_user_attr(
        PICK_ATTR,
        {
            "trial": chosen.number,
            "test_accuracy": acc,
            "test_accuracy_fp32": fp32,
            "test_samples": len(y),
            "dtype": dtype,
        },
    )
    return chosen, acc
