"""CLI command `hwsparse tune`: the best regularizer at a density, with evidence."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import optuna
import typer
from optuna.trial import FrozenTrial
from rich.table import Table

from hwsparse import search, tune
from hwsparse import storage as stores
from hwsparse import train as T
from hwsparse.cli import app
from hwsparse.cli._common import (
    AsJson,
    DataDir,
    Dataset,
    Device,
    Model,
    StudyBars,
    Threads,
    err,
    live_progress,
    out,
    print_json,
    set_threads,
    user_errors,
)
from hwsparse.cli._search import StorageOpt, _interrupted, _planned
from hwsparse.errors import InputError
from hwsparse.preset import write_preset
from hwsparse.space import load_space


@app.command("tune")
def tune_cmd(
    dataset: Dataset = "digits",
    data_dir: DataDir = None,
    model: Model = "mlp",
    density: Annotated[
        float | None,
        typer.Option(help="The density every ticket prunes to, in (0, 1) (default 0.05)."),
    ] = None,
    density_range: Annotated[
        str | None,
        typer.Option(help="LO,HI: search the density too (log scale) instead of --density."),
    ] = None,
    granularity: Annotated[str, typer.Option(help="weight (unstructured) or channel.")] = (
        "weight"
    ),
    trials: Annotated[
        int, typer.Option(help="Trials the study should have in total (resumes like search).")
    ] = 30,
    seeds: Annotated[
        int, typer.Option(help="Seeds the best and the default regularizer are re-run with.")
    ] = 3,
    space: Annotated[
        str, typer.Option(help="Search space: tune (default) or a path to a YAML file.")
    ] = "tune",
    study: Annotated[str, typer.Option(help="Study name; the same name resumes it.")] = "tune",
    storage: StorageOpt = None,
    epochs: Annotated[
        int | None, typer.Option(help="Fix search phase and ticket schedule to N epochs each.")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(help="Start no trial after this many seconds (the evidence runs follow)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler and of every trial.")] = 0,
    device: Device = "auto",
    threads: Threads = None,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Write the tuned regularizer as a preset (FILE.yaml)."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Which regularizer gives the best ticket at a density: an Optuna study over penalty,
    strength (or the auto-strength controller), eps, parameterisation and temperature, mask
    learning rate, search epochs and rewind point, then the answer with evidence: the best on
    validation evaluated once on test, the default regularizer and IMP at the same density and
    seed, the spread over --seeds seeds, and the parameter importances.

    No device and no budget (fp32 validation accuracy). --out FILE.yaml writes a preset for
    `hwsparse ticket --preset` and `hwsparse search --preset`.
    """
    with user_errors(interrupted=lambda: _interrupted(study, storage)):
        set_threads(threads)
        rng = tune.parse_range(density_range) if density_range is not None else None
        if rng is None and density is None:
            density = 0.05
        sp = load_space(space)
        config = tune.TuneConfig(
            dataset=dataset,
            model=model,
            density=density,
            density_range=rng,
            granularity=granularity,
            seed=seed,
        )
        sp = tune.tune_space(sp, config, epochs)
        config = tune.TuneConfig(**{**config.__dict__, "space": sp.as_dict()})
        if out_file is not None and out_file.suffix.lower() not in (".yaml", ".yml"):
            raise InputError(f"--out must be a .yaml file (got {out_file})")
        store = stores.open_storage(storage, create=True)
        planned = _planned(store, study, trials, None)
        with StudyBars(f"study {study}", planned, live_progress(as_json), as_json, err) as bars:

            def on_trial_start(number: int) -> None:
                bars.start(f"trial {number}")

            def on_epoch(info: T.EpochInfo) -> None:
                bars.epoch(info.phase, info.epoch, info.epochs, info.val_accuracy)

            def on_trial(s: optuna.Study, t: FrozenTrial) -> None:
                acc = t.user_attrs.get("val_accuracy")
                bars.finished(
                    t.number, t.state.name.lower() if acc is None else f"val {100 * acc:.1f} %"
                )

            def on_stage(what: str, total: int) -> None:
                bars.current = what
                bars.line(f"evidence: {what}")

            outcome = tune.run_tune(
                study,
                store,
                config,
                sp,
                trials=trials,
                seeds=seeds,
                timeout=timeout,
                device=device,
                data_dir=data_dir,
                on_trial=on_trial,
                on_epoch=on_epoch,
                on_trial_start=on_trial_start,
                on_stage=on_stage,
            )
        answer = outcome.answer
        if answer is None:
            raise InputError(
                f"study {study}: no trial completed ({outcome.total} finished); "
                "run more trials (--trials)"
            )
        preset_path = None
        if out_file is not None:
            preset_path = write_preset(tune.preset_of(answer, config), out_file)
    err.print(f"study {study}: ran {outcome.ran} trial(s), {outcome.total} in total",
              highlight=False)  # fmt: skip
    if as_json:
        print_json(
            {
                **answer,
                "storage": store.shown,
                "ran": outcome.ran,
                "total": outcome.total,
                "retried": outcome.retried,
                "config": config.to_dict(),
                "preset": str(preset_path) if preset_path else None,
            }
        )
        return
    out.print(tune_table(answer))
    for line in tune_lines(answer):
        out.print(line, highlight=False, soft_wrap=True)
    if preset_path is not None:
        out.print(
            f"preset: {preset_path}; use it: hwsparse ticket --preset {preset_path}, "
            f"hwsparse search --preset {preset_path}",
            highlight=False,
            soft_wrap=True,
        )


