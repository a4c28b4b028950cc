"""Accuracy vs density of the ticket method and the baselines, several seeds.

Every finished run is appended to a JSONL file at once, so a killed benchmark resumes where it
stopped (runs already recorded are skipped). `--report` turns the JSONL into markdown tables.

    python benchmarks/tickets/run.py --dataset digits --model mlp \
        --out benchmarks/tickets/digits_mlp.jsonl
    python benchmarks/tickets/run.py --report benchmarks/tickets/digits_mlp.jsonl

IMP runs once per seed down to the smallest density and keeps a ticket at each density on its
way (benchmarks/tickets/imp_path.py); each ticket is charged what IMP to its density costs.
`--knobs search_epochs=60,mask_lr=0.005` overrides TicketConfig fields for the penalties. Each
penalty row records the resolved values of every knob (`ticket`), so rows run under other
defaults stay apart from new ones (rows without `ticket` predate it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from hwsparse import train as T
from hwsparse.data import Dataset, load_dataset
from hwsparse.models import build_model
from hwsparse.penalties import resolve_eps

sys.path.insert(0, str(Path(__file__).parent))
from imp_path import imp_tickets  # noqa: E402

METHODS = "dense,log,l1,exp,imp,cs,magnitude,random"
KNOBS = {"search_epochs": int, "mask_lr": float, "eps": float, "auto_ramp": float,
         "auto_rate": float}  # fmt: skip


def parse_knobs(text: str) -> dict[str, Any]:
    """``"search_epochs=60,mask_lr=0.005"`` -> TicketConfig overrides (checked names)."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in KNOBS:
            sys.exit(f"unknown knob {key!r}; valid: {', '.join(KNOBS)}")
        out[key] = KNOBS[key](value)
    return out


def knob_key(knobs: dict[str, Any]) -> str:
    return json.dumps(knobs, sort_keys=True)


def resolved(method: str, knobs: dict[str, Any]) -> dict[str, Any]:
    """Every knob's value in the run of ``method`` with ``knobs`` ({} for a baseline)."""
    if method in T.BASELINES:
        return {}
    ticket = T.TicketConfig(penalty=method, **knobs)
    return {k: getattr(ticket, k) for k in KNOBS} | {"eps": resolve_eps(method, ticket.eps)}


def settings(row: dict[str, Any]) -> str:
    """A row's knob values as shown in the tables ('' for baselines and old rows)."""
    t = row.get("ticket", {})
    if not t:
        return ""
    return (f"{t['search_epochs']} ep, mask lr {t['mask_lr']:g}, eps {t['eps']:g}, "
            f"ramp {t['auto_ramp']:g}, rate {t['auto_rate']:g}")  # fmt: skip


class Cells:
    """The runs of one (dataset, model, schedule): which are recorded, and appending new ones."""

    def __init__(self, args: argparse.Namespace, data: Dataset, knobs: dict[str, Any]) -> None:
        self.args, self.data, self.knobs = args, data, knobs
        self.out = Path(args.out)
        self.done: set[tuple[str, float, int, str]] = set()
        if self.out.exists():
            for line in self.out.read_text().splitlines():
                r = json.loads(line)
                self.done.add((r["method"], r["target_density"], r["seed"],
                               knob_key(r.get("ticket", {}))))  # fmt: skip
        self.train = T.TrainConfig(
            epochs=args.epochs, lr=args.lr, rewind_steps=args.rewind_steps, device="cpu"
        )

    def factory(self) -> torch.nn.Module:
        return build_model(self.args.model, self.data.input_shape, self.data.num_classes)

    def missing(self, method: str, target: float, seed: int) -> bool:
        key = knob_key(resolved(method, self.knobs))
        return (method, target, seed, key) not in self.done

    def record(self, method: str, target: float, seed: int, r: T.RunResult, t0: float) -> None:
        knobs = self.knobs if method not in T.BASELINES else {}
        row = {
            **r.summary(),
            "target_density": target,
            "seed": seed,
            "dataset": self.args.dataset,
            "model": self.args.model,
            "schedule_epochs": self.args.epochs,
            "lr": self.args.lr,
            "knobs": knobs,
            "ticket": resolved(method, self.knobs),
            "wall_s": round(time.perf_counter() - t0, 2),
        }
        with self.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.done.add((method, target, seed, knob_key(row["ticket"])))
        print(
            f"{method:<9} d={target:<5} seed={seed} val={r.val_accuracy:.4f} "
            f"test={r.test_accuracy:.4f} density={r.density:.4f} epochs={r.epochs} "
            f"{row['wall_s']}s {knob_key(knobs)}",
            flush=True,
        )

    def run_seed(self, seed: int, methods: list[str], densities: list[float]) -> None:
        train = replace(self.train, seed=seed)
        ticket = T.TicketConfig(auto_strength=True, density=densities[0], **self.knobs)
        if "imp" in methods:
            todo = [d for d in densities if self.missing("imp", d, seed)]
            if todo:
                t0 = time.perf_counter()
                for density, r in imp_tickets(self.factory, self.data, todo, train):
                    self.record("imp", density, seed, r, t0)
        for method in methods:
            for density in [1.0] if method == "dense" else densities:
                if method == "imp" or not self.missing(method, density, seed):
                    continue
                t0 = time.perf_counter()
                r = T.run_method(method, self.factory, self.data, density, train, ticket)
                self.record(method, density, seed, r, t0)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    cells = Cells(args, load_dataset(args.dataset), parse_knobs(args.knobs))
    densities = [float(d) for d in args.densities.split(",")]
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        cells.run_seed(seed, args.methods.split(","), densities)


