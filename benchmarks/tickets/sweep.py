"""Re-select the ticket defaults on validation only, over several datasets together.

Runs the log ticket (``--strength auto``) at 5, 2 and 1 % density for every knob setting of
``GRID`` on every case of ``--cases``, with seeds disjoint from the benchmark's (10 and 11 by
default; the benchmark reports seeds 0-2), one JSONL per case (resumable, run.py's format).
``--report`` ranks the settings by validation accuracy only: the mean over every (case, density,
seed) cell, each case weighted equally. Test accuracy is never read here.

    python benchmarks/tickets/sweep.py                       # runs what is missing
    python benchmarks/tickets/sweep.py --report              # the ranking
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import run as bench  # noqa: E402

HERE = Path(__file__).parent
# One knob at a time around the defaults before this sweep (search_epochs 30, mask_lr 0.01,
# log eps 0.05, auto_ramp 0.6, auto_rate 0.02), then the controller's ramp and rate, which the
# first round showed to matter on mnist10k (README.md). Each entry names every knob it moves
# from today's defaults, so the committed runs stay the same runs when the defaults change.
OLD = "auto_ramp=0.6,auto_rate=0.02"
GRID = [
    OLD,
    f"{OLD},search_epochs=15",
    f"{OLD},search_epochs=60",
    f"{OLD},mask_lr=0.005",
    f"{OLD},mask_lr=0.02",
    f"{OLD},eps=0.025",
    f"{OLD},eps=0.1",
    "auto_ramp=0.2,auto_rate=0.02",
    "auto_ramp=0.6,auto_rate=0.005",
    "auto_ramp=0.2,auto_rate=0.005",
    "auto_ramp=0.2,auto_rate=0.002",
    "auto_ramp=0.2,auto_rate=0.005,eps=0.025",
]
CASES = "digits:mlp,mnist10k:mlp"


def out_path(case: str) -> Path:
    dataset, model = case.split(":")
    return HERE / f"sweep_{dataset}_{model}.jsonl"


def sweep(args: argparse.Namespace) -> None:
    for knobs in args.grid.split(";"):
        for case in args.cases.split(","):
            dataset, model = case.split(":")
            bench.run(argparse.Namespace(
                dataset=dataset, model=model, densities=args.densities, methods="log",
                seeds=args.seeds, first_seed=args.first_seed, epochs=20, rewind_steps=0,
                lr=1e-3, knobs=knobs, threads=1, out=str(out_path(case))))  # fmt: skip


def report(cases: list[str]) -> str:
    """Settings ranked by mean validation accuracy (cases weighted equally)."""
    per: dict[str, dict[str, list[float]]] = {}
    for case in cases:
        for r in bench.load_rows(out_path(case)):
            if r["status"] == "ok":
                key = bench.settings(r)
                per.setdefault(key, {}).setdefault(case, []).append(100 * r["val_accuracy"])
    complete = {k: v for k, v in per.items() if set(v) == set(cases)}
    score = {k: statistics.fmean(statistics.fmean(v[c]) for c in cases)
             for k, v in complete.items()}  # fmt: skip
    lines = [
        "| settings | mean val acc % | " + " | ".join(f"{c} val % (runs)" for c in cases) + " |",
        "|---|---|" + "---|" * len(cases),
    ]
    # complete settings ranked first; then the ones some case lacks (not ranked)
    for key in sorted(per, key=lambda k: (k not in score, -score.get(k, 0.0))):
        cells = " | ".join(
            f"{statistics.fmean(per[key][c]):.2f} ({len(per[key][c])})" if c in per[key] else "-"
            for c in cases
        )
        mean = f"{score[key]:.2f}" if key in score else "not run on every case"
        lines.append(f"| {key} | {mean} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default=CASES, help="dataset:model pairs, comma-separated")
    p.add_argument("--grid", default=";".join(GRID), help="knob settings, ';'-separated")
    p.add_argument("--densities", default="0.05,0.02,0.01")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=10)
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    if args.report:
        print(report(args.cases.split(",")))
    else:
        sweep(args)


if __name__ == "__main__":
    main()
