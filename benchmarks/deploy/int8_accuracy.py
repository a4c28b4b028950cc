"""int8 accuracy of deployed tickets: fp32 torch vs the simulated int8 that the search scores vs
the real full-integer .tflite in the LiteRT interpreter, on the test split.

Each ticket is made with the method (log penalty, --strength auto, exact density, weight masks),
saved, then deployed with `hwsparse.api.export` for nrf52840 (TFLite Micro + CMSIS-NN: int8
.tflite). One JSON line per ticket is appended to the output at once (a killed run resumes).

    python benchmarks/deploy/int8_accuracy.py           # appends to results/int8_accuracy.jsonl
    cd benchmarks/deploy && python int8_accuracy.py --report results/int8_accuracy.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from hwsparse import api
from hwsparse import train as T

CASES = [  # dataset, model, epochs of the search phase and of the ticket
    ("digits", "mlp", 30, 30),
    ("mnist10k", "lenet5", 10, 10),
]


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {
            (r["dataset"], r["model"], r["density"], r["seed"])
            for r in map(json.loads, out.read_text().splitlines())
        }
    for dataset, model, search_epochs, epochs in CASES:
        for density in (0.2, 0.05):
            for seed in range(args.seeds):
                if (dataset, model, density, seed) in done:
                    continue
                t0 = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    run = api.ticket(
                        dataset,
                        model,
                        out=Path(tmp) / "ticket",
                        train=T.TrainConfig(epochs=epochs, seed=seed, device="cpu"),
                        density=density,
                        auto_strength=True,
                        search_epochs=search_epochs,
                    )
                    card = api.export(Path(tmp) / "ticket", "nrf52840", Path(tmp) / "deploy").card
                acc = card["accuracy"]
                row = {
                    "dataset": dataset,
                    "model": model,
                    "density": density,
                    "seed": seed,
                    "achieved_density": run.result.density,
                    "fp32_test": acc["fp32_test"],
                    "simulated_int8_test": acc["simulated_test"],
                    "tflite_int8_test": acc["artifact_test"],
                    "argmax_agreement": card["agreement"]["argmax"],
                    "n_test": acc["n"],
                    "params": card["params"],
                    "params_before_compaction": card["params_before_compaction"],
                    "artifact_bytes": card["artifact_bytes"],
                    "estimate_weight_bytes": card["estimate"]["weight_bytes"],
                    "wall_s": round(time.perf_counter() - t0, 1),
                }
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    lines = [
        "| dataset / model | density | seed | fp32 test % | int8 simulated % | int8 .tflite % "
        "| .tflite − fp32 (points) | argmax agreement % | params (compacted / dense) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} / {r['model']} | {r['density']:.2f} | {r['seed']} "
            f"| {100 * r['fp32_test']:.2f} | {100 * r['simulated_int8_test']:.2f} "
            f"| {100 * r['tflite_int8_test']:.2f} "
            f"| {100 * (r['tflite_int8_test'] - r['fp32_test']):+.2f} "
            f"| {100 * r['argmax_agreement']:.2f} "
            f"| {r['params']:,} / {r['params_before_compaction']:,} |"
        )
    worst = max(abs(r["tflite_int8_test"] - r["fp32_test"]) for r in rows)
    sim = max(abs(r["tflite_int8_test"] - r["simulated_int8_test"]) for r in rows)
    lines.append("")
    lines.append(f"Largest |int8 .tflite − fp32|: {100 * worst:.2f} points (target ≤ 1).")
    lines.append(f"Largest |int8 .tflite − simulated int8|: {100 * sim:.2f} points (≤ 0.5 asked).")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/deploy/results/int8_accuracy.jsonl")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", type=Path)
    args = p.parse_args()
    if args.report:
        print(report(args.report))
    else:
        run(args)


if __name__ == "__main__":
    main()
