"""The Python API: one call per job of the command line, same options, same results.

>>> from hwsparse import api
>>> run = api.ticket(dataset="digits", model="mlp", density=0.05)  # doctest: +SKIP
>>> run.result.test_accuracy, run.result.density, run.flops.total  # doctest: +SKIP

Everything here is plain PyTorch plus the cost model; progress is reported through the
``on_epoch`` callback (see :class:`hwsparse.train.EpochInfo`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwsparse import accel as A
from hwsparse import train as T
from hwsparse.cost.flops import FlopCount, count_flops
from hwsparse.cost.profiles import load_profile
from hwsparse.data import Dataset, load_dataset
from hwsparse.errors import InputError, valid_names
from hwsparse.masks import check_density
from hwsparse.models import build_model
from hwsparse.penalties import PENALTIES
from hwsparse.population import Candidate, auto_slots, run_population
from hwsparse.tickets import load_ticket, save_ticket

if TYPE_CHECKING:
    from hwsparse.deploy.export import Export


@dataclass
class TicketRun:
    """One run of the method: the result, its FLOPs, and where the ticket was saved."""

    result: T.RunResult
    flops: FlopCount | None  # None when the run diverged
    dataset: str
    model: str
    input_shape: tuple[int, ...]
    num_classes: int
    out: Path | None

    def summary(self) -> dict[str, Any]:
        return {
            **self.result.summary(),
            "dataset": self.dataset,
            "model": self.model,
            "flops": self.flops.total if self.flops else None,
            "dense_flops": self.flops.dense if self.flops else None,
            "flops_convention": "fvcore: 1 multiply-add = 1 flop, batch 1",
            "out": str(self.out) if self.out else None,
        }


def _setup(
    dataset: str, model: str, data_dir: str | Path | None
) -> tuple[Dataset, T.ModelFactory]:
    data = load_dataset(dataset, data_dir)
    build_model(model, data.input_shape, data.num_classes)  # fail fast on a misfit model

    def factory() -> Any:
        return build_model(model, data.input_shape, data.num_classes)

    return data, factory


def ticket(
    dataset: str = "digits",
    model: str = "mlp",
    *,
    data_dir: str | Path | None = None,
    config: T.TicketConfig | None = None,
    train: T.TrainConfig | None = None,
    out: str | Path | None = None,
    on_epoch: T.OnEpoch | None = None,
    **overrides: Any,
) -> TicketRun:
    """Run the method once: relaxed masks + penalty -> binarise -> rewind -> train the ticket.

    ``overrides`` are TicketConfig fields (``penalty="log", strength=1e-3, density=0.05``).
    With ``out`` the ticket is saved there (see :mod:`hwsparse.tickets`).
    """
    config = replace(config or T.TicketConfig(), **overrides)
    train = train or T.TrainConfig()
    data, factory = _setup(dataset, model, data_dir)
    result = T.run_ticket(factory, data, config, train, on_epoch)
    flops = None
    saved = None
    if result.model is not None:
        flops = count_flops(result.model, data.input_shape, result.masks)
        if out is not None:
            saved = save_ticket(
                out,
                result.model,
                result.masks,
                model_name=model,
                input_shape=data.input_shape,
                num_classes=data.num_classes,
                dataset=dataset,
                method=config.penalty,
                config={"ticket": asdict(config), "train": asdict(train)},
                metrics={
                    **result.summary(),
                    "flops": flops.total,
                    "dense_flops": flops.dense,
                },
            )
    return TicketRun(result, flops, dataset, model, data.input_shape, data.num_classes, saved)


# --- compare -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareRow:
    """One method aggregated over seeds (mean and sample standard deviation)."""

    method: str
    test_accuracy_mean: float
    test_accuracy_std: float
    val_accuracy_mean: float
    density: float  # mean achieved density
    epochs_total: float  # training epochs one run of the method spent (mean over seeds)
    seconds_mean: float
    seeds: int
    diverged: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_methods(text: str | Sequence[str]) -> list[str]:
    names = [m.strip() for m in text.split(",")] if isinstance(text, str) else list(text)
    names = [m for m in names if m]
    valid = T.method_names()
    for m in names:
        if m not in valid:
            raise InputError(f"unknown method {m!r}; valid: {valid_names(valid)}")
    if not names:
        raise InputError(f"no method given; valid: {valid_names(valid)}")
    return names


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """``"3"`` means seeds 0, 1, 2; ``"0,5,7"`` lists them."""
    if not isinstance(text, str):
        return list(text)
    try:
        parts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InputError(f"--seeds takes a count (3) or a list (0,1,2), got {text!r}") from None
    if len(parts) == 1 and "," not in text:
        if parts[0] < 1:
            raise InputError(f"--seeds count must be >= 1 (got {parts[0]})")
        return list(range(parts[0]))
    if not parts:
        raise InputError("--seeds is empty")
    return parts


def compare(
    dataset: str = "digits",
    model: str = "mlp",
    *,
    density: float = 0.05,
    methods: str | Sequence[str] = "log,l1,imp,cs,magnitude,random",
    seeds: str | Sequence[int] = "3",
    data_dir: str | Path | None = None,
    train: T.TrainConfig | None = None,
    config: T.TicketConfig | None = None,
    baseline: T.BaselineConfig | None = None,
    on_epoch: T.OnEpoch | None = None,
    on_run: Callable[[str, int, T.RunResult], None] | None = None,
    batch_seeds: int | str = "auto",
) -> tuple[list[CompareRow], list[dict[str, Any]]]:
    """Run each method at ``density`` for each seed under one protocol.

    Penalty methods use ``--strength auto`` unless ``config`` says otherwise, so that every
    method lands on the same density; their seeds train together as one population of up to
    ``batch_seeds`` members (``auto``: as ``--batch-trials auto`` would batch this network on
    this device; each seed's result is its solo run's, :mod:`hwsparse.population`). Returns
    aggregated rows and the per-run summaries.
    """
    check_density(density)
    names, seed_list = parse_methods(methods), parse_seeds(seeds)
    train = train or T.TrainConfig()
    config = config or T.TicketConfig(auto_strength=True, density=density)
    data, factory = _setup(dataset, model, data_dir)
    rows, runs = [], []
    for method in names:
        together = _seeds_together(method, factory, data, density, seed_list, train, config,
                                   on_epoch, batch_seeds)  # fmt: skip
        results = []
        for i, seed in enumerate(seed_list):
            if together is not None:
                r = together[i]
            else:
                r = T.run_method(method, factory, data, density, replace(train, seed=seed),
                                 config, baseline, on_epoch)  # fmt: skip
            results.append(r)
            runs.append({**r.summary(), "seed": seed})
            if on_run is not None:
                on_run(method, seed, r)
        rows.append(_aggregate(method, results))
    return rows, runs


def _seeds_together(
    method: str,
    factory: T.ModelFactory,
    data: Dataset,
    density: float,
    seeds: list[int],
    train: T.TrainConfig,
    config: T.TicketConfig,
    on_epoch: T.OnEpoch | None,
    batch_seeds: int | str,
) -> list[T.RunResult] | None:
    """A penalty method's seeds trained as one population (hwsparse.population); None when
    they run one by one (a baseline, one seed, or fp16, whose loss scaler is shared)."""
    device = A.resolve_device(train.device)
    if (
        method not in PENALTIES
        or len(seeds) < 2
        or A.select_precision(train.precision, device).scaler
    ):
        return None
    if batch_seeds == "auto":
        batch_seeds = auto_slots(factory(), data.input_shape, device, train.batch_size)
    slots = min(len(seeds), int(batch_seeds))
    if slots < 2:  # one run at a time
        return None
    ticket = replace(config, penalty=method, density=density)
    cands = [Candidate(ticket, replace(train, seed=s), on_epoch) for s in seeds]
    out = run_population(factory, data, cands, slots)
    for r in out:
        if isinstance(r, Exception):
            raise r
    return [r for r in out if isinstance(r, T.RunResult)]


def _aggregate(method: str, results: list[T.RunResult]) -> CompareRow:
    ok = [r for r in results if r.status == "ok"]
    acc = [r.test_accuracy for r in ok]
    nan = float("nan")
    return CompareRow(
        method=method,
        test_accuracy_mean=statistics.fmean(acc) if acc else nan,
        test_accuracy_std=statistics.stdev(acc) if len(acc) > 1 else 0.0 if acc else nan,
        val_accuracy_mean=statistics.fmean(r.val_accuracy for r in ok) if ok else nan,
        density=statistics.fmean(r.density for r in ok) if ok else nan,
        epochs_total=statistics.fmean(r.epochs for r in results),
        seconds_mean=statistics.fmean(r.seconds for r in results),
        seeds=len(results),
        diverged=len(results) - len(ok),
    )


# --- export --------------------------------------------------------------------------------------


def export(
    ticket_dir: str | Path,
    target: str | Path,
    out: str | Path,
    *,
    format: str | None = None,
    dtype: str | None = None,
    data_dir: str | Path | None = None,
    trust_code: bool = False,
) -> Export:
    """Deploy a saved ticket for ``target``: compacted, at its precision, in its runtime's
    format, verified there; ``out/card.json`` says what it is (:mod:`hwsparse.deploy.export`).

    The ticket's own dataset gives the calibration inputs and the test split. A ticket of a
    ``package.module:function`` model loads only with ``trust_code=True`` (it imports that
    module; see :func:`hwsparse.tickets.load_ticket`).
    """
    from hwsparse.deploy.export import export_ticket  # its runtimes load only when exporting

    t = load_ticket(ticket_dir, trust_code=trust_code)
    data = load_dataset(str(t.meta.get("dataset", "digits")), data_dir)
    found = {
        "ticket": str(ticket_dir),
        "method": t.meta.get("method"),
        "config": t.meta.get("config"),
    }
    return export_ticket(
        t,
        load_profile(target),
        data,
        out,
        format=format,
        dtype=dtype,
        found=found,
        ticket_dir=ticket_dir,
    )
