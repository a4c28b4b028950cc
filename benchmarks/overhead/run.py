"""Time per training epoch of masked (relaxed-mask + penalty) vs plain training, same model.

Both variants run interleaved in one process, one thread, after a warm-up; the figure is the
median over repeats of (masked epoch time / plain epoch time).

    python benchmarks/overhead/run.py > benchmarks/overhead/results.md
"""

from __future__ import annotations

import argparse
import statistics

import torch

from hwsparse import masks as M
from hwsparse import train as T
from hwsparse.data import load_dataset
from hwsparse.models import build_model
from hwsparse.phase import SearchPhase, Trainer, search_phase

DENSITY = 0.05  # the auto controller's target (it runs every step, so it is part of the cost)
CASES = [
    ("digits", "mlp"),
    ("digits", "lenet5"),
    ("mnist1d", "conv1d"),
    ("mnist10k", "mlp"),
    ("mnist10k", "lenet5"),
]


def epoch_seconds(
    dataset: str, model_name: str, masked: bool, param: str, epochs: int, batch: int
) -> float:
    data = load_dataset(dataset)
    torch.manual_seed(0)
    model = build_model(model_name, data.input_shape, data.num_classes)
    cfg = T.TrainConfig(epochs=epochs, batch_size=batch, device="cpu")
    run = Trainer(data, cfg, None)
    if not masked:
        run.fit(model, epochs, "plain")
    else:
        # as `hwsparse search` trains a candidate: --strength auto towards a target density
        ticket = T.TicketConfig(
            search_epochs=epochs,
            mask=M.MaskConfig(param=param),
            density=DENSITY,
            auto_strength=True,
        )
        relaxed = M.attach_relaxed(model, ticket.mask)
        search_phase(run, model, relaxed, SearchPhase.of(ticket))
    return statistics.median(h.seconds for h in run.history)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cases", default="", help="e.g. mnist10k/mlp,digits/mlp (default: all)")
    args = p.parse_args()
    cases = [tuple(c.split("/")) for c in args.cases.split(",")] if args.cases else CASES
    torch.set_num_threads(1)
    print(
        "| dataset / model | plain s/epoch | projected s/epoch | ratio | sigmoid s/epoch | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for dataset, model in cases:
        plain, proj, sig = [], [], []
        epoch_seconds(dataset, model, False, "projected", 1, args.batch_size)  # warm-up
        for _ in range(args.repeats):
            plain.append(
                epoch_seconds(dataset, model, False, "projected", args.epochs, args.batch_size)
            )
            proj.append(
                epoch_seconds(dataset, model, True, "projected", args.epochs, args.batch_size)
            )
            sig.append(
                epoch_seconds(dataset, model, True, "sigmoid", args.epochs, args.batch_size)
            )
        rp = statistics.median(a / b for a, b in zip(proj, plain, strict=True))
        rs = statistics.median(a / b for a, b in zip(sig, plain, strict=True))
        print(
            f"| {dataset} / {model} | {statistics.median(plain):.4f} | "
            f"{statistics.median(proj):.4f} | {rp:.2f}x | {statistics.median(sig):.4f} | "
            f"{rs:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
