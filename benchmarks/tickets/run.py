"""Accuracy vs density of the ticket method and the baselines, several seeds.

Every finished run is appended to a JSONL file at once, so a killed benchmark resumes where it
stopped (runs already recorded are skipped). `--report` turns the JSONL into a markdown table.

    python benchmarks/tickets/run.py --dataset digits --model mlp \
        --out benchmarks/tickets/digits_mlp.jsonl
    python benchmarks/tickets/run.py --report benchmarks/tickets/digits_mlp.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from hwsparse import train as T
from hwsparse.data import load_dataset
from hwsparse.models import build_model

METHODS = "dense,log,l1,exp,imp,cs,magnitude,random"


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)

    def factory() -> torch.nn.Module:
        return build_model(args.model, data.input_shape, data.num_classes)

    out = Path(args.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["method"], r["target_density"], r["seed"]))
    train = T.TrainConfig(
        epochs=args.epochs, lr=args.lr, rewind_steps=args.rewind_steps, device="cpu"
    )
    densities = [float(d) for d in args.densities.split(",")]
    for density in densities:
        for method in args.methods.split(","):
            target = 1.0 if method == "dense" else density
            for seed in range(args.seeds):
                if (method, target, seed) in done:
                    continue
                ticket = T.TicketConfig(auto_strength=True, density=density)
                t0 = time.perf_counter()
                r = T.run_method(method, factory, data, density, replace(train, seed=seed), ticket)
                row = {
                    **r.summary(),
                    "target_density": target,
                    "seed": seed,
                    "dataset": args.dataset,
                    "model": args.model,
                    "schedule_epochs": args.epochs,
                    "lr": args.lr,
                    "wall_s": round(time.perf_counter() - t0, 2),
                }
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                done.add((method, target, seed))
                print(
                    f"{method:<9} d={target:<5} seed={seed} test={r.test_accuracy:.4f} "
                    f"density={r.density:.4f} epochs={r.epochs} {row['wall_s']}s",
                    flush=True,
                )


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    groups: dict[tuple[float, str], list[dict[str, float]]] = {}
    for r in rows:
        groups.setdefault((r["target_density"], r["method"]), []).append(r)
    lines = [
        f"{rows[0]['dataset']} / {rows[0]['model']}, schedule {rows[0]['schedule_epochs']} "
        "epochs; test accuracy % (mean ± std over seeds), epochs = all training one run spent",
        "",
        "| density | method | test acc % | val acc % | achieved density | epochs | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for (density, method), rs in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        ok = [r for r in rs if r["status"] == "ok"]
        acc = [100 * r["test_accuracy"] for r in ok]
        val = [100 * r["val_accuracy"] for r in ok]
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        lines.append(
            f"| {density:g} | {method} | {statistics.fmean(acc):.2f} ± {std:.2f} | "
            f"{statistics.fmean(val):.2f} | {statistics.fmean(r['density'] for r in ok):.4f} | "
            f"{statistics.fmean(r['epochs'] for r in rs):g} | {len(ok)}/{len(rs)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--densities", default="0.2,0.05,0.02,0.01")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--rewind-steps", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    p.add_argument("--out", default="benchmarks/tickets/results.jsonl")
    p.add_argument("--report", metavar="JSONL")
    args = p.parse_args()
    if args.report:
        print(report(Path(args.report)))
        sys.exit(0)
    run(args)


if __name__ == "__main__":
    main()
