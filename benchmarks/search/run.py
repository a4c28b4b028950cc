"""Does tuning the regularizer with our study pay off under a device budget?

For each (dataset, model, target, budget) case and seed, three studies of N trials each:
- ``tpe``: hwsparse search as shipped (TPE, median pruner, budget-aware cut, the initial design
  of known-good first trials: ``search.initial_design``, the last quarter of the trials
  redrawing the best settings with new seeds: ``search.redraw``), default space (the "budget
  phase" of commits 43904f3-200c943 was measured and removed: README.md);
- ``tpe-noredraw``, ``tpe-nodesign``: the same without the redraws, without the initial design
  (the ablations; rows record ``redraws``, and rows without it predate them);
- ``tpe-group``, ``gp``: the same with TPE over conditional groups, or Optuna's GPSampler
  (``search.make_sampler``); ``tpe-hyperband``: with the HyperbandPruner instead of the median
  rule (``search.make_pruner``, the multi-fidelity ablation);
- ``random``: the same pipeline and space with Optuna's RandomSampler, no initial design, no
  redraws;
- ``fixed``: the default regularizer (log penalty, default eps, mask lr, projected masks), only
  the budget knobs (density, granularity) searched, TPE, no redraws (the baseline as before);
  ``fixed-redraw``: the same with the shipped redraws;
- ``tpe-edge``: ``tpe`` with the initial design at the budget's edge only (an ablation).
At each checkpoint (10, 20, 40 trials) the pick among the first k trials (most accurate feasible
on validation) is evaluated once on test. Also records time per trial split into training and
cost estimation. Results are appended to a JSONL per finished study (resumable).

    python benchmarks/search/run.py --out benchmarks/search/results/digits.jsonl
    python benchmarks/search/run.py --report benchmarks/search/results/digits.jsonl
    python benchmarks/search/run.py --report FILE --paired tpe,fixed   # seed by seed
    python benchmarks/search/run.py --report FILE --convergence   # gain from 20 to 40 trials
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from scipy.stats import t as student_t

from hwsparse import artifact_store, crossval, search
from hwsparse import storage as stores
from hwsparse.cost.budget import floors
from hwsparse.cost.estimate import Budget, estimate
from hwsparse.cost.profiles import load_profile
from hwsparse.data import load_dataset
from hwsparse.models import build_model
from hwsparse.space import load_space, parse_space
from hwsparse.tickets import load_ticket


@dataclass(frozen=True)
class LatencyBetween:
    """A latency budget ``fraction`` of the way from the model's floor (every weight pruned,
    ``hwsparse.cost.budget.floors``) to its dense latency, on the target's profile as it is
    now. Absolute budgets near the floor went stale with each profile refit (0.1 ms on STM32H7,
    0.25 ms on the Pi 4); this one stays "the dense network misses it, a sparse one fits"."""

    fraction: float

    def resolve(self, dataset: str, model: str, target: str) -> Budget:
        data, profile = load_dataset(dataset), load_profile(target)
        net = build_model(model, data.input_shape, data.num_classes)
        dense = estimate(net, data.input_shape, profile).latency_ms
        floor = floors(profile, net, data.input_shape).floor("latency_ms")
        assert floor is not None
        return Budget(latency_ms=round(floor + self.fraction * (dense - floor), 4))


CASES: dict[str, tuple[str, str, str, Budget | LatencyBetween]] = {
    "digits-nrf52840": ("digits", "mlp", "nrf52840", Budget(latency_ms=1.0, weight_kb=16.0)),
    # from 2026-11-30 22:50 UTC, a third of the way from floor to dense (was 0.1 ms, which the
    # refit of d97f8b5 left 2 % above the floor; now 0.163 ms: floor 0.098, dense 0.293)
    "digits-stm32h7": ("digits", "mlp", "stm32h7", LatencyBetween(1 / 3)),
    "mnist1d-nrf52840": ("mnist1d", "conv1d", "nrf52840", Budget(latency_ms=0.8)),
    "mnist1d-stm32h7": ("mnist1d", "conv1d", "stm32h7", LatencyBetween(1 / 3)),
    # was 0.25 ms (dense 0.303, floor 0.224 before the Pi 4 refit; now floor 0.315, dense 0.363)
    "mnist10k-rpi4": ("mnist10k", "lenet5", "raspberry-pi-4", LatencyBetween(1 / 3)),
}
CHECKPOINTS = (10, 20, 40)
# method -> (sampler, initial design, pruner, redraws); those in NARROWED also search fewer knobs
METHODS = {
    "tpe": ("tpe", True, "median", True),
    "tpe-noredraw": ("tpe", True, "median", False),
    "tpe-nodesign": ("tpe", False, "median", True),
    "tpe-group": ("tpe-group", True, "median", True),
    "gp": ("gp", True, "median", True),
    "tpe-hyperband": ("tpe", True, "hyperband", True),
    "random": ("random", False, "median", False),
    "fixed": ("tpe", False, "median", False),
    "fixed-redraw": ("tpe", False, "median", True),
    "tpe-lean": ("tpe", True, "median", True),
    "tpe-edge": ("tpe", True, "median", True),
}
# method -> the initial design's fractions of the largest fitting density, where not the
# shipped search.DESIGN_FRACTIONS ("tpe-edge": only the budget's edge, one point per granularity)
DESIGN = {"tpe-edge": (1.0,)}
# method -> the only knobs of the default space it searches (the others keep their defaults):
# "fixed" is the default regularizer with only the budget knobs searched ("fixed-redraw": the
# same with the shipped redraws, which then redraw the best densities); "tpe-lean" adds the
# knobs with importance above 0.1 on mnist10k (results/connected_mnist10k.jsonl)
NARROWED = {
    "fixed": ("density", "granularity"),
    "fixed-redraw": ("density", "granularity"),
    "tpe-lean": ("density", "granularity", "mask_lr"),
}


def setup(
    case: str, method: str, seed: int, epochs: int, density_high: float | None = None
) -> tuple[Any, Any]:
    """The (SearchConfig, SearchSpace) of one benchmark study; ``density_high`` replaces the
    top of the density range (1.0 in the default space; 0.5 before 2026-12-01)."""
    dataset, model, target, budget = CASES[case]
    if isinstance(budget, LatencyBetween):
        budget = budget.resolve(dataset, model, target)
    data = search.apply_epochs(load_space("default"), epochs).as_dict()
    if dataset == "mnist1d":
        data["fixed"]["lr"] = 0.01  # conv1d on MNIST-1D needs lr 1e-2
    if method in NARROWED:
        data["params"] = {k: v for k, v in data["params"].items() if k in NARROWED[method]}
    if density_high is not None:
        data["params"]["density"]["high"] = density_high
    space = parse_space(data, method)
    config = search.SearchConfig(dataset=dataset, model=model, target=target, budget=budget,
                                 space=space.as_dict(), seed=seed)  # fmt: skip
    return config, space


def test_of(study: Any, trial: Any, storage: Any, data: Any) -> float:
    """The trial's ticket on the test split, fp32."""
    with tempfile.TemporaryDirectory() as d:
        ticket = load_ticket(artifact_store.fetch_ticket(study, trial, storage, Path(d)))
    with torch.no_grad():
        return float((ticket.model(data.x_test).argmax(1) == data.y_test).float().mean())