def _pct(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _spread(row: dict[str, Any]) -> str:
    mean, std = row.get("test_accuracy_mean"), row.get("test_accuracy_std")
    if mean is None:
        return "—"
    return f"{_pct(mean)} ± {100 * (std or 0.0):.2f}"


def tune_table(answer: dict[str, Any]) -> Table:
    """Best, default and IMP side by side (%, test evaluated once; mean ± std over seeds)."""
    best, default, imp = answer["best"], answer["default"], answer["imp"]
    n = answer["seeds"]
    t = Table(
        title=f"Tuned regularizer: {answer['dataset']} / {answer['model']} at density "
        f"{answer['density']:.4g} ({answer['granularity']}), {answer.get('n_complete')} "
        f"trials complete",
        title_justify="left",
        caption=f"val/test: seed {answer['seed_list'][0]}; test over seeds: {n} seed(s) "
        f"{answer['seed_list']}; epochs: all training one run spent",
        caption_justify="left",
    )
    for col in ("", "val %", "test %", f"test % ({n} seeds)", "density"):
        t.add_column(col, justify="left" if not col else "right")
    t.add_row(f"best (trial {best['trial']})", _pct(best["val_accuracy"]),
              _pct(best["test_accuracy"]), _spread(best),
              f"{best['density']:.4f}" if best.get("density") else "—")  # fmt: skip
    t.add_row("default (log, auto)", _pct(default["val_accuracy"]),
              _pct(default["test_accuracy"]), _spread(default),
              f"{default['density']:.4f}" if default.get("density") else "—")  # fmt: skip
    t.add_row(f"IMP ({imp['epochs']} epochs)", _pct(imp["val_accuracy"]),
              _pct(imp["test_accuracy"]), "—",
              f"{imp['density']:.4f}" if imp.get("density") else "—")  # fmt: skip
    return t


def tune_lines(answer: dict[str, Any]) -> list[str]:
    """The regularizer to use, by how much it wins, and what mattered."""
    best, default, imp = answer["best"], answer["default"], answer["imp"]
    params = ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in best["params"].items()
    )
    lines = [f"use: {params}"]
    b, d, i = (
        best.get("test_accuracy_mean"),
        default.get("test_accuracy_mean"),
        imp.get("test_accuracy"),
    )
    if b is not None and d is not None:
        std = max(best.get("test_accuracy_std") or 0.0, default.get("test_accuracy_std") or 0.0)
        verdict = "within the seed spread" if abs(b - d) <= std else "beyond the seed spread"
        lines.append(
            f"vs default: {100 * (b - d):+.2f} points test (mean of {answer['seeds']} seeds; "
            f"{verdict}, std {100 * std:.2f})"
        )
    if best.get("test_accuracy") is not None and i is not None:
        lines.append(f"vs IMP: {100 * (best['test_accuracy'] - i):+.2f} points test "
                     f"(seed {answer['seed_list'][0]})")  # fmt: skip
    imp_shares = answer.get("importance") or {}
    if imp_shares:
        top = ", ".join(f"{k} {100 * v:.0f} %" for k, v in list(imp_shares.items())[:5])
        lines.append(f"what mattered (importance for val accuracy): {top}")
    else:
        lines.append("importance: needs more completed trials")
    return lines


def show_tune(study: optuna.Study, cfg: dict[str, Any]) -> None:
    """`hwsparse show` of a tune study: its trials and the stored answer."""
    from hwsparse import report

    where = (
        f"density {cfg['density']:g}"
        if cfg.get("density") is not None
        else f"density in {cfg.get('density_range')}"
    )
    out.print(
        f"study {study.study_name}: tune on {cfg.get('dataset')} / {cfg.get('model')} at "
        f"{where} ({cfg.get('granularity')}), fp32 validation accuracy",
        highlight=False,
    )
    out.print(report.trials_table(study, width=out.width))
    answer = study.user_attrs.get(tune.RESULT_ATTR)
    if answer is None:
        out.print("no answer yet: run `hwsparse tune` with this --study to finish it")
        return
    answer = {**answer, "importance": search.importance(study),
              "n_complete": tune._n_complete(study)}  # fmt: skip
    out.print(tune_table(answer))
    for line in tune_lines(answer):
        out.print(line, highlight=False, soft_wrap=True)
