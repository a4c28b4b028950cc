"""How far one study scales: workers on this machine, storage overhead, sampler time.

Three measurements, each appending one JSON line to ``--out``:

- ``throughput``: ``hwsparse search --workers W`` for W = 1 and 2 in one run (digits / mlp,
  default space and target, ``--trials K``, fresh folder each), trials per hour by wall time of
  the whole command and by the trials' own timestamps (first start to last finish).
- ``overhead``: a trial's storage work without training: ask, the default space's suggestions,
  the user attributes a real trial records (taken from one real trial), its constraints, tell;
  RandomSampler, so the sampler costs ~nothing. Per trial, median of ``--n`` trials, for an
  in-memory storage (the floor), a journal file and PostgreSQL (``--pg-url``) with the
  heartbeat on, as ``hwsparse search`` opens it.
- ``sampler``: a sampler's time for one new trial (ask + the default space's suggestions)
  with 100, 1,000 and 5,000 finished trials in the study (in memory, so only the sampler is
  timed), for TPE as ``hwsparse search`` builds it and RandomSampler, single-objective
  (``--objective budget``) and three objectives (``pareto``); plus the time to read all
  trials back from PostgreSQL at those sizes, which every worker does once per trial.

    flock /tmp/hwsparse-timing.lock python benchmarks/scale/run.py throughput --out R.jsonl
    python benchmarks/scale/run.py overhead --pg-url URL --out R.jsonl
    python benchmarks/scale/run.py sampler --pg-url URL --out R.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hwsparse import search
from hwsparse import storage as stores
from hwsparse.space import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def throughput(trials: int, threads: int) -> list[dict[str, Any]]:
    rows = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "hwsparse", "search", "--workers", str(workers),
                   "--trials", str(trials), "--threads", str(threads), "--device", "cpu",
                   "--json"]  # fmt: skip
            load = _load()
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
            wall = time.perf_counter() - t0
            journal = Path(tmp) / "runs" / "hwsparse.journal"
            study = stores.load_study("default", stores.open_storage(journal))
            done = [t for t in study.trials if t.state.is_finished()]
            span = (
                max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
            ).total_seconds()
            rows.append({
                "kind": "throughput", "workers": workers, "trials": len(done),
                "threads_total": threads, "wall_s": round(wall, 2),
                "trials_per_hour_wall": round(3600 * len(done) / wall),
                "trials_span_s": round(span, 2),
                "trials_per_hour_span": round(3600 * len(done) / span),
                "load_before": load, "load_after": _load(),
            })  # fmt: skip
            print(rows[-1], flush=True)
    one, two = rows
    for key in ("trials_per_hour_wall", "trials_per_hour_span"):
        two[f"speedup_{key}"] = round(two[key] / one[key], 2)
    return rows


def _real_trial_attrs() -> tuple[dict[str, Any], dict[str, Any]]:
    """User attributes and params of one real trial (digits / mlp, 1 epoch)."""
    with tempfile.TemporaryDirectory() as tmp:
        space = search.apply_epochs(load_space("default"), 1)
        config = search.SearchConfig(space=space.as_dict(), target="raspberry-pi-4")
        storage = stores.open_storage(Path(tmp) / "a.journal", create=True)
        out = search.run_search("a", storage, config, space, trials=1, device="cpu")
        t = out.study.trials[0]
        return dict(t.user_attrs), dict(t.params)


def _storage_trial(attrs: dict[str, Any]) -> Any:
    space = load_space("default")

    def objective(trial: optuna.Trial) -> float:
        search.suggest(trial, space)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial.set_constraint("latency_ms", -0.1)  # as a budget trial records its excess
        trial.set_constraint("weight_kb", -0.2)
        return random.random()

    return objective


def overhead(n: int, pg_url: str | None) -> list[dict[str, Any]]:
    attrs, _ = _real_trial_attrs()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        backends: dict[str, Any] = {
            "in-memory": optuna.storages.InMemoryStorage(),
            "journal": stores.open_storage(Path(tmp) / "o.journal", create=True).backend,
        }
        if pg_url:
            backends["postgresql"] = stores.open_storage(pg_url, create=True).backend
        for name, backend in backends.items():
            study = optuna.create_study(
                study_name=f"overhead-{time.time_ns()}", storage=backend,
                sampler=optuna.samplers.RandomSampler(seed=0),
            )  # fmt: skip
            objective = _storage_trial(attrs)
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                study.optimize(objective, n_trials=1)
                times.append(time.perf_counter() - t0)
            rows.append({"kind": "overhead", "storage": name, "n": n, "user_attrs": len(attrs),
                         "ms_per_trial_median": round(1000 * statistics.median(times), 2),
                         "ms_per_trial_p90": round(1000 * sorted(times)[int(0.9 * n)], 2),
                         "load": _load()})  # fmt: skip
            print(rows[-1], flush=True)
    floor = rows[0]["ms_per_trial_median"]
    for row in rows:
        row["overhead_ms_vs_in_memory"] = round(row["ms_per_trial_median"] - floor, 2)
    return rows


SIZES = (100, 1000, 5000)


def _history(n: int, objectives: int, space: Any) -> optuna.Study:
    """A study with ``n`` finished trials over the default space (random values)."""
    directions = ["maximize"] + ["minimize"] * (objectives - 1)
    study = optuna.create_study(directions=directions,
                                sampler=optuna.samplers.RandomSampler(seed=1))  # fmt: skip
    rng = random.Random(0)
    for _ in range(n):
        trial = study.ask()
        search.suggest(trial, space)
        values = [rng.random() for _ in range(objectives)]
        study.tell(trial, values if objectives > 1 else values[0])
    return study


def sampler(repeats: int, pg_url: str | None) -> list[dict[str, Any]]:
    space = load_space("default")
    rows = []
    for objectives, mode in ((1, "budget"), (3, "pareto")):
        study = _history(0, objectives, space)
        for size in SIZES:
            grow = _history(size - len(study.trials), objectives, space)
            study.add_trials(grow.trials)
            for name in ("tpe", "random"):
                study.sampler = (
                    optuna.samplers.TPESampler(seed=0, n_startup_trials=5)
                    if name == "tpe"
                    else optuna.samplers.RandomSampler(seed=0)
                )
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    trial = study.ask()
                    search.suggest(trial, space)
                    times.append(time.perf_counter() - t0)
                    study.tell(trial, state=TrialState.FAIL)  # not finished-COMPLETE: N stays
                rows.append({"kind": "sampler", "sampler": name, "objective": mode,
                             "finished_trials": size, "repeats": repeats,
                             "ms_per_trial_median": round(1000 * statistics.median(times), 1),
                             "load": _load()})  # fmt: skip
                print(rows[-1], flush=True)
    if pg_url:
        rows += _pg_reads(pg_url, space)
    return rows


def _pg_reads(pg_url: str, space: Any) -> list[dict[str, Any]]:
    """Time to read every trial of a study back from PostgreSQL, what a worker does before
    each trial it starts (the sampler and the pruner see the whole history)."""
    attrs, _ = _real_trial_attrs()
    backend = stores.open_storage(pg_url, create=True).backend
    study = optuna.create_study(study_name=f"reads-{time.time_ns()}", storage=backend)
    rows = []
    for size in SIZES:
        grow = _history(size - len(study.trials), 1, space)
        for t in grow.trials:
            t.user_attrs.update(attrs)  # as heavy as real trials
        study.add_trials(grow.trials)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            study.get_trials(deepcopy=False)
            times.append(time.perf_counter() - t0)
        rows.append({"kind": "pg_read_all", "finished_trials": size,
                     "ms_median": round(1000 * statistics.median(times), 1),
                     "load": _load()})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("throughput", "overhead", "sampler"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pg-url", default=None)
    args = ap.parse_args()
    if args.what == "throughput":
        rows = throughput(args.trials, args.threads)
    elif args.what == "overhead":
        rows = overhead(args.n, args.pg_url)
    else:
        rows = sampler(args.repeats, args.pg_url)
    with args.out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
