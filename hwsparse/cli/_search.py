"""CLI commands of the search: search, studies, show, plot, export."""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import optuna
import typer
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from hwsparse import api, crossval, recovery, report, search
from hwsparse import artifact_store as artifacts
from hwsparse import storage as stores
from hwsparse import train as T
from hwsparse import workers as parallel
from hwsparse.cli import app
from hwsparse.cli._common import (
    AsJson,
    BatchSize,
    DataDir,
    Dataset,
    Deterministic,
    Device,
    Model,
    Precision,
    StudyBars,
    Threads,
    TrustCode,
    command_line,
    err,
    live_progress,
    out,
    print_json,
    set_threads,
    user_errors,
)
from hwsparse.cost.estimate import Budget
from hwsparse.cost.profiles import PROFILE_DIR, load_profile
from hwsparse.errors import InputError
from hwsparse.models import require_trust
from hwsparse.preset import apply_to_space, load_preset
from hwsparse.space import load_space

# The main job with no options: digits, LeNet-300-100, a Cortex-M4 microcontroller.
DEFAULT_TARGET = "nrf52840"
DEFAULT_BUDGET = Budget(latency_ms=1.0, weight_kb=16.0)  # = nrf52840.yaml's default_budget

Study = Annotated[str, typer.Option(help="Study name; the same name resumes it.")]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        help="Journal file path (default runs/hwsparse.journal under $HWSPARSE_HOME or the "
        "current folder), sqlite:///FILE, or postgresql+psycopg://... for several machines."
    ),
]
ArtifactsOpt = Annotated[
    str | None,
    typer.Option(
        "--artifacts",
        help="Where tickets go: a folder (shared by the machines) or s3://BUCKET/PREFIX. "
        "Default: beside a journal or SQLite file; needed when a study on a database server "
        "is created. The study records it: joining workers, show and export need no flag.",
    ),
]


def _budget(
    target: str | None,
    latency_ms: float | None,
    flash_kb: float | None,
    ram_kb: float | None,
    max_mflops: float | None,
) -> tuple[str, Budget, str]:
    """Target, budget and where the budget came from (the flags, or the profile's default)."""
    given = (latency_ms, flash_kb, ram_kb, max_mflops)
    for name, value in zip(("latency-ms", "flash-kb", "ram-kb", "max-mflops"), given, strict=True):
        if value is not None and not value > 0:
            raise InputError(f"--{name} must be > 0 (got {value})")
    tgt = target or DEFAULT_TARGET
    if any(v is not None for v in given):
        budget = Budget(
            latency_ms=latency_ms, weight_kb=flash_kb, ram_kb=ram_kb, mflops=max_mflops
        )
        return tgt, budget, "the command line (it replaces the profile's default budget)"
    profile = load_profile(tgt)
    if profile.default_budget is None:
        flags = "--latency-ms, --flash-kb, --ram-kb or --max-mflops"
        return tgt, Budget(), f"{profile.id} has no default_budget: give {flags}"
    shipped = profile.path is not None and Path(profile.path).parent == PROFILE_DIR
    path = f"device_profiles/{Path(str(profile.path)).name}" if shipped else profile.path
    where = f"{path}; see hwsparse devices {profile.id}"
    budget = Budget(**profile.default_budget.limits())
    return tgt, budget, f"the default budget of {profile.id} ({where})"


def _budget_text(budget: Budget) -> str:
    units = {"latency_ms": "ms", "weight_kb": "KiB", "ram_kb": "KiB", "activation_kb": "KiB",
             "mflops": "MFLOPs"}  # fmt: skip
    names = {"latency_ms": "latency", "weight_kb": "weights", "ram_kb": "RAM",
             "activation_kb": "activations", "mflops": "FLOPs"}  # fmt: skip
    limits = [(k, v) for k, v in budget.__dict__.items() if v is not None]
    return ", ".join(f"{names[k]} <= {v:g} {units[k]}" for k, v in limits) or "none"