def checkpoint_picks(
    study: Any, storage: Any, config: Any, space: Any, cv: bool = True
) -> dict[str, Any]:
    """At each checkpoint k, among the first k trials: the pick by validation (the shipped
    rule, ``test_at_k``) and, on a small val split, the cross-validated best of the shortlist
    (``crossval.shortlist`` / ``choose``: the rule measured and not kept, ``test_cv_at_k``),
    each on test once; ``cv_at_k``: the pooled cross-validated accuracy of that pick,
    ``cv_of_val_pick_at_k``: of the shipped pick (what the card shows). ``cv=False`` skips
    the cross-validation (``--no-cv``: half a MNIST-1D study's time)."""
    data = load_dataset(config.dataset)
    dtype = load_profile(config.target).engine().dtype
    judge = search.fold_judge(study, storage, config, space, dtype, "cpu")
    trials_all = sorted(study.trials, key=lambda t: t.number)
    row: dict[str, Any] = {}
    for k in CHECKPOINTS:
        first = [t for t in trials_all[:k] if search.feasible(t)]
        if not first:
            row[f"test_at_{k}"] = row[f"test_cv_at_{k}"] = None
            continue
        best = search.pick_among(first)
        assert best is not None
        row[f"test_at_{k}"] = test_of(study, best, storage, data)
        row[f"val_at_{k}"] = best.user_attrs["val_accuracy"]
        if not cv or not crossval.needed(first):
            continue
        save = lambda v: study.set_user_attr(crossval.CV_ATTR, v)  # noqa: E731
        short = crossval.shortlist(first)
        crossval.run(study.user_attrs.get(crossval.CV_ATTR), save, short, data, judge,
                     config.seed)  # fmt: skip
        stored = study.user_attrs.get(crossval.CV_ATTR)
        chosen = crossval.choose(stored, short)
        assert chosen is not None
        row[f"val_pick_at_{k}"], row[f"pick_at_{k}"] = best.number, chosen.number
        row[f"test_cv_at_{k}"] = test_of(study, chosen, storage, data)
        for key, t in ((f"cv_at_{k}", chosen), (f"cv_of_val_pick_at_{k}", best)):
            judged = crossval.judged(stored, t.number)
            row[key] = judged.accuracy if judged else None
    return row


