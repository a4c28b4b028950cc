"""Reading studies back: trial rows, the Pareto front, the pick, pictures, export cards.

Plain data in, plain data or rich tables out; the CLI decides where they are printed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from hwsparse import crossval
from hwsparse._files import atomic_write
from hwsparse.search import CONFIG_ATTR, PICK_ATTR, closest, feasible, importance, pick
from hwsparse.stats import interval_or_none

# --- rows ----------------------------------------------------------------------------------------


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    """One trial as JSON-ready data (metrics are validation figures; units in the names)."""
    a = t.user_attrs
    return {
        "trial": t.number,
        "state": t.state.name,
        "params": t.params,
        "val_accuracy": a.get("val_accuracy"),  # at the target's dtype (what ships)
        "val_accuracy_fp32": a.get("val_accuracy_fp32"),
        "val_samples": a.get("val_samples"),
        "val_accuracy_interval": interval_or_none(a.get("val_accuracy"), a.get("val_samples")),
        "dtype": a.get("dtype"),
        "density": a.get("density"),
        "flops": a.get("flops"),
        "latency_ms": a.get("latency_ms"),
        "latency_ms_low": a.get("latency_ms_low"),
        "latency_ms_high": a.get("latency_ms_high"),
        "weight_bytes": a.get("weight_bytes"),
        "peak_activation_bytes": a.get("peak_activation_bytes"),
        "ram_bytes": a.get("ram_bytes"),  # what a --ram-kb budget checks
        "strength_final": a.get("strength_final"),  # penalty lambda the search phase ended with
        "fits_budget": a.get("fits_budget"),
        "violations": a.get("violations"),
        "cut_from_density": a.get("cut_from_density"),
        "train_seconds": a.get("train_seconds"),
        "cost_seconds": a.get("cost_seconds"),
        "device": a.get("device"),
        "status": a.get("status"),
        "retry_of": a.get("retry_of"),
        "redraw_of": a.get("redraw_of"),  # the trial whose settings it trained again
    }


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible, non-dominated completed trials on (val accuracy up, latency down, FLOPs down)."""
    done = [t for t in study.get_trials(deepcopy=False) if feasible(t)]

    def vec(t: FrozenTrial) -> tuple[float, float, float]:
        lat = t.user_attrs.get("latency_ms")
        return (
            -float(t.user_attrs["val_accuracy"]),
            float(lat) if lat is not None else 0.0,
            float(t.user_attrs.get("flops", 0)),
        )

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    vecs = {t.number: vec(t) for t in done}
    front = [t for t in done if not any(dominates(vecs[o.number], vecs[t.number]) for o in done)]
    return sorted(front, key=lambda t: vecs[t.number])


