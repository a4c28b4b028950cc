"""Tuned regularizer vs the default and IMP (issue 13): `hwsparse tune` per cell.

For each dataset x density: a tune study of --trials trials (search_spaces/tune.yaml, mlp), then
the answer with evidence (best on validation re-run for --seeds seeds, the default regularizer
for the same seeds, IMP on seed 0, importances). One JSON line per cell, with the wall time.

Full grid (what the issue asks; about 2 h on the 2-core development VM, 1 thread):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune/run.py \
        --datasets digits,mnist10k --densities 0.05,0.01 --trials 30 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hwsparse import storage as stores
from hwsparse import tune
from hwsparse.space import load_space

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="digits,mnist10k")
    ap.add_argument("--densities", default="0.05,0.01")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="fix both schedules (default: space)")
    ap.add_argument("--out", default=str(HERE / "results" / "results.jsonl"))
    ap.add_argument("--storage", default=str(HERE / "results" / "tune.journal"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    store = stores.open_storage(args.storage, create=True)
    for dataset in args.datasets.split(","):
        for density in (float(d) for d in args.densities.split(",")):
            config = tune.TuneConfig(dataset=dataset, model="mlp", density=density)
            space = tune.tune_space(load_space("tune"), config, args.epochs)
            config = tune.TuneConfig(**{**config.__dict__, "space": space.as_dict()})
            name = f"{dataset}-{density:g}-e{args.epochs or 'space'}"
            t0 = time.perf_counter()
            outcome = tune.run_tune(name, store, config, space, trials=args.trials,
                                    seeds=args.seeds, device="cpu")  # fmt: skip
            row = {"dataset": dataset, "model": "mlp", "density": density,
                   "trials": args.trials, "epochs": args.epochs,
                   "wall_seconds": round(time.perf_counter() - t0, 1),
                   **(outcome.answer or {})}  # fmt: skip
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            a = outcome.answer or {}
            print(name, row["wall_seconds"], "s",
                  "best", a.get("best", {}).get("test_accuracy_mean"),
                  "default", a.get("default", {}).get("test_accuracy_mean"),
                  "imp", a.get("imp", {}).get("test_accuracy"), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