def verify_imp() -> None:
    """The shared IMP path gives, ticket by ticket, what run_imp(density) gives alone."""
    torch.set_num_threads(1)
    data = load_dataset("digits")

    def factory() -> torch.nn.Module:
        return build_model("mlp", data.input_shape, data.num_classes)

    config = T.TrainConfig(epochs=2, device="cpu", seed=3)
    for density, shared in imp_tickets(factory, data, [0.5, 0.3, 0.25], config):
        alone = T.run_imp(factory, data, density, config)
        same_masks = all(torch.equal(shared.masks[k], alone.masks[k]) for k in alone.masks)
        same = (shared.test_accuracy, shared.epochs, shared.steps, same_masks) == (
            alone.test_accuracy, alone.epochs, alone.steps, True)  # fmt: skip
        print(f"density {density}: shared test {shared.test_accuracy:.4f} epochs "
              f"{shared.epochs}, alone test {alone.test_accuracy:.4f} epochs {alone.epochs}, "
              f"masks equal {same_masks}")  # fmt: skip
        if not same:
            sys.exit(f"IMP path differs from run_imp at density {density}")
    print("IMP path == run_imp at every density")


# --- report --------------------------------------------------------------------------------------


def load_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {std:.2f}"


def groups(rows: list[dict[str, Any]]) -> Iterator[tuple[float, str, str, list[dict[str, Any]]]]:
    """(density, method, knobs, rows) largest density first."""
    out: dict[tuple[float, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["target_density"], r["method"], settings(r))
        out.setdefault(key, []).append(r)
    for (density, method, knobs), rs in sorted(out.items(), key=lambda kv: (-kv[0][0], kv[0][1:])):
        yield density, method, knobs, rs


def report(path: Path) -> str:
    rows = load_rows(path)
    lines = [
        f"{rows[0]['dataset']} / {rows[0]['model']}, schedule {rows[0]['schedule_epochs']} "
        "epochs; test accuracy % (mean ± std over seeds), epochs = all training one run spent",
        "",
        "| density | method | settings | test acc % | val acc % | achieved density | epochs "
        "| seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for density, method, knobs, rs in groups(rows):
        ok = [r for r in rs if r["status"] == "ok"]
        lines.append(
            f"| {density:g} | {method} | {knobs} | "
            f"{mean_std([100 * r['test_accuracy'] for r in ok])} | "
            f"{statistics.fmean(100 * r['val_accuracy'] for r in ok):.2f} | "
            f"{statistics.fmean(r['density'] for r in ok):.4f} | "
            f"{statistics.fmean(r['epochs'] for r in rs):g} | {len(ok)}/{len(rs)} |"
        )
    return "\n".join(lines + ["", against_imp(rows)])


def against_imp(rows: list[dict[str, Any]], method: str = "log") -> str:
    """The issue's target per density <= 5 %: ``method`` >= IMP - 0.5 points (test, mean over
    seeds) with <= 1/3 of IMP's epochs; per-seed differences shown (same seed, same split)."""
    imp = {(r["target_density"], r["seed"]): r for r in rows if r["method"] == "imp"}
    lines = [
        f"| density | {method} settings | {method} - IMP test (points) | per seed | "
        "val diff | epochs ratio | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for density, m, knobs, rs in groups(rows):
        if m != method or density > 0.05:
            continue
        pairs = [(r, imp[density, r["seed"]]) for r in rs if (density, r["seed"]) in imp]
        if not pairs:
            continue
        test = [100 * (a["test_accuracy"] - b["test_accuracy"]) for a, b in pairs]
        val = [100 * (a["val_accuracy"] - b["val_accuracy"]) for a, b in pairs]
        ratio = statistics.fmean(a["epochs"] / b["epochs"] for a, b in pairs)
        met = statistics.fmean(test) >= -0.5 and ratio <= 1 / 3
        lines.append(
            f"| {density:g} | {knobs} | {statistics.fmean(test):+.2f} | "
            f"{', '.join(f'{d:+.2f}' for d in test)} | {statistics.fmean(val):+.2f} | "
            f"{ratio:.3f} | {'met' if met else 'missed'} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--densities", default="0.2,0.05,0.02,0.01")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--rewind-steps", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--knobs", default="", help="TicketConfig overrides, e.g. search_epochs=60")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    p.add_argument("--out", default="benchmarks/tickets/results.jsonl")
    p.add_argument("--report", metavar="JSONL")
    p.add_argument("--verify-imp", action="store_true", help="check the shared IMP path")
    args = p.parse_args()
    if args.report:
        print(report(Path(args.report)))
    elif args.verify_imp:
        verify_imp()
    else:
        run(args)


if __name__ == "__main__":
    main()