@app.command("search")
def search_cmd(
    study: Study = "default",
    storage: StorageOpt = None,
    dataset: Dataset = "digits",
    data_dir: DataDir = None,
    model: Model = "mlp",
    space: Annotated[
        str, typer.Option(help="Search space: default, wide, or a path to a YAML file.")
    ] = "default",
    target: Annotated[
        str | None,
        typer.Option(
            help=f"Device profile id or YAML path (default {DEFAULT_TARGET}). With no budget "
            "flag the budget is the target profile's default_budget (hwsparse devices ID); "
            "any budget flag replaces it."
        ),
    ] = None,
    latency_ms: Annotated[
        float | None, typer.Option(help="Budget: estimated latency on the target, ms.")
    ] = None,
    flash_kb: Annotated[
        float | None, typer.Option(help="Budget: weight storage, KiB (1024 bytes).")
    ] = None,
    ram_kb: Annotated[
        float | None, typer.Option(help="Budget: RAM (activations + runtime), KiB.")
    ] = None,
    max_mflops: Annotated[
        float | None, typer.Option(help="Budget: MFLOPs (1 multiply-add = 1 flop).")
    ] = None,
    objective: Annotated[
        str, typer.Option(help="budget (best accuracy that fits) or pareto.")
    ] = "budget",
    trials: Annotated[
        int,
        typer.Option(
            help="Trials the study should have in total: finished ones count, only the "
            "missing ones run (none when it has them). The last quarter redraws the best "
            "settings with new seeds (budget objective)."
        ),
    ] = 30,
    more: Annotated[
        int | None,
        typer.Option(help="Add N trials to the study, however many it has (instead of --trials)."),
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Fix search phase and ticket schedule to N epochs each.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler and of the trials.")] = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    batch_size: BatchSize = None,
    deterministic: Deterministic = False,
    batch_trials: Annotated[
        str,
        typer.Option(
            help="Trials trained together in one batched population: a number, or auto "
            "(on a GPU as many as fit in memory; on a CPU 1, as batching measured no faster "
            "there). 1 trains one at a time."
        ),
    ] = "auto",
    threads: Threads = None,
    preset: Annotated[
        Path | None,
        typer.Option(
            help="A regularizer preset (from `hwsparse tune --out`): its knobs are fixed and "
            "the budget decides density and granularity."
        ),
    ] = None,
    warm_start: Annotated[
        str | None,
        typer.Option(
            help="Try these regularizer settings first, then search the whole space: a preset "
            "FILE.yaml (its values as the first trial) or a finished study (search or tune, "
            "same dataset and model, same --storage) whose best settings seed this one.",
            metavar="STUDY|FILE.yaml",
        ),
    ] = None,
    artifacts_at: ArtifactsOpt = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes on this machine for the study (CPU threads are split "
            "between them; with GPUs, default one per GPU)."
        ),
    ] = 1,
    gpus: Annotated[
        str | None,
        typer.Option(
            help="GPUs for the workers, e.g. 0,1 (indices of the visible GPUs; default all "
            "visible ones when training on CUDA): each worker sees one via "
            "CUDA_VISIBLE_DEVICES."
        ),
    ] = None,
    heartbeat: Annotated[
        int,
        typer.Option(
            help="Database storages: seconds between a running trial's heartbeats; a trial "
            f"silent for {stores.GRACE_BEATS} of them (its worker died) is failed and run again."
        ),
    ] = stores.HEARTBEAT_S,
    no_pick: Annotated[bool, typer.Option("--no-pick", hidden=True)] = False,
    as_json: AsJson = False,
) -> None:
    """Run or resume a study: the most accurate ticket that fits the device budget.

    With no options: digits, LeNet-300-100 (mlp), an nRF52840 microcontroller, at most 1 ms
    and 16 KiB of weights (nrf52840's default budget). The default budget comes from the
    target's profile (default_budget, shown by `hwsparse devices ID`); a budget below the
    device's floor is refused before training. --trials N is the study's total: the same
    command again runs only what an interrupted run left missing; --more N adds N trials.
    """
    with user_errors(interrupted=lambda: _interrupted(study, storage)):
        set_threads(threads)
        if more is not None and more < 1:
            raise InputError(f"--more must be >= 1 (got {more})")
        if more is None and trials < 1:
            raise InputError(f"--trials must be >= 1 (got {trials})")
        tgt, budget, budget_source = _budget(target, latency_ms, flash_kb, ram_kb, max_mflops)
        sp = search.apply_epochs(load_space(space), epochs)
        sp = search.apply_batch_size(sp, batch_size)
        search.check_device(device, precision)
        search.parse_batch_trials(batch_trials, device, precision)
        first: list[dict[str, Any]] | None = None
        from_file = warm_start is not None and warm_start.endswith((".yaml", ".yml"))
        if preset is not None and from_file:
            raise InputError("give --preset FILE (knobs fixed) or --warm-start FILE, not both")
        preset_file = Path(warm_start) if from_file and warm_start else preset
        if preset_file is not None:
            p = load_preset(preset_file)
            for note in p.notes(dataset, model, None):
                err.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
            err.print(f"[yellow]note:[/yellow] {p.source} was tuned at density {p.density:g};"
                      " here the budget decides density and granularity",
                      highlight=False, soft_wrap=True)  # fmt: skip
            sp, one = apply_to_space(sp, p, from_file)
            first = [one] if one else None
        config = search.SearchConfig(
            dataset=dataset,
            model=model,
            target=tgt,
            budget=budget,
            objective=objective,
            space=sp.as_dict(),
            seed=seed,
        )
        store = stores.open_storage(storage, create=True, heartbeat_s=heartbeat)
        store = artifacts.choose(store, artifacts_at)
        if warm_start is not None and not from_file:
            if warm_start == study:
                raise InputError(f"--warm-start {warm_start!r} is the study being run")
            source = stores.load_study(warm_start, store)
            first = search.warm_start_from(source, config, sp)
        planned = _planned(store, study, trials, more)
        gpu_ids = _gpus(gpus, device, workers)
        n, by_workers = (workers if workers > 1 else len(gpu_ids)), 0
        if n > 1 or gpus is not None:
            goal = trials if more is None else planned + _finished(store, study)
            args = _worker_args(
                study, store, artifacts_at, dataset, data_dir, model, space, tgt,
                (latency_ms, flash_kb, ram_kb, max_mflops), objective, goal, timeout, epochs,
                seed, preset, warm_start, heartbeat,
                {"--precision": precision, "--batch-size": batch_size,
                 "--batch-trials": batch_trials, "--deterministic": deterministic},
            )  # fmt: skip
            plans = parallel.plan(n, gpu_ids, threads or os.cpu_count() or 1)
            by_workers = _run_workers(store, study, args, plans, planned, as_json)
            more, trials = None, goal  # the parent picks (and runs what a dead worker left)
            planned = max(0, goal - _finished(store, study))
        with StudyBars(f"study {study}", planned, live_progress(as_json), as_json, err) as bars:
            started = [False]

            def on_trial_start(number: int) -> None:
                if not started[0]:  # said once the inputs are checked and trials start
                    started[0] = True
                    err.print(
                        f"budget: {_budget_text(budget)} on {tgt}; from {budget_source}",
                        highlight=False,
                        soft_wrap=True,
                    )
                bars.start(f"trial {number}")

            def on_epoch(info: T.EpochInfo) -> None:
                bars.epoch(info.phase, info.epoch, info.epochs, info.val_accuracy)

            def on_trial(s: optuna.Study, t: FrozenTrial) -> None:
                bars.finished(t.number, _trial_line(t))

            outcome = search.run_search(
                study,
                store,
                config,
                sp,
                trials=trials if more is None else more,
                in_total=more is None,
                timeout=timeout,
                device=device,
                data_dir=data_dir,
                on_trial=on_trial,
                on_epoch=on_epoch,
                on_trial_start=on_trial_start,
                enqueue=first,
                precision=precision,
                deterministic=deterministic,
                batch_trials=batch_trials,
                pick_best=not no_pick,
            )
    outcome.ran += by_workers
    if outcome.ran == 0 and more is None:
        err.print(
            f"study {study} already has {outcome.total} trials (--trials {trials} is the "
            f"total); use --more K to add K",
            highlight=False,
        )
    else:
        err.print(
            f"study {study}: ran {outcome.ran} trial(s), {outcome.total} in total",
            highlight=False,
        )
    info = report.summary(outcome.study)
    states = info["states"]
    if as_json:
        picked = info["picked"]
        print_json(
            {
                "study": study,
                "storage": store.shown,
                "n_complete": states.get("COMPLETE", 0),
                "n_pruned": states.get("PRUNED", 0),
                "n_feasible": info["n_feasible"],
                "retried": outcome.retried,
                "ran": outcome.ran,
                "total": outcome.total,
                "picked": _json_pick(picked),
                "closest": info["closest"],
                "config": info["config"],
                "budget": {**config.to_dict()["budget"], "source": budget_source},
            }
        )
        return
    if outcome.retried:
        err.print(f"re-ran interrupted trial(s) {outcome.retried}")
    out.print(report.pick_table(info))
    out.print(
        f"{states.get('COMPLETE', 0)} complete, {states.get('PRUNED', 0)} pruned, "
        f"{info['n_feasible']} fit the budget. Latency is the target profile's estimate."
    )
    flag = "" if store.url == str(stores.default_storage()) else f" --storage {store.shown}"
    out.print(
        f"inspect: hwsparse show {study}{flag}\n"
        f"picture: hwsparse plot {study}{flag}\n"
        f"export:  hwsparse export {study}{flag} --out {study}-ticket\n"
        "more:    the same search command with --more N adds N trials"
    )