def environment() -> dict[str, str]:
    """What a row's numbers may depend on beyond code and seed: conv training is not bitwise
    reproducible across CPUs (README.md, "A caveat on pairing across sessions")."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [x.split(":", 1)[1].strip() for x in cpuinfo.read_text().splitlines()
                 if x.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "optuna": optuna.__version__}  # fmt: skip


def run_one(
    case: str,
    method: str,
    seed: int,
    trials: int,
    epochs: int,
    tmp: Path,
    density_high: float | None = None,
    cv: bool = True,
) -> dict:
    config, space = setup(case, method, seed, epochs, density_high)
    storage = stores.open_storage(tmp / f"{case}-{method}-{seed}.journal", create=True)
    name = "bench"
    sampler, design, pruner, redraws = METHODS[method]
    shipped = search.DESIGN_FRACTIONS
    search.DESIGN_FRACTIONS = DESIGN.get(method, shipped)
    try:
        outcome = search.run_search(
            name, storage, config, space, trials=trials, device="cpu", sampler=sampler,
            design=design, pruner=pruner, redraws=redraws,
        )  # fmt: skip
    finally:
        search.DESIGN_FRACTIONS = shipped
    study = outcome.study
    trials_all = sorted(study.trials, key=lambda t: t.number)
    row: dict[str, Any] = {"case": case, "method": method, "seed": seed, "trials": trials,
                           "epochs": epochs, "budget": asdict(config.budget),
                           "redraws": redraws}  # fmt: skip
    if density_high is not None:
        row["density_high"] = density_high
    row["env"] = environment()
    row.update(checkpoint_picks(study, outcome.storage, config, space, cv))
    done = [t for t in trials_all if t.state == optuna.trial.TrialState.COMPLETE]
    row["train_s_median"] = statistics.median(t.user_attrs["train_seconds"] for t in done)
    row["cost_s_median"] = statistics.median(t.user_attrs["cost_seconds"] for t in done)
    # ticket epochs trained (pruned trials stop early): the compute a pruner saves
    row["ticket_epochs"] = sum(len(t.user_attrs.get("val_curve") or []) for t in trials_all)
    row["importance"] = search.importance(study)
    row["n_feasible"] = sum(search.feasible(t) for t in trials_all)
    row["n_pruned"] = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials_all)
    return row


def add_cv(path: Path, keep: Path) -> None:
    """Add the cross-validated picks (``checkpoint_picks``) to the rows of ``path`` that lack
    them, from the studies kept in ``keep`` (``--keep``); the file is rewritten."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        if "test_cv_at_10" in r:
            continue
        config, space = setup(r["case"], r["method"], r["seed"], r["epochs"],
                              r.get("density_high"))  # fmt: skip
        journal = keep / f"{r['case']}-{r['method']}-{r['seed']}.journal"
        storage = stores.open_storage(journal)
        study = optuna.load_study(study_name="bench", storage=storage.backend)
        storage = replace(storage, artifacts=artifact_store.of_study(study, storage))
        r.update(checkpoint_picks(study, storage, config, space))
        print(json.dumps(r), flush=True)
        path.write_text("".join(json.dumps(x) + "\n" for x in rows))


def report(path: Path, pick: str = "test") -> str:
    """The results table; ``pick``: ``test`` (the pick by validation, shipped) or ``test_cv``
    (the cross-validated best of the shortlist on small val splits, measured, not kept)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    lines = ["| case | method | " + " | ".join(f"test @{k}" for k in CHECKPOINTS)
             + " | feasible | pruned | train s/trial | cost s/trial | seeds |",
             "|---|---|" + "---|" * (len(CHECKPOINTS) + 5)]  # fmt: skip
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["method"]), []).append(r)
    for (case, method), rs in sorted(groups.items()):
        cells = []
        for k in CHECKPOINTS:
            vals = [100 * r[f"{pick}_at_{k}"] for r in rs if r.get(f"{pick}_at_{k}") is not None]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.fmean(vals):.2f} ± {sd:.2f} ({len(vals)})" if vals else "—")
        lines.append(
            f"| {case} | {method} | " + " | ".join(cells)
            + f" | {statistics.fmean(r['n_feasible'] for r in rs):.1f}"
            + f" | {statistics.fmean(r['n_pruned'] for r in rs):.1f}"
            + f" | {statistics.median(r['train_s_median'] for r in rs):.2f}"
            + f" | {statistics.median(r['cost_s_median'] for r in rs):.3f} | {len(rs)} |"
        )  # fmt: skip
    return "\n".join(lines)


def paired(path: Path, a: str, b: str) -> str:
    """Method ``a`` against ``b`` on the same seeds: per case and checkpoint, the mean of the
    per-seed differences in test accuracy (points) with a 95 % t interval, and how many seeds
    ``a`` won, tied and lost. A seed fixes the trials' initialisation and batch order and the
    sampler's seed (the data split is the same for all), so one seed's two rows are a pair;
    the interval says whether a gap is more than the spread between seeds."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by = {(r["case"], r["method"], r["seed"]): r for r in rows}
    head = f"| case | trials | {a} - {b} (points, 95 % t interval) | won / tied / lost | seeds |"
    lines = [head, "|---|---|---|---|---|"]
    for case in sorted({r["case"] for r in rows}):
        seeds = sorted(s for c, m, s in by if c == case and m == a and (c, b, s) in by)
        for k in CHECKPOINTS:
            pairs = [(by[case, a, s].get(f"test_at_{k}"), by[case, b, s].get(f"test_at_{k}"))
                     for s in seeds]  # fmt: skip
            diffs = [100 * (x - y) for x, y in pairs if x is not None and y is not None]
            if len(diffs) >= 2:
                won, lost = sum(d > 1e-9 for d in diffs), sum(d < -1e-9 for d in diffs)
                tied = len(diffs) - won - lost
                lines.append(f"| {case} | {k} | {mean_interval(diffs)} "
                             f"| {won} / {tied} / {lost} | {len(diffs)} |")  # fmt: skip
    return "\n".join(lines)


