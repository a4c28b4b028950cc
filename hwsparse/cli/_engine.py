"""CLI commands of the engine: `hwsparse ticket` and `hwsparse compare`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from hwsparse import accel as A
from hwsparse import api
from hwsparse import train as T
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
    Threads,
    err,
    live_progress,
    out,
    print_json,
    set_threads,
    user_errors,
)
from hwsparse.errors import InputError
from hwsparse.masks import MaskConfig, check_density
from hwsparse.preset import load_preset


def _batch(batch_size: int | None) -> int:
    """``--batch-size``, or the schedule's default."""
    return T.TrainConfig.batch_size if batch_size is None else batch_size


FLOPS_NOTE = "FLOPs: fvcore count, 1 multiply-add = 1 flop, batch 1, masked weights removed"

# --- shared options ------------------------------------------------------------------------------

Epochs = Annotated[int, typer.Option(help="Epochs of one training schedule (the ticket's).")]
Seed = Annotated[int, typer.Option(help="Seed of initialisation, batches and masks.")]
Lr = Annotated[float, typer.Option(help="Adam learning rate of the weights (mnist1d: 0.01).")]
RewindSteps = Annotated[
    int, typer.Option(help="Optimiser step the ticket's weights rewind to (0 = initial weights).")
]


def _strength(text: str) -> tuple[float, bool]:
    """``--strength 1e-3`` is a fixed lambda; ``auto`` adapts it to reach ``--density``."""
    if text == "auto":
        return T.TicketConfig.strength, True
    try:
        return float(text), False
    except ValueError:
        raise InputError(f"--strength takes a number or 'auto', got {text!r}") from None


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    """A progress bar over training epochs on stderr (``enabled``: see live_progress)."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not enabled,
        transient=True,  # the result tables follow; no stale bar left behind
    )
    with progress:
        task = progress.add_task("training", total=total)

        def on_epoch(info: T.EpochInfo) -> None:
            progress.update(
                task,
                advance=1,
                description=f"{info.phase:<16} loss {info.loss:.3f}  val {info.val_accuracy:.3f}"
                f"  density {info.density:.4f}",
            )

        yield progress, task, on_epoch


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.2f} %"


# --- ticket --------------------------------------------------------------------------------------


@app.command()
def ticket(
    ctx: typer.Context,
    dataset: Dataset = "digits",
    data_dir: DataDir = None,
    model: Model = "mlp",
    penalty: Annotated[
        str, typer.Option(help="l1, log, exp, lp, scad, mcp (hwsparse.penalties).")
    ] = "log",
    strength: Annotated[
        str,
        typer.Option(help="lambda of the penalty, or 'auto' to adapt it until --density."),
    ] = "1e-3",
    eps: Annotated[
        float | None,
        typer.Option(help="Concavity scale of the penalty (default: per penalty, log 0.05)."),
    ] = None,
    param: Annotated[str, typer.Option(help="Mask parameterisation: projected, sigmoid.")] = (
        "projected"
    ),
    temperature: Annotated[
        float, typer.Option(help="Initial sigmoid temperature (annealed 200x).")
    ] = 1.0,
    granularity: Annotated[str, typer.Option(help="weight (unstructured) or channel.")] = (
        "weight"
    ),
    density: Annotated[
        float | None,
        typer.Option(help="Exact target density in (0, 1] (top-k); default: threshold 0.5."),
    ] = None,
    threshold: Annotated[float, typer.Option(help="Binarisation threshold on the mask.")] = 0.5,
    mask_lr: Annotated[float, typer.Option(help="Adam learning rate of the masks.")] = 0.01,
    search_epochs: Annotated[int, typer.Option(help="Epochs of the joint mask search.")] = 30,
    mask_first: Annotated[bool, typer.Option(help="Mask the first (input) layer.")] = True,
    mask_last: Annotated[bool, typer.Option(help="Mask the last (output) layer.")] = True,
    epochs: Epochs = 20,
    lr: Lr = 1e-3,
    rewind_steps: RewindSteps = 0,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    batch_size: BatchSize = None,
    deterministic: Deterministic = False,
    threads: Threads = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Save the ticket (weights, mask, config) here.")
    ] = None,
    preset: Annotated[
        Path | None,
        typer.Option(
            help="A regularizer preset (from `hwsparse tune --out`); flags you give win over "
            "it; --density defaults to the density it was tuned for."
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Run the method once: relaxed mask + concave penalty -> ticket -> rewind -> retrain.

    FLOPs are fvcore counts: one multiply-add = one flop, batch 1.
    """
    with user_errors():
        set_threads(threads)
        lam, auto = _strength(strength)
        mask = MaskConfig(
            param=param,
            granularity=granularity,
            mask_first=mask_first,
            mask_last=mask_last,
            temperature=temperature,
        )
        config = T.TicketConfig(
            penalty=penalty,
            strength=lam,
            auto_strength=auto,
            eps=eps,
            mask_lr=mask_lr,
            search_epochs=search_epochs,
            threshold=threshold,
            density=density,
            mask=mask,
        )
        train = T.TrainConfig(
            epochs=epochs, lr=lr, rewind_steps=rewind_steps, seed=seed, device=device,
            precision=precision, batch_size=_batch(batch_size), deterministic=deterministic,
        )  # fmt: skip
        A.select_precision(precision, T.resolve_device(device))
        if preset is not None:
            config, train = with_preset(ctx, preset, dataset, model, density, config, train)
            search_epochs = config.search_epochs
        with _progress(live_progress(as_json), search_epochs + epochs) as (_, _, on_epoch):
            run = api.ticket(
                dataset,
                model,
                data_dir=data_dir,
                config=config,
                train=train,
                out=out_dir,
                on_epoch=on_epoch,
            )
    summary = run.summary()
    if preset is not None:
        summary["preset"] = str(preset)
    summary["layers"] = [
        {"name": r.name, "kept": r.kept, "total": r.total, "density": r.density}
        for r in run.result.layers
    ]
    if as_json:
        print_json(summary)
    else:
        _print_ticket(run)
    if run.result.status != "ok":
        raise typer.Exit(code=1)


