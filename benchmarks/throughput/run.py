"""Candidates per hour: population-batched trials (--batch-trials K) against one at a time.

``speed``: one worker, the default study (default search space: 10 search + 10 ticket epochs
per trial, TPE, median pruner, the budget cut), N trials per setting, settings run one after
another in one process, one torch thread; trials per hour = N / wall seconds x 3600.
``quality``: the best feasible val accuracy after N trials, batched (K = 8) and solo (K = 1),
for each seed, side by side.

    python benchmarks/throughput/run.py speed --trials 16 > results_speed.md
    python benchmarks/throughput/run.py speed --device cuda --k 1,8,64 --epochs 2  # GPU
    python benchmarks/throughput/run.py quality --trials 32 --seeds 3 > results_quality.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import torch

from hwsparse import search
from hwsparse import storage as stores
from hwsparse.cost.estimate import Budget
from hwsparse.space import load_space

# (dataset, model, target, budget): the main job, and LeNet-5 on MNIST with a target it fits
CASES = {
    "digits / mlp": ("digits", "mlp", "nrf52840", Budget(latency_ms=1.0, weight_kb=16.0)),
    "mnist10k / lenet5": ("mnist10k", "lenet5", "raspberry-pi-4", Budget(latency_ms=1.0)),
}


def study(
    case: str,
    batch: str,
    trials: int,
    seed: int,
    tmp: Path,
    device: str = "cpu",
    epochs: int | None = None,
) -> search.SearchOutcome:
    dataset, model, target, budget = CASES[case]
    space = search.apply_epochs(load_space("default"), epochs)
    config = search.SearchConfig(dataset=dataset, model=model, target=target, budget=budget,
                                 space=space.as_dict(), seed=seed)  # fmt: skip
    storage = stores.open_storage(tmp / f"{dataset}-{model}-{batch}-{seed}.journal", create=True)
    return search.run_search("bench", storage, config, space, trials=trials, device=device,
                             batch_trials=batch)  # fmt: skip


def best_feasible(outcome: search.SearchOutcome) -> float:
    feasible = [t for t in outcome.study.trials if search.feasible(t)]
    return max((float(t.user_attrs["val_accuracy"]) for t in feasible), default=float("nan"))


def speed(
    trials: int, cases: list[str], ks: list[str], device: str, epochs: int | None, tmp: Path
) -> None:
    """Trials per hour for each --batch-trials setting in ``ks`` (a K runs at least K trials,
    so that one population fills)."""
    print(f"at least {trials} trials per setting (K trials if more), seed 0, device {device}, "
          f"one torch thread, epochs {epochs or 'of the default space'}; trials/hour = trials "
          "/ wall time")  # fmt: skip
    print()
    print("| dataset / model | " + " | ".join(f"K = {k} trials/h" for k in ks) + " | "
          + " | ".join(f"{k} vs {ks[0]}" for k in ks[1:]) + " |")  # fmt: skip
    print("|---|" + "---|" * (2 * len(ks) - 1))
    for case in cases:
        rate: dict[str, float] = {}
        for k in ks:
            n = max(trials, int(k)) if k.isdigit() else trials
            t0 = time.perf_counter()
            study(case, k, n, 0, tmp, device, epochs)
            rate[k] = n / (time.perf_counter() - t0) * 3600
        cells = [f"{rate[k]:.0f}" for k in ks] + [f"{rate[k] / rate[ks[0]]:.2f}x" for k in ks[1:]]
        print(f"| {case} | " + " | ".join(cells) + " |", flush=True)


def quality(trials: int, seeds: int, case: str, tmp: Path) -> None:
    print(f"{case}, default study: best feasible val accuracy (%) after {trials} trials")
    print()
    print("| seed | solo (K = 1) | batched (K = 8) |")
    print("|---|---|---|")
    solo, batched = [], []
    for seed in range(seeds):
        solo.append(best_feasible(study(case, "1", trials, seed, tmp)))
        batched.append(best_feasible(study(case, "8", trials, seed, tmp)))
        print(f"| {seed} | {100 * solo[-1]:.2f} | {100 * batched[-1]:.2f} |", flush=True)
    print(f"| mean | {100 * statistics.fmean(solo):.2f} | {100 * statistics.fmean(batched):.2f} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("part", choices=["speed", "quality"])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--case", action="append", choices=list(CASES))
    p.add_argument("--k", default="1,8,auto", help="speed: --batch-trials settings, comma list")
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, help="fix search and ticket epochs (default: space's)")
    args = p.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        if args.part == "speed":
            ks = args.k.split(",")
            speed(args.trials, args.case or list(CASES), ks, args.device, args.epochs, Path(tmp))
        else:
            quality(args.trials, args.seeds, (args.case or ["digits / mlp"])[0], Path(tmp))


if __name__ == "__main__":
    main()