def _interrupted(study: str, storage: str | None) -> str:
    """The line after Ctrl-C: what the study kept, what runs again, the command to resume."""
    store = stores.open_storage(storage)
    state = recovery.interrupted_state(study, store)
    if state is None:
        return f"study {study} had not started; to start it: {command_line()}"
    complete, cut = state
    again = (
        f"trial {', '.join(map(str, cut))} was cut off and runs again first"
        if cut
        else "no trial was cut off"
    )
    return (
        f"study {study}: {complete} trial(s) complete, kept in {store.shown}; {again}; "
        f"resume with: {command_line()}"
    )


def _finished(store: stores.Storage, study: str) -> int:
    if study not in optuna.study.get_all_study_names(storage=store.backend):
        return 0
    return search.count_finished(stores.load_study(study, store))


def _gpus(text: str | None, device: str, workers: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES ids the workers use: none on the CPU (``--device cpu``, or no
    GPU), else ``--gpus`` (default all visible)."""
    if device == "cpu":
        if text is not None:
            raise InputError("--gpus needs --device auto or cuda (got --device cpu)")
        return []
    import torch

    visible = parallel.visible_gpus(None, torch.cuda.device_count())
    if not visible and text is None:
        if device.startswith("cuda"):
            raise InputError(f"--device {device}: no CUDA GPU is visible; valid here: cpu, auto")
        return []
    if device.startswith("cuda:") and text is None and workers > 1:
        text = device.removeprefix("cuda:")  # one GPU named: every worker on it
    return parallel.choose_gpus(text, visible)


def _worker_args(
    study: str,
    store: stores.Storage,
    artifacts_at: str | None,
    dataset: str,
    data_dir: Path | None,
    model: str,
    space: str,
    target: str,
    budget: tuple[float | None, ...],
    objective: str,
    goal: int,
    timeout: float | None,
    epochs: int | None,
    seed: int,
    preset: Path | None,
    warm_start: str | None,
    heartbeat: int,
    training: dict[str, Any],
) -> list[str]:
    """The ``hwsparse search`` arguments of one worker: this command's study, as a total of
    ``goal`` trials, no pick (the parent picks once they are done). ``training``: the
    training flags as given (a flag set to True is a switch, None or False is left out)."""
    args = ["--study", study, "--storage", store.url, "--dataset", dataset, "--model", model]
    args += ["--space", str(Path(space).resolve()) if space.endswith((".yaml", ".yml")) else space]
    args += ["--target", target, "--objective", objective, "--trials", str(goal)]
    args += ["--seed", str(seed), "--heartbeat", str(heartbeat), "--no-pick"]
    names = ("--latency-ms", "--flash-kb", "--ram-kb", "--max-mflops")
    for name, value in zip(names, budget, strict=True):
        if value is not None:
            args += [name, repr(value)]
    if warm_start is not None and warm_start.endswith((".yaml", ".yml")):
        warm_start = str(Path(warm_start).resolve())  # a preset file; else a study name
    optional = {"--artifacts": artifacts_at, "--data-dir": data_dir, "--timeout": timeout,
                "--epochs": epochs, "--preset": preset, "--warm-start": warm_start}  # fmt: skip
    for name, given in {**optional, **training}.items():
        if given is True:
            args.append(name)
        elif given is not None and given is not False:
            args += [name, str(Path(given).resolve()) if isinstance(given, Path) else str(given)]
    return args


def _run_workers(
    store: stores.Storage,
    study: str,
    args: list[str],
    plans: list[parallel.WorkerPlan],
    planned: int,
    as_json: bool,
) -> int:
    """Run the workers to the end, showing the study's finished trials as they come (one
    display for all); returns how many trials finished meanwhile. A worker that fails ends the
    command with its error line."""
    with tempfile.TemporaryDirectory() as logs, StudyBars(
        f"study {study}: {len(plans)} workers", planned, live_progress(as_json), as_json, err
    ) as bars:  # fmt: skip
        before = set()
        if study in optuna.study.get_all_study_names(storage=store.backend):
            trials = stores.load_study(study, store).get_trials(deepcopy=False)
            before = {t.number for t in trials if t.state.is_finished()}
        seen = set(before)
        procs = parallel.start(args, plans, Path(logs))
        try:
            while True:
                done = all(p.poll() is not None for p in procs)
                if study in optuna.study.get_all_study_names(storage=store.backend):
                    for t in stores.load_study(study, store).get_trials(deepcopy=False):
                        if t.state.is_finished() and t.number not in seen:
                            seen.add(t.number)
                            if t.datetime_complete is not None:
                                bars.finished(t.number, _trial_line(t))
                if done:
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:
            for p in procs:
                p.wait()  # each worker marks its trial interrupted
            raise
        for plan, p in zip(plans, procs, strict=True):
            if p.returncode != 0:
                line = parallel.last_line(Path(logs), plan.index).removeprefix("error: ")
                raise InputError(f"worker {plan.index} exited {p.returncode}: {line}")
    return len(seen - before)


def _planned(store: stores.Storage, study: str, trials: int, more: int | None) -> int:
    """Trials this call is about to run (for the progress bar; run_search decides)."""
    if more is not None:
        return more
    if study not in optuna.study.get_all_study_names(storage=store.backend):
        return trials
    return max(0, trials - search.count_finished(stores.load_study(study, store)))


def _trial_line(t: FrozenTrial) -> str:
    a = t.user_attrs
    acc = a.get("val_accuracy")
    if a.get("status") == "skipped":
        return "over budget at any density, not trained"
    if acc is None:
        return t.state.name.lower()
    again = f" (redraw of {a['redraw_of']})" if a.get("redraw_of") is not None else ""
    fits = "fits" if a.get("fits_budget") else "over budget"
    return f"val {100 * acc:.1f} % {fits}{again}"


def _json_pick(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    keys = ("trial", "params", "val_accuracy", "test_accuracy", "density", "flops",
            "latency_ms", "latency_ms_low", "latency_ms_high", "weight_bytes",
            "peak_activation_bytes", "fits_budget", "redraw_of")  # fmt: skip
    cv = ("cv_accuracy", "cv_samples", "cv_folds", "cv_accuracy_interval")  # when judged
    return {k: row.get(k) for k in keys} | {k: row[k] for k in cv if k in row}


@app.command()
def studies(storage: StorageOpt = None, as_json: AsJson = False) -> None:
    """List the studies in a storage."""
    with user_errors():
        store = stores.open_storage(storage)
        rows = []
        for s in optuna.study.get_all_study_summaries(storage=store.backend):
            study = stores.load_study(s.study_name, store)
            info = report.summary(study)
            cfg = info["config"] or {}
            picked = info["picked"]
            rows.append(
                {
                    "study": s.study_name,
                    "n_trials": info["n_trials"],
                    "n_feasible": info["n_feasible"],
                    "dataset": cfg.get("dataset"),
                    "model": cfg.get("model"),
                    "target": cfg.get("target") or "—",
                    "objective": cfg.get("objective") or cfg.get("kind"),  # tune: "tune"
                    "best_val_accuracy": picked["val_accuracy"] if picked else None,
                }
            )
    if as_json:
        print_json({"storage": store.shown, "studies": rows})
        return
    t = Table(title=f"Studies in {store.shown}", title_justify="left")
    ids = ("study", "dataset", "model", "target")  # names a user types again: never truncated
    for col in ("study", "trials", "fit", "dataset", "model", "target", "objective", "pick val %"):
        longest = max((len(str(r[col])) for r in rows if col in ids), default=0)
        t.add_column(col, no_wrap=True, overflow="fold", min_width=min(longest, 24) or None)
    for r in rows:
        best = r["best_val_accuracy"]
        t.add_row(r["study"], str(r["n_trials"]), str(r["n_feasible"]), str(r["dataset"]),
                  str(r["model"]), str(r["target"]), str(r["objective"]),
                  "—" if best is None else f"{100 * best:.2f}")  # fmt: skip
    out.print(t)


@app.command()
def show(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    importance: Annotated[
        bool,
        typer.Option(
            "--importance",
            help="Also show which knobs mattered for val accuracy (PED-ANOVA shares).",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """One study: trials, Pareto front, the pick and its budget status."""
    with user_errors():
        store = stores.open_storage(storage)
        s = stores.load_study(study, store)
        info = report.summary(s)
    pruned = report.pruned_reasons(s)
    shares = search.importance(s) if importance else None
    if as_json:
        trials = [report.trial_row(t) for t in s.get_trials(deepcopy=False)]
        extra = {} if shares is None else {"importance": shares}
        print_json({**info, "trials": trials, "pruned": pruned, **extra})
        return
    cfg = info["config"] or {}
    if cfg.get("kind") == "tune":  # no target, no budget: the tune answer instead of a pick
        from hwsparse.cli._tune import show_tune

        show_tune(s, cfg)
        return
    out.print(
        f"study {study}: {cfg.get('dataset')} / {cfg.get('model')} on {cfg.get('target')}, "
        f"objective {cfg.get('objective')}",
        highlight=False,
    )
    out.print(f"budget: {report.budget_flags(cfg.get('budget'))}", highlight=False)
    out.print(report.trials_table(s, width=out.width))
    for row in pruned:
        numbers = ", ".join(map(str, row["trials"]))
        out.print(f"pruned x{row['count']} (trials {numbers}): {row['reason']}", highlight=False,
                  soft_wrap=True)  # fmt: skip
    out.print(
        f"Pareto front (feasible; val accuracy, latency, FLOPs): trials {info['pareto_front']}"
    )
    out.print(report.pick_table(info))
    if shares is not None:
        out.print(report.importance_table(shares, s))


@app.command()
def plot(
    study: Annotated[str, typer.Argument(help="Study name.")],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="PNG file to write (default STUDY.png in the runs folder)."),
    ] = None,
    storage: StorageOpt = None,
) -> None:
    """Accuracy vs latency (feasible vs not, 2-D Pareto front, pick), accuracy vs weights and
    RAM with their budgets, and parameter importance."""
    with user_errors():
        if out_file is None:
            out_file = stores.runs_dir() / f"{study}.png"
        if out_file.suffix.lower() != ".png":
            raise InputError(f"--out must be a .png file (got {out_file})")
        store = stores.open_storage(storage)
        s = stores.load_study(study, store)
        if not s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            raise InputError(f"study {study!r} has no completed trial to plot yet")
        path = report.plot_study(s, out_file)
    out.print(f"wrote {path}")


@app.command()
def export(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder to write the artifact, ticket and card to.")
    ],
    trial: Annotated[
        int | None, typer.Option(help="Trial number (default: the picked ticket).")
    ] = None,
    study: Annotated[
        str | None, typer.Argument(help="Study name (or give --ticket DIR instead).")
    ] = None,
    ticket: Annotated[
        Path | None,
        typer.Option(help="A ticket folder (from `hwsparse ticket --out`) to deploy, no study."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(help="Device profile id or YAML path (with --ticket; a study has its own)."),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="onnx or tflite (default: what the target's runtime reads)."
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help="fp32, fp16 or int8 (default: the target engine's dtype)."),
    ] = None,
    storage: StorageOpt = None,
    data_dir: DataDir = None,
    trust_code: TrustCode = False,
    as_json: AsJson = False,
) -> None:
    """The deployable artifact: compacted, at the target's precision, in its runtime's format,
    verified in that runtime (agreement, accuracy, bytes), with card.json.

    From a study (its pick, or --trial N), or from a ticket folder with --ticket DIR --target ID.
    """
    from hwsparse.cost.profiles import load_profile
    from hwsparse.data import load_dataset
    from hwsparse.deploy.export import export_ticket
    from hwsparse.tickets import load_ticket

    with user_errors(), ExitStack() as stack:
        if (study is None) == (ticket is None):
            raise InputError("give a study name or --ticket DIR (one of them)")
        if ticket is not None:
            if target is None:
                raise InputError("--ticket needs --target ID|PATH (see `hwsparse devices`)")
            with err.status(f"compacting, converting and verifying for {target}"):
                done = api.export(
                    ticket, target, out_dir, format=fmt, dtype=dtype, data_dir=data_dir,
                    trust_code=trust_code,
                )  # fmt: skip
        else:
            assert study is not None
            if target is not None:
                raise InputError("--target is only for --ticket; a study exports for its own")
            store = stores.open_storage(storage)
            s = stores.load_study(study, store)
            cfg = s.user_attrs.get(search.CONFIG_ATTR) or {}
            require_trust(str(cfg.get("model", "")), f"study {study!r}", trust_code=trust_code)
            chosen = _trial(s, trial)
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            ticket_dir = artifacts.fetch_ticket(s, chosen, store, Path(tmp) / "ticket")
            t = load_ticket(ticket_dir, trust_code=trust_code)
            profile = load_profile(cfg.get("target", DEFAULT_TARGET))
            dataset = str(cfg.get("dataset", t.meta.get("dataset", "digits")))
            found = {
                "study": study,
                "storage": store.shown,
                "trial": chosen.number,
                "picked": (search.pick(s) or chosen).number == chosen.number,
                "params": chosen.params,
                "val_accuracy": chosen.user_attrs.get("val_accuracy"),
                **_cv_of(s, chosen),
                "config": cfg,
            }
            budget = Budget(**cfg.get("budget", {}))
            data = load_dataset(dataset, data_dir)
            with err.status(f"compacting, converting and verifying for {profile.id}"):
                done = export_ticket(t, profile, data, out_dir, format=fmt, dtype=dtype,
                                     budget=budget, found=found,
                                     ticket_dir=ticket_dir)  # fmt: skip
    card = done.card
    if as_json:
        print_json({"out": str(out_dir), **card})
    else:
        out.print(report.export_table(card, str(out_dir)))
    if not done.ok:
        err.print("the artifact does NOT agree with the torch network (see agreement)")
        raise typer.Exit(code=1)


def _cv_of(study: optuna.Study, chosen: FrozenTrial) -> dict[str, Any]:
    """The trial's cross-validated accuracy for the card (:mod:`hwsparse.crossval`), if any."""
    judged = crossval.judged(study.user_attrs.get(crossval.CV_ATTR), chosen.number)
    return judged.as_dict() if judged is not None else {}


def _trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    if number is None:
        chosen = search.pick(study)
        if chosen is None:
            raise InputError(
                f"no trial of {study.study_name!r} fits its budget; pass --trial N to export one"
            )
        return chosen
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise InputError(
            f"study {study.study_name!r} has no trial {number} (0..{len(trials) - 1})"
        )
    t = trials[number]
    if t.state != TrialState.COMPLETE:
        raise InputError(f"trial {number} is {t.state.name.lower()}: only completed trials export")
    return t