def with_preset(
    ctx: typer.Context,
    path: Path,
    dataset: str,
    model: str,
    density: float | None,
    config: T.TicketConfig,
    train: T.TrainConfig,
) -> tuple[T.TicketConfig, T.TrainConfig]:
    """``ticket --preset FILE``: the preset's regularizer at ``density`` (default: the one it
    was tuned for); flags given on the command line win. A note when used elsewhere."""
    from hwsparse.search import configs

    p = load_preset(path)
    d = p.density if density is None else density
    for note in p.notes(dataset, model, d):
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    sources = {n: ctx.get_parameter_source(n) for n in ctx.params}
    given = {n for n, src in sources.items() if src is not None and src.name == "COMMANDLINE"}
    values: dict[str, Any] = {**p.values(), "binarize": "density", "density": d,
                              "granularity": p.granularity}  # fmt: skip
    if "strength" in given:
        values.pop("strength", None)
        values["strength_mode"] = "auto" if config.auto_strength else "fixed"
        if not config.auto_strength:
            values["strength"] = config.strength
    mask_flags = ("param", "temperature", "granularity", "mask_first", "mask_last")
    for name in ("penalty", "mask_lr", "search_epochs", *mask_flags):
        if name in given:
            values[name] = getattr(config.mask if name in mask_flags else config, name)
    for name in ("epochs", "lr", "rewind_steps"):
        if name in given or name != "rewind_steps":
            values[name] = getattr(train, name)
    ticket_cfg, train_cfg = configs(values, train.seed, train.device)
    if "eps" in given:
        ticket_cfg = replace(ticket_cfg, eps=config.eps)
    return ticket_cfg, train_cfg