def summary(study: optuna.Study) -> dict[str, Any]:
    """What `hwsparse show --json` prints: config, counts, pick (with its test accuracy)."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    chosen = pick(study)
    stored = study.user_attrs.get(PICK_ATTR) or {}
    near = None if chosen else closest(study)
    return {
        "study": study.study_name,
        "config": study.user_attrs.get(CONFIG_ATTR),
        "n_trials": len(trials),
        "states": {k: v for k, v in counts.items() if v},
        "n_feasible": sum(feasible(t) for t in trials),
        "picked": pick_row(chosen, stored, study.user_attrs.get(crossval.CV_ATTR)),
        "closest": trial_row(near) if near else None,
        "pareto_front": [t.number for t in pareto_front(study)],
    }


def pick_row(
    chosen: FrozenTrial | None, stored: dict[str, Any], cv: crossval.Stored = None
) -> dict[str, Any] | None:
    """The pick's row, with its test accuracy (``stored``: the study's pick record) and, when
    its shortlist was cross-validated (``cv``: :data:`hwsparse.crossval.CV_ATTR`), its pooled
    accuracy over the held-out folds with n and interval."""
    if chosen is None:
        return None
    row = trial_row(chosen)
    judged = crossval.judged(cv, chosen.number)
    if judged is not None:
        row.update(judged.as_dict())
    same = stored.get("trial") == chosen.number
    row["test_accuracy"] = stored.get("test_accuracy") if same else None
    row["test_accuracy_fp32"] = stored.get("test_accuracy_fp32") if same else None
    row["test_samples"] = stored.get("test_samples") if same else None
    row["test_accuracy_interval"] = interval_or_none(row["test_accuracy"], row["test_samples"])
    return row


# --- rich tables ---------------------------------------------------------------------------------

# Budget keys as stored (hwsparse.cost.estimate.Budget) -> the flags that set them.
BUDGET_FLAGS = {"latency_ms": "--latency-ms", "weight_kb": "--flash-kb", "ram_kb": "--ram-kb",
                "mflops": "--max-mflops"}  # fmt: skip


def budget_flags(budget: dict[str, Any] | None) -> str:
    """A stored budget as the flags that set it, e.g. ``--latency-ms 1 --flash-kb 16``."""
    parts = [
        f"{BUDGET_FLAGS.get(k, '--' + k.replace('_', '-'))} {v:g}"
        for k, v in (budget or {}).items()
        if v is not None
    ]
    return " ".join(parts) or "none"


def _not_trained(row: dict[str, Any]) -> bool:
    """Over budget at every density: the ticket was never trained (status ``skipped``)."""
    return row.get("status") == "skipped"


def _pct(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _acc(row: dict[str, Any], key: str) -> str:
    """An accuracy in percent with its 95 % interval and sample count (hwsparse.stats)."""
    text = f"{_pct(row.get(key))} %"
    interval, n = row.get(f"{key}_interval"), row.get(key.replace("accuracy", "samples"))
    if interval is not None:
        text += f" \\[{100 * interval[0]:.1f}-{100 * interval[1]:.1f}, n={n}]"
    return text


def _ms(row: dict[str, Any]) -> str:
    lat = row.get("latency_ms")
    if lat is None:
        return "unknown"
    lo, hi = row.get("latency_ms_low"), row.get("latency_ms_high")
    band = f" [{lo:.3g}–{hi:.3g}]" if lo is not None and hi is not None else ""
    return f"{lat:.3g}{band}"


def _fits(row: dict[str, Any], short: bool = False) -> str:
    fits = row.get("fits_budget")
    if fits is None:
        return "—"
    if fits:
        return "[green]yes[/green]"
    worst = max((row.get("violations") or {"?": 0.0}).items(), key=lambda kv: kv[1])
    if short:
        return "[red]no[/red]"
    return f"[red]no[/red] ({worst[0]} +{100 * worst[1]:.0f} %)"


_STATE = {"COMPLETE": "done", "PRUNED": "pruned", "FAIL": "fail", "RUNNING": "run",
          "WAITING": "queued"}  # fmt: skip


def _size(n: Any) -> str:
    """Bytes, short: ``7.9K`` (KiB) or ``200M`` (MiB)."""
    if n is None:
        return "—"
    kib = float(n) / 1024
    return f"{kib:.3g}K" if kib < 1024 else f"{kib / 1024:.3g}M"


def trials_table(study: optuna.Study, limit: int | None = None, width: int | None = None) -> Table:
    """Trials, one row each (validation accuracy; latency is the target profile's estimate).

    Short headers, explained in the caption; a RAM column when the study has a RAM budget.
    Below 100 columns of ``width`` the granularity and FLOPs columns are left out (``show
    --json`` has them), so the table fits 80 columns.
    """
    budget = (study.user_attrs.get(CONFIG_ATTR) or {}).get("budget") or {}
    narrow = width is not None and width < 100
    ram = budget.get("ram_kb") is not None
    t = Table(
        title=f"Trials of {study.study_name}",
        title_justify="left",
        caption="dens: achieved density (kept / all weights); val %: validation accuracy as "
        "deployed ('not trained': over budget at any density); flash: weights"
        + ("; RAM: activations + runtime" if ram else "")
        + " (K = KiB, M = MiB)",
        caption_justify="left",
    )
    cols = ["#", "state", "penalty", "gran", "dens", "val %", "lat ms", "kFLOP", "flash"]
    if narrow:
        cols.remove("gran")
        cols.remove("kFLOP")
    if ram:
        cols.append("RAM")
    cols.append("fits")
    for col in cols:
        left = col in ("state", "penalty", "gran", "fits")
        t.add_column(col, justify="left" if left else "right", no_wrap=col != "val %")
    trials = study.get_trials(deepcopy=False)
    shown = trials[-limit:] if limit else trials
    example = next((tr for tr in shown if tr.user_attrs.get("redraw_of") is not None), None)
    if example is not None:
        n, of = example.number, example.user_attrs["redraw_of"]
        t.caption = f"{t.caption}; {n} r{of}: trial {n} redraws {of} (its settings, a new seed)"
    for tr in shown:
        r = trial_row(tr)
        done = r["state"] == "COMPLETE"
        lat = r["latency_ms"]
        redrawn = r["redraw_of"]
        cells = {
            "#": str(r["trial"]) + ("" if redrawn is None else f" r{redrawn}"),
            "state": _STATE.get(r["state"], r["state"].lower()),
            "penalty": str(tr.params.get("penalty", "")),
            "gran": str(tr.params.get("granularity", ""))[:2],
            "dens": "—" if r["density"] is None else f"{r['density']:.3g}",
            "val %": "not trained" if _not_trained(r) else _pct(r["val_accuracy"]),
            "lat ms": f"{lat:.3g}" if done and lat is not None else "—",
            "kFLOP": "—" if r["flops"] is None else f"{r['flops'] / 1e3:.4g}",
            "flash": _size(r["weight_bytes"]),
            "RAM": _size(r["ram_bytes"]),
            "fits": _fits(r, short=True) if done else "—",
        }
        t.add_row(*(cells[c] for c in cols))
    return t


def pick_table(info: dict[str, Any]) -> Table:
    """The pick (or, when nothing fits, the closest trial and what it misses)."""
    picked, near = info["picked"], info["closest"]
    row = picked or near
    title = "Picked ticket" if picked else "Nothing fits the budget; closest trial"
    t = Table(title=title, title_justify="left")
    t.add_column("metric")
    t.add_column("value", justify="right")
    if row is None:
        t.add_row("trials completed", "0")
        return t
    redrawn = row.get("redraw_of")
    again = f", redraw of {redrawn}" if redrawn is not None else ""
    t.add_row("trial", f"{row['trial']}{again}")
    params = row["params"]
    for k, v in params.items():
        label = "target density (sampled)" if k == "density" else k
        t.add_row(f"  {label}", f"{v:.4g}" if isinstance(v, float) else str(v))
    notes = ["eps_factor scales the penalty's default eps"] if "eps_factor" in params else []
    if redrawn is not None:
        notes.append(f"redraw of {redrawn}: trial {redrawn}'s settings trained with a new seed")
    if notes:
        t.caption = "; ".join(notes)
        t.caption_justify = "left"
    dtype = row.get("dtype") or "fp32"
    if _not_trained(row):
        t.add_row("val accuracy", "not trained (over budget at any density)")
    else:
        t.add_row(f"val accuracy ({dtype}, as deployed)", _acc(row, "val_accuracy"))
        if row.get("val_accuracy_fp32") is not None and dtype != "fp32":
            t.add_row("val accuracy (fp32)", f"{_pct(row['val_accuracy_fp32'])} %")
        if row.get("cv_accuracy") is not None:
            label = f"cross-validated accuracy ({dtype}, {row['cv_folds']} folds of train+val)"
            t.add_row(label, _acc(row, "cv_accuracy"))
    if picked:
        t.add_row(f"test accuracy ({dtype}, evaluated once)", _acc(row, "test_accuracy"))
    t.add_row("achieved density", f"{row['density']:.4f}")
    if row.get("strength_final") is not None:
        t.add_row("λ, penalty strength at the end", f"{row['strength_final']:.3g}")
    t.add_row("latency ms (estimate \\[band])", _ms(row))
    t.add_row("FLOPs (1 MAC = 1 flop)", f"{row['flops']:,}")
    t.add_row("weights (--flash-kb checks)", f"{row['weight_bytes'] / 1024:.1f} KiB")
    t.add_row("peak activations", f"{row['peak_activation_bytes'] / 1024:.1f} KiB")
    if row.get("ram_bytes") is not None:
        t.add_row("RAM (--ram-kb checks)", f"{row['ram_bytes'] / 1024:.1f} KiB")
    t.add_row("fits budget", _fits(row))
    if row.get("val_accuracy_interval") is not None:
        t.caption = (t.caption + "; " if t.caption else "") + (
            "\\[low-high]: 95 % Wilson interval of the accuracy on n samples"
        )
        t.caption_justify = "left"
    return t


def importance_table(shares: dict[str, float], study: optuna.Study) -> Table:
    """Parameter importances (:func:`hwsparse.search.importance`) as a table."""
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    t = Table(title="What mattered", title_justify="left", caption_justify="left",
              caption=f"share of the importance for val accuracy (PED-ANOVA, {n} completed "
              "trials)")  # fmt: skip
    t.add_column("knob")
    t.add_column("share", justify="right")
    if not shares:
        t.add_row("needs at least 4 completed trials", "—")
    for k, v in shares.items():
        t.add_row(k, f"{100 * v:.0f} %")
    return t


# --- pictures ------------------------------------------------------------------------------------


def front_2d(points: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """The 2-D non-dominated points of ``(x, accuracy, id)``: lower x and higher accuracy are
    better. Sorted by x, accuracy strictly rising (the staircase of the best accuracy that
    costs no more than x)."""
    front: list[tuple[float, float, int]] = []
    for x, y, i in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y, i))
    return front


def pruned_reasons(study: optuna.Study) -> list[dict[str, Any]]:
    """Pruned trials grouped by reason, most frequent first: ``{reason, count, trials}``."""
    groups: dict[str, list[int]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        reason = t.user_attrs.get("pruned_reason") or t.user_attrs.get("message")
        groups.setdefault(str(reason or "pruned (no reason recorded)"), []).append(t.number)
    rows = [{"reason": r, "count": len(n), "trials": n} for r, n in groups.items()]
    return sorted(rows, key=lambda row: (-row["count"], row["trials"][0]))


def plot_study(study: optuna.Study, path: str | Path) -> Path:
    """Accuracy vs latency (or MFLOPs) with the 2-D Pareto front and every active budget, plus
    accuracy vs weights and vs RAM (their budgets drawn), and parameter importances."""
    # A Figure without pyplot: no backend switch, no global figure registry in the caller
    from matplotlib.figure import Figure

    config = study.user_attrs.get(CONFIG_ATTR) or {}
    budget = config.get("budget", {})
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    use_latency = bool(done) and all(t.user_attrs.get("latency_ms") is not None for t in done)
    main = (
        ("latency_ms", "estimated latency on the target (ms)", 1.0, "latency_ms", "ms")
        if use_latency
        else ("flops", "MFLOPs (1 multiply-add = 1 flop)", 1e-6, "mflops", "MFLOPs")
    )
    panels = [
        main,
        ("weight_bytes", "weights (KiB)", 1 / 1024, "weight_kb", "KiB"),
        ("ram_bytes", "RAM: activations + runtime (KiB)", 1 / 1024, "ram_kb", "KiB"),
    ]
    if use_latency and budget.get("mflops") is not None:
        panels.append(("flops", "MFLOPs (1 multiply-add = 1 flop)", 1e-6, "mflops", "MFLOPs"))

    fig = Figure(figsize=(13, 8.5), layout="constrained")
    grid = fig.add_gridspec(2, len(panels) - 1 if len(panels) > 2 else 2, height_ratios=[3, 2])
    top = grid[0, :].subgridspec(1, 2, width_ratios=[3, 2])
    ax_main, ax_imp = fig.add_subplot(top[0]), fig.add_subplot(top[1])
    small = [fig.add_subplot(grid[1, i]) for i in range(len(panels) - 1)]
    chosen = pick(study)
    for ax, (key, label, scale, limit_key, unit) in zip([ax_main, *small], panels, strict=True):
        _scatter_panel(ax, done, key, label, scale, budget.get(limit_key), unit, chosen,
                       front=ax is ax_main)  # fmt: skip
    ax_main.set_title(f"{study.study_name}: {config.get('model')} on {config.get('target')}"
                      f" (budget {budget_flags(budget)})", fontsize=10)  # fmt: skip
    # below the axes: inside, a legend hides points
    ax_main.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    for ax in small:
        ax.set_ylabel("val accuracy (%)", fontsize=8)
    _importance_panel(study, ax_imp)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110))
    return out


def _scatter_panel(
    ax: Any,
    done: list[FrozenTrial],
    key: str,
    label: str,
    scale: float,
    limit: float | None,
    unit: str,
    chosen: FrozenTrial | None,
    front: bool,
) -> None:
    """Validation accuracy against one cost: fits / over budget / not trained, the budget line,
    the pick, and (``front``) the staircase of the 2-D Pareto front of the feasible trials."""
    have = [t for t in done if t.user_attrs.get(key) is not None]
    biggest = max([float(t.user_attrs[key]) * scale for t in have] + [limit or 0.0])
    if unit == "KiB" and biggest > 10 * 1024:  # MiB reads better (a board's RAM)
        scale, unit, label = scale / 1024, "MiB", label.replace("KiB", "MiB")
        limit = None if limit is None else limit / 1024

    def xs(ts: list[FrozenTrial]) -> list[float]:
        return [float(t.user_attrs[key]) * scale for t in ts]

    def ys(ts: list[FrozenTrial]) -> list[float]:
        return [100 * float(t.user_attrs.get("val_accuracy", math.nan)) for t in ts]

    untrained = [t for t in have if t.user_attrs.get("status") == "skipped"]
    ok = [t for t in have if feasible(t)]
    bad = [t for t in have if not feasible(t) and t not in untrained]
    ax.scatter(xs(bad), ys(bad), c="lightgray", edgecolors="gray", label="over budget", s=26)
    if untrained:
        ax.scatter(xs(untrained), ys(untrained), marker="x", c="gray", s=26,
                   label="not trained (over budget at any density)")  # fmt: skip
    ax.scatter(xs(ok), ys(ok), c="tab:blue", label="fits budget", s=26)
    if front and ok:
        stairs = front_2d(list(zip(xs(ok), ys(ok), range(len(ok)), strict=True)))
        ax.step([p[0] for p in stairs], [p[1] for p in stairs], where="post", c="tab:blue",
                lw=1.2, alpha=0.7, label="Pareto front (feasible, these axes)")  # fmt: skip
    if limit is not None:
        ax.axvline(limit, c="tab:red", ls="--", lw=1, label=f"budget {limit:g} {unit}")
    if chosen is not None and chosen.user_attrs.get(key) is not None:
        ax.scatter(xs([chosen]), ys([chosen]), marker="*", s=240, c="gold", edgecolors="black",
                   zorder=5, label=f"pick: trial {chosen.number}")  # fmt: skip
    ax.set_xlabel(label, fontsize=9 if front else 8)
    ax.set_ylabel("validation accuracy (%)")
    values = xs(have) + ([limit] if limit is not None else [])
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    if not front:
        ax.tick_params(labelsize=8)
        if limit is None:
            ax.set_title("no budget on this", fontsize=8, color="gray")


def _importance_panel(study: optuna.Study, ax: Any) -> None:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ax.set_title(f"parameter importance for val accuracy\n(PED-ANOVA, {len(done)} trials)",
                 fontsize=10)  # fmt: skip
    imp = importance(study)
    if not imp:
        ax.text(0.5, 0.5, "needs more completed trials", ha="center", va="center")
        ax.set_axis_off()
        return
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="tab:green")
    ax.set_xlabel("share of importance")


# --- export card ---------------------------------------------------------------------------------


def _kib(n: Any) -> str:
    return "unknown" if n is None else f"{n / 1024:.1f} KiB ({n:,} B)"


def export_table(card: dict[str, Any], out: str) -> Table:
    """What ``hwsparse export`` wrote and measured (``card`` from hwsparse.deploy.export)."""
    acc, est, agree = card["accuracy"], card["estimate"], card["agreement"]
    t = Table(title=f"Exported to {out}/", title_justify="left")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_column("how it was obtained")
    target = card["target"]
    t.add_row("artifact", card["artifact"], f"{card['format']} {card['dtype']}")
    t.add_row("target", target["id"], target["runtime"])
    t.add_row("artifact size", _kib(card["artifact_bytes"]), "file on disk")
    t.add_row("weights (estimate)", _kib(est["weight_bytes"]), ", ".join(est["weight_formats"]))
    t.add_row(
        "parameters",
        f"{card['params']:,}",
        f"compacted from {card['params_before_compaction']:,}",
    )
    t.add_row("latency ms", _ms(est), r"profile estimate \[band], batch 1")
    t.add_row("FLOPs", f"{est['flops']:,}", "1 multiply-add = 1 flop")
    band = acc.get("artifact_test_interval")
    where = f"{card['runtime_verified']}, {acc['n']} samples of {acc['dataset']}"
    if band is not None:
        where += f"; 95 % interval {100 * band[0]:.1f}-{100 * band[1]:.1f} %"
    t.add_row(f"test accuracy ({card['dtype']} artifact)", f"{_pct(acc['artifact_test'])} %",
              where)  # fmt: skip
    t.add_row("test accuracy (fp32 torch)", f"{_pct(acc['fp32_test'])} %", "compacted network")
    t.add_row(
        "test accuracy (simulated)", f"{_pct(acc['simulated_test'])} %", "what the search scored"
    )
    measure = (
        f"{100 * agree['argmax']:.2f} % same class"
        if card["dtype"] == "int8"
        else f"max |diff| {agree['max_abs_diff']:.2e}"
    )
    ok = "[green]ok[/green]" if agree["ok"] else "[red]MISMATCH[/red]"
    t.add_row("agreement with torch", f"{measure} {ok}", f"{agree['n_checked']} test inputs")
    io = card["input"]
    if io.get("scale") is not None:
        t.add_row(
            "input quantization",
            f"q = x / {io['scale']:.6g} + {io['zero_point']}",
            f"{io.get('dtype')} {io.get('shape')}",
        )
    prep = io.get("preprocessing")
    if prep:
        t.add_row("input preprocessing", str(prep.get("description")), "raw sample -> input")
    t.add_row("card", "card.json", "all of the above, with units and how it was found")
    return t
