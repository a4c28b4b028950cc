"""Is there anything for a study to find? The regularizer's effect against seed noise.

For one case of ``run.py`` (dataset, model, target, budget), the granularity is fixed
(``--granularity``, channel by default: the tickets that run faster, and the best trials of
every case) and the density at the initial design's first point for it
(``search.initial_design``: the largest density at which a magnitude mask fits the budget;
above it the budget cut would cut anyway), and ``--settings K``
regularizer settings are drawn at random from the default space (penalty, masks, temperature,
mask lr, eps), plus the default regularizer (setting 0). Each setting is trained ``--repeats R``
times through the search pipeline (budget cut, no pruning; a trial's seed is the study seed +
its number, so every repeat has its own initialisation and batch order), the repeats taking
turns so that a stopped run stays balanced. Every ticket is evaluated on val and, once, on test.

The report says how much of the spread between tickets the setting explains (one-way ANOVA;
eta^2 = between-setting / total sum of squares) and what picking the best setting would gain:
chosen by mean val over the first half of the repeats, its test accuracy against the default's
over the second half (Welch 95 % interval), so the choice and its measure use different
trainings. A study can beat the fixed default regularizer only where that gain is positive and
larger than what it costs to find it. Last, the lottery within a setting: how far above its
setting's mean the repeat with the best val tests, and how well val and test agree between
repeats of one setting (what ``search.redraw`` relies on), and what the best-by-val of k
repeats tests at, k doubling: how much more draws pay without any learning.

    python benchmarks/search/landscape.py --cases mnist1d-nrf52840 --epochs 5 \
        --out benchmarks/search/results/landscape.jsonl --keep /tmp/landscape
    python benchmarks/search/landscape.py --report benchmarks/search/results/landscape.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from itertools import combinations
from pathlib import Path
from typing import Any

import optuna
from run import CASES, setup, test_of  # benchmarks/search/run.py
from scipy.stats import f_oneway
from scipy.stats import t as student_t

from hwsparse import search
from hwsparse import storage as stores
from hwsparse.cost.profiles import load_profile
from hwsparse.data import load_dataset
from hwsparse.models import build_model

BUDGET_KNOBS = ("density", "granularity")


def settings_of(
    case: str, seed: int, epochs: int, k: int, granularity: str
) -> tuple[Any, Any, list[dict]]:
    """(config, space with the budget knobs fixed, [default regularizer, k random ones])."""
    config, space = setup(case, "tpe", seed, epochs)
    data = load_dataset(config.dataset)
    factory = lambda: build_model(config.model, data.input_shape, data.num_classes)  # noqa: E731
    design = search.initial_design(
        config, space, load_profile(config.target), factory, data.input_shape
    )
    first = next(p for p in design if p["granularity"] == granularity)
    fixed = search.fix_knobs(space, **{name: first[name] for name in BUDGET_KNOBS})
    default = {name: v for name, v in first.items() if name not in BUDGET_KNOBS}
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    settings = [default]
    while len(settings) < k + 1:
        trial = draw.ask()
        search.suggest(trial, fixed)
        if trial.params not in settings:
            settings.append(trial.params)
        draw.tell(trial, 0.0)
    return replace(config, space=fixed.as_dict()), fixed, settings


def run_case(
    case: str, seed: int, epochs: int, k: int, repeats: int, granularity: str, keep: Path
) -> list[dict]:
    config, space, settings = settings_of(case, seed, epochs, k, granularity)
    queue = [s for _ in range(repeats) for s in settings]
    journal = keep / f"{case}-{granularity}-{epochs}ep-{seed}.journal"
    storage = stores.open_storage(journal, create=True)
    outcome = search.run_search(
        "landscape", storage, config, space, trials=len(queue), device="cpu",
        enqueue=queue, design=False, sampler="random", pruner="none", in_total=True,
        pick_best=False,
    )  # fmt: skip
    data = load_dataset(config.dataset)
    fixed = dict(space.fixed)
    rows = []
    for t in sorted(outcome.study.trials, key=lambda t: t.number)[: len(queue)]:
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        rows.append({
            "case": case, "epochs": epochs, "seed": seed, "trial": t.number,
            "setting": t.number % len(settings), "repeat": t.number // len(settings),
            "params": settings[t.number % len(settings)],
            "density": fixed["density"], "granularity": fixed["granularity"],
            "achieved_density": t.user_attrs.get("density"),
            "feasible": search.feasible(t), "val": t.user_attrs["val_accuracy"],
            "test": test_of(outcome.study, t, outcome.storage, data),
        })  # fmt: skip
    return rows


def describe(params: dict[str, Any]) -> str:
    parts = [str(params.get("penalty", "log")), str(params.get("param", "projected"))]
    if "temperature" in params:
        parts.append(f"T {params['temperature']:.2f}")
    parts += [f"mask lr {params.get('mask_lr', 0.01):.3g}", f"eps x{params['eps_factor']:.2f}"]
    return ", ".join(parts)


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of a - b and the half-width of its 95 % Welch interval."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb else 1.0
    return statistics.fmean(a) - statistics.fmean(b), student_t.ppf(0.975, dof) * (va + vb) ** 0.5


def key(row: dict[str, Any]) -> tuple[str, str, int, int]:
    """One landscape: its case, granularity, epochs and study seed."""
    return row["case"], row["granularity"], row["epochs"], row["seed"]


def best_of(group: list[dict[str, Any]], k: int) -> float:
    """Expected test % of the best-by-val of ``k`` repeats of one setting: the mean over every
    k-subset of its repeats (ties on val share the pick: their mean test)."""
    picks = []
    for subset in combinations(group, k):
        top = max(r["val"] for r in subset)
        picks.append(statistics.fmean(100 * r["test"] for r in subset if r["val"] == top))
    return statistics.fmean(picks)


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    out = []
    for one in sorted({key(r) for r in rows}):
        case, _, epochs, seed = one
        rs = [r for r in rows if key(r) == one and r["feasible"]]
        by: dict[int, list[dict]] = {}
        for r in rs:
            by.setdefault(r["setting"], []).append(r)
        r0 = rs[0]
        out += [f"### {case}, {epochs} + {epochs} epochs, {r0['granularity']} density "
                f"{r0['density']:.4f} (study seed {seed})", "",
                "| setting | regularizer | test % mean ± sd | val % mean | repeats |",
                "|---|---|---|---|---|"]  # fmt: skip
        for s, group in sorted(by.items(), key=lambda kv: -statistics.fmean(
                r["val"] for r in kv[1])):  # fmt: skip
            test = [100 * r["test"] for r in group]
            sd = statistics.stdev(test) if len(test) > 1 else 0.0
            name = ("default: " if s == 0 else "") + describe(group[0]["params"])
            val = 100 * statistics.fmean(r["val"] for r in group)
            out.append(f"| {s} | {name} | {statistics.fmean(test):.2f} ± {sd:.2f} | "
                       f"{val:.2f} | {len(test)} |")  # fmt: skip
        groups = [[100 * r["test"] for r in g] for g in by.values() if len(g) > 1]
        f, p = f_oneway(*groups)
        allv = [x for g in groups for x in g]
        grand = statistics.fmean(allv)
        between = sum(len(g) * (statistics.fmean(g) - grand) ** 2 for g in groups)
        total = sum((x - grand) ** 2 for x in allv)
        within_sd = statistics.fmean(statistics.variance(g) for g in groups) ** 0.5
        means_sd = statistics.stdev(statistics.fmean(g) for g in groups)
        half = max(r["repeat"] for r in rs) // 2 + 1  # first half picks, second half measures
        early = {s: [r["val"] for r in g if r["repeat"] < half] for s, g in by.items()}
        best = max((s for s in early if early[s]), key=lambda s: statistics.fmean(early[s]))
        late = {s: [100 * r["test"] for r in g if r["repeat"] >= half] for s, g in by.items()}
        gain, hw = welch(late[best], late[0]) if len(late[best]) > 1 else (float("nan"), 0.0)
        # the lottery within a setting: does val find the luckier seed? (search.redraw)
        lucky = [100 * max(g, key=lambda r: r["val"])["test"]
                 - statistics.fmean(100 * r["test"] for r in g) for g in by.values()]  # fmt: skip
        corr = [statistics.correlation([r["val"] for r in g], [r["test"] for r in g])
                for g in by.values() if len({r["val"] for r in g}) > 1
                and len({r["test"] for r in g}) > 1]  # fmt: skip
        out += ["", f"- setting explains eta^2 = {between / total:.2f} of the test variance "
                f"(ANOVA F = {f:.2f}, p = {p:.3g}); within-setting sd {within_sd:.2f} points, "
                f"sd of the setting means {means_sd:.2f}",
                f"- best by val on repeats 0-{half - 1}: setting {best}; on repeats {half}-"
                f"{max(r['repeat'] for r in rs)} its test minus the default's: "
                f"{gain:+.2f} points [{gain - hw:+.2f}, {gain + hw:+.2f}]",
                f"- within a setting, the repeat best on val tests {statistics.fmean(lucky):+.2f} "
                f"points above the setting's mean (mean over settings; the default: "
                f"{lucky[list(by).index(0)]:+.2f}); val-test correlation between repeats: "
                f"median {statistics.median(corr):.2f} over settings"]  # fmt: skip
        # more draws keep paying: the best-by-val of k draws, k doubling (a study that draws
        # twice as often, 40 trials against 20, gains about the last step without learning)
        n = min(len(g) for g in by.values())
        ks = [k for k in (1, 2, 4, 8, 16) if k <= n]
        draws = {k: statistics.fmean(best_of(g, k) for g in by.values()) for k in ks}
        out += ["- test % of the best by val of k draws of one setting (mean over settings): "
                + ", ".join(f"k = {k}: {draws[k]:.2f}" for k in ks)
                + f"; the last doubling gains {draws[ks[-1]] - draws[ks[-2]]:+.2f} points",
                ""]  # fmt: skip
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default="digits-nrf52840,mnist1d-nrf52840,mnist10k-rpi4")
    p.add_argument("--seed", type=int, default=0, help="study seed (draws the settings)")
    p.add_argument("--settings", type=int, default=7, help="random settings besides the default")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--granularity", choices=("channel", "weight"), default="channel")
    p.add_argument("--out", default="benchmarks/search/results/landscape.jsonl")
    p.add_argument("--keep", default="landscape-studies", help="the studies (resumable)")
    p.add_argument("--report", metavar="JSONL")
    args = p.parse_args()
    if args.report:
        print(report(Path(args.report)))
        return
    out, keep = Path(args.out), Path(args.keep)
    keep.mkdir(parents=True, exist_ok=True)
    for case in args.cases.split(","):
        if case not in CASES:
            sys.exit(f"unknown case {case!r}; valid: {', '.join(CASES)}")
        rows = run_case(case, args.seed, args.epochs, args.settings, args.repeats,
                        args.granularity, keep)  # fmt: skip
        done = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
        done = [r for r in done if rows and key(r) != key(rows[0])]
        out.write_text("".join(json.dumps(r) + "\n" for r in done + rows))
        print(report(out))


if __name__ == "__main__":
    main()
