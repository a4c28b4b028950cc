"""Reading studies back: trial rows, the Pareto front, the pick, pictures, export cards.

Plain data in, plain data or rich tables out; the CLI decides where they are printed.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from hwsparse.search import CONFIG_ATTR, PICK_ATTR, closest, feasible, pick

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
        "dtype": a.get("dtype"),
        "density": a.get("density"),
        "flops": a.get("flops"),
        "latency_ms": a.get("latency_ms"),
        "latency_ms_low": a.get("latency_ms_low"),
        "latency_ms_high": a.get("latency_ms_high"),
        "weight_bytes": a.get("weight_bytes"),
        "peak_activation_bytes": a.get("peak_activation_bytes"),
        "fits_budget": a.get("fits_budget"),
        "violations": a.get("violations"),
        "cut_from_density": a.get("cut_from_density"),
        "train_seconds": a.get("train_seconds"),
        "cost_seconds": a.get("cost_seconds"),
        "device": a.get("device"),
        "status": a.get("status"),
        "retry_of": a.get("retry_of"),
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
        "picked": pick_row(chosen, stored),
        "closest": trial_row(near) if near else None,
        "pareto_front": [t.number for t in pareto_front(study)],
    }


def pick_row(chosen: FrozenTrial | None, stored: dict[str, Any]) -> dict[str, Any] | None:
    if chosen is None:
        return None
    row = trial_row(chosen)
    same = stored.get("trial") == chosen.number
    row["test_accuracy"] = stored.get("test_accuracy") if same else None
    row["test_accuracy_fp32"] = stored.get("test_accuracy_fp32") if same else None
    return row


# --- rich tables ---------------------------------------------------------------------------------


def _pct(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


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


def trials_table(study: optuna.Study, limit: int | None = None) -> Table:
    """Trials, one row each (validation accuracy; latency is the target profile's estimate)."""
    t = Table(title=f"Trials of {study.study_name}", title_justify="left")
    cols = ("#", "state", "penalty", "gran", "density", "val %", "lat ms", "kFLOP", "KiB", "fits")
    for col in cols:
        t.add_column(
            col, justify="left" if col in ("state", "penalty", "gran", "fits") else "right"
        )
    trials = study.get_trials(deepcopy=False)
    for tr in trials[-limit:] if limit else trials:
        r = trial_row(tr)
        done = r["state"] == "COMPLETE"
        lat = r["latency_ms"]
        t.add_row(
            str(r["trial"]),
            _STATE.get(r["state"], r["state"].lower()),
            str(tr.params.get("penalty", "")),
            str(tr.params.get("granularity", ""))[:2],
            "—" if r["density"] is None else f"{r['density']:.3g}",
            _pct(r["val_accuracy"]),
            f"{lat:.3g}" if done and lat is not None else "—",
            "—" if r["flops"] is None else f"{r['flops'] / 1e3:.4g}",
            "—" if r["weight_bytes"] is None else f"{r['weight_bytes'] / 1024:.3g}",
            _fits(r, short=True) if done else "—",
        )
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
    t.add_row("trial", str(row["trial"]))
    for k, v in row["params"].items():
        t.add_row(f"  {k}", f"{v:.4g}" if isinstance(v, float) else str(v))
    dtype = row.get("dtype") or "fp32"
    t.add_row(f"val accuracy ({dtype}, as deployed)", f"{_pct(row['val_accuracy'])} %")
    if row.get("val_accuracy_fp32") is not None and dtype != "fp32":
        t.add_row("val accuracy (fp32)", f"{_pct(row['val_accuracy_fp32'])} %")
    if picked:
        t.add_row(
            f"test accuracy ({dtype}, evaluated once)", f"{_pct(row.get('test_accuracy'))} %"
        )
    t.add_row("density", f"{row['density']:.4f}")
    t.add_row("latency ms (estimate \\[band])", _ms(row))
    t.add_row("FLOPs (1 MAC = 1 flop)", f"{row['flops']:,}")
    t.add_row("weights", f"{row['weight_bytes'] / 1024:.1f} KiB")
    t.add_row("peak activations", f"{row['peak_activation_bytes'] / 1024:.1f} KiB")
    t.add_row("fits budget", _fits(row))
    return t


# --- pictures ------------------------------------------------------------------------------------


def plot_study(study: optuna.Study, path: str | Path) -> Path:
    """Accuracy vs latency (or MFLOPs), feasible vs not, budget line, pick; and importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = study.user_attrs.get(CONFIG_ATTR) or {}
    budget = config.get("budget", {})
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    use_latency = all(t.user_attrs.get("latency_ms") is not None for t in done) and done
    key, label, unit, limit = (
        ("latency_ms", "estimated latency on the target (ms)", "ms", budget.get("latency_ms"))
        if use_latency
        else ("flops", "MFLOPs (1 multiply-add = 1 flop)", "MFLOPs", budget.get("mflops"))
    )
    scale = 1.0 if key == "latency_ms" else 1e-6

    def xs(ts: list[FrozenTrial]) -> list[float]:
        return [float(t.user_attrs[key]) * scale for t in ts]

    def ys(ts: list[FrozenTrial]) -> list[float]:
        return [100 * float(t.user_attrs["val_accuracy"]) for t in ts]

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    ok = [t for t in done if feasible(t)]
    bad = [t for t in done if not feasible(t)]
    ax.scatter(xs(bad), ys(bad), c="lightgray", edgecolors="gray", label="over budget", s=28)
    ax.scatter(xs(ok), ys(ok), c="tab:blue", label="fits budget", s=28)
    front = pareto_front(study)
    if front:
        f = sorted(front, key=lambda t: float(t.user_attrs[key]))
        ax.plot(xs(f), ys(f), c="tab:blue", lw=1, alpha=0.6, label="Pareto front (feasible)")
    if limit is not None:
        ax.axvline(limit, c="tab:red", ls="--", lw=1, label=f"budget {limit:g} {unit}")
    chosen = pick(study)
    if chosen is not None:
        ax.scatter(xs([chosen]), ys([chosen]), marker="*", s=260, c="gold", edgecolors="black",
                   zorder=5, label=f"pick: trial {chosen.number}")  # fmt: skip
    ax.set_xlabel(label)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{study.study_name}: {config.get('model')} on {config.get('target')}")
    if xs(done) and min(xs(done)) > 0 and max(xs(done)) / min(xs(done)) > 20:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _importance_panel(study, ax2)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _importance_panel(study: optuna.Study, ax: Any) -> None:
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    ax.set_title(f"importance for validation accuracy (PED-ANOVA, {len(done)} trials)")
    try:
        with warnings.catch_warnings():
            # the evaluator warns that it ranks for low targets: we negate accuracy for that,
            # and that few trials make importances rough (the panel title says so)
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, target=lambda t: -float(t.user_attrs.get("val_accuracy", 0.0))
            )
    except (RuntimeError, ValueError, ZeroDivisionError):
        imp = {}
    if len(done) < 4 or not imp:
        ax.text(0.5, 0.5, "needs more completed trials", ha="center", va="center")
        ax.set_axis_off()
        return
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="tab:green")
    ax.set_xlabel("relative importance")


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
    t.add_row(f"test accuracy ({card['dtype']} artifact)", f"{_pct(acc['artifact_test'])} %",
              f"{card['runtime_verified']}, {acc['n']} samples of {acc['dataset']}")  # fmt: skip
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
    t.add_row("card", "card.json", "all of the above, with units and how it was found")
    return t
