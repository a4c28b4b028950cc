"""Seconds per search-phase epoch of K candidates: one after another vs one population.

K candidates of the default space's kinds (penalties log/l1/exp/mcp, projected and sigmoid
masks, weight and channel granularity, --strength auto), batch 64, one torch thread. Solo:
each candidate's search phase for 3 epochs, the last 2 timed (warm). Population: the same K
as one population (forward ``loop`` and ``vmap``), 1 warm-up epoch, then 2 timed.

    python benchmarks/throughput/epoch.py digits mlp 8
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from hwsparse import masks as M
from hwsparse import train as T
from hwsparse.data import load_dataset
from hwsparse.models import build_model
from hwsparse.phase import SearchPhase, Trainer, search_phase
from hwsparse.population import Candidate, Population


def candidate(i: int) -> Candidate:
    mask = M.MaskConfig(param=("projected", "sigmoid")[i % 2],
                        granularity=("weight", "channel")[(i // 2) % 2])  # fmt: skip
    ticket = T.TicketConfig(penalty=("log", "l1", "exp", "mcp")[i % 4], density=0.2,
                            auto_strength=True, search_epochs=10, mask=mask)  # fmt: skip
    return Candidate(ticket, T.TrainConfig(epochs=10, device="cpu", seed=i))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset")
    p.add_argument("model")
    p.add_argument("k", type=int)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset)

    def factory() -> torch.nn.Module:
        return build_model(args.model, data.input_shape, data.num_classes)

    pop_s = {}
    for forward in ("loop", "vmap"):
        pop = Population(factory, data, slots=args.k, batch_size=64, device="cpu",
                         forward=forward)  # fmt: skip
        for i in range(args.k):
            pop.join(candidate(i))
        pop.run_epoch()
        t0 = time.perf_counter()
        pop.run_epoch()
        pop.run_epoch()
        pop_s[forward] = (time.perf_counter() - t0) / 2
    solo = 0.0
    for i in range(args.k):
        c = candidate(i)
        run = Trainer(data, c.train, None)
        torch.manual_seed(c.train.seed)
        model = factory()
        relaxed = M.attach_relaxed(model, c.ticket.mask)
        search_phase(run, model, relaxed, replace(SearchPhase.of(c.ticket), epochs=3))
        solo += sum(h.seconds for h in run.history[1:]) / 2
    print(f"| {args.dataset} / {args.model} | {args.k} | {solo:.3f} | {pop_s['loop']:.3f} "
          f"({solo / pop_s['loop']:.2f}x) | {pop_s['vmap']:.3f} ({solo / pop_s['vmap']:.2f}x) |",
          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