def mean_interval(diffs: list[float]) -> str:
    """Mean of per-seed differences (points) with its 95 % t interval."""
    mean = statistics.fmean(diffs)
    half = student_t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def convergence(path: Path) -> str:
    """How much each method still gains after half its trials: per case and method, test
    accuracy of the pick at the last checkpoint minus at the one before it, seed by seed (one
    study's two picks are a pair), and the seeds within 1 point (the issue's target)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    half, full = CHECKPOINTS[-2], CHECKPOINTS[-1]
    lines = [f"| case | method | test @{full} - @{half} (points, 95 % t interval) "
             "| seeds within 1 point | seeds |", "|---|---|---|---|---|"]  # fmt: skip
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        x, y = r.get(f"test_at_{full}"), r.get(f"test_at_{half}")
        if x is not None and y is not None:
            groups.setdefault((r["case"], r["method"]), []).append(100 * (x - y))
    for (case, method), diffs in sorted(groups.items()):
        if len(diffs) >= 2:
            near = sum(d <= 1.0 for d in diffs)
            lines.append(f"| {case} | {method} | {mean_interval(diffs)} | {near} | {len(diffs)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--methods", default="tpe,tpe-nodesign,random,fixed")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run: first .. first+seeds-1")
    p.add_argument("--trials", type=int, default=max(CHECKPOINTS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--density-high", type=float, help="top of the density range (default 1.0)")
    p.add_argument("--out", default="benchmarks/search/results/results.jsonl")
    p.add_argument("--report", metavar="JSONL")
    p.add_argument("--keep", metavar="DIR", help="keep the studies (journals, tickets) here")
    p.add_argument(
        "--pick",
        choices=("test", "test_cv"),
        default="test",
        help="--report: the pick by val (shipped) or the cross-validated shortlist's best",
    )
    p.add_argument(
        "--add-cv",
        action="store_true",
        help="add the cross-validated picks to --out's rows from --keep's studies",
    )
    p.add_argument("--no-cv", action="store_true", help="skip the cross-validated picks")
    p.add_argument(
        "--paired",
        metavar="A,B",
        help="--report: method A against method B seed by seed (mean difference, 95 %% interval)",
    )
    p.add_argument(
        "--convergence",
        action="store_true",
        help="--report: the gain from half the trials to all of them, seed by seed",
    )
    args = p.parse_args()
    if args.report and args.convergence:
        print(convergence(Path(args.report)))
        sys.exit(0)
    if args.report and args.paired:
        print(paired(Path(args.report), *args.paired.split(",", 1)))
        sys.exit(0)
    if args.report:
        print(report(Path(args.report), args.pick))
        sys.exit(0)
    torch.set_num_threads(1)
    if args.add_cv:
        add_cv(Path(args.out), Path(args.keep))
        sys.exit(0)
    out = Path(args.out)
    done = set()
    if out.exists():
        done = {(r["case"], r["method"], r["seed"]) for r in map(json.loads, out.open())}
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(args.keep or tmp)
        where.mkdir(parents=True, exist_ok=True)
        for case in args.cases.split(","):
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for method in args.methods.split(","):
                    if (case, method, seed) in done:
                        continue
                    row = run_one(case, method, seed, args.trials, args.epochs, where,
                                  args.density_high, not args.no_cv)  # fmt: skip
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