def _print_ticket(run: api.TicketRun) -> None:
    r = run.result
    if r.status != "ok":
        err.print(f"[red]run {r.status}:[/red] {r.message}")
        return
    layers = Table(title="Ticket layers", title_justify="left")
    for col in ("layer", "kept", "total", "density"):
        layers.add_column(col, justify="left" if col == "layer" else "right")
    for row in r.layers:
        layers.add_row(row.name, f"{row.kept:,}", f"{row.total:,}", _pct(row.density))
    out.print(layers)
    table = Table(title=f"Ticket: {r.method} on {run.dataset} / {run.model}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("val accuracy", _pct(r.val_accuracy))
    table.add_row("test accuracy (reported once)", _pct(r.test_accuracy))
    table.add_row("density (kept / all Conv+Linear weights)", _pct(r.density))
    if run.flops is not None:
        table.add_row("FLOPs (sparse / dense)", f"{run.flops.total:,} / {run.flops.dense:,}")
    table.add_row("training epochs spent", str(r.epochs))
    table.add_row("wall time", f"{r.seconds:.1f} s on {r.device}")
    out.print(table)
    out.print(f"[dim]{FLOPS_NOTE}[/dim]")
    if r.message:
        err.print(f"[yellow]note:[/yellow] {r.message}")
    if run.out is not None:
        out.print(f"ticket saved to {run.out}")


# --- compare -------------------------------------------------------------------------------------


@app.command()
def compare(
    dataset: Dataset = "digits",
    data_dir: DataDir = None,
    model: Model = "mlp",
    density: Annotated[float, typer.Option(help="The one density every method prunes to.")] = (
        0.05
    ),
    methods: Annotated[
        str,
        typer.Option(
            help="Comma list: penalties (log, l1, exp, lp, scad, mcp; strength auto) and "
            "baselines dense, imp, cs, magnitude, random."
        ),
    ] = "log,l1,imp,cs,magnitude,random",
    seeds: Annotated[str, typer.Option(help="A count (3 = seeds 0,1,2) or a list (0,4,7).")] = (
        "3"
    ),
    epochs: Epochs = 20,
    search_epochs: Annotated[
        int, typer.Option(help="Epochs of the penalties' joint mask search.")
    ] = 30,
    lr: Lr = 1e-3,
    rewind_steps: RewindSteps = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    batch_size: BatchSize = None,
    deterministic: Deterministic = False,
    threads: Threads = None,
    as_json: AsJson = False,
) -> None:
    """Run methods side by side at one exact density over several seeds.

    Every method ends by training its ticket for one schedule (--epochs) from the same rewind
    point; `epochs` in the table is all the training each method spent to get there.
    """
    with user_errors():
        set_threads(threads)
        names = api.parse_methods(methods)
        seed_list = api.parse_seeds(seeds)
        train = T.TrainConfig(
            epochs=epochs, lr=lr, rewind_steps=rewind_steps, device=device, precision=precision,
            batch_size=_batch(batch_size), deterministic=deterministic,
        )  # fmt: skip
        A.select_precision(precision, T.resolve_device(device))
        check_density(density)
        config = T.TicketConfig(auto_strength=True, density=density, search_epochs=search_epochs)
        total = sum(T.planned_epochs(m, density, train, config) for m in names) * len(seed_list)
        with _progress(live_progress(as_json), total) as (progress, task, on_epoch):

            def on_run(method: str, seed: int, r: T.RunResult) -> None:
                progress.console.print(
                    f"{method:<10} seed {seed}: test {_pct(r.test_accuracy)}  "
                    f"density {r.density:.4f}  {r.epochs} epochs  {r.status}",
                    highlight=False,
                )

            rows, runs = api.compare(
                dataset,
                model,
                density=density,
                methods=names,
                seeds=seed_list,
                data_dir=data_dir,
                train=train,
                config=config,
                on_epoch=on_epoch,
                on_run=None if as_json else on_run,
            )
    if as_json:
        print_json(
            {
                "dataset": dataset,
                "model": model,
                "density": density,
                "seeds": seed_list,
                "epochs": epochs,
                "results": [r.as_dict() for r in rows],
                "runs": runs,
            }
        )
        return
    table = Table(
        title=f"{dataset} / {model} at density {density:g}, {len(seed_list)} seed(s)",
        title_justify="left",
    )
    for col in ("method", "test acc (mean ± std)", "val acc", "density", "epochs", "time"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for row in rows:
        table.add_row(
            row.method,
            f"{_pct(row.test_accuracy_mean)} ± {100 * row.test_accuracy_std:.2f}",
            _pct(row.val_accuracy_mean),
            f"{row.density:.4f}",
            f"{row.epochs_total:g}",
            f"{row.seconds_mean:.1f} s",
        )
    out.print(table)
    out.print("[dim]epochs: all training epochs one run spent, search phase included[/dim]")
