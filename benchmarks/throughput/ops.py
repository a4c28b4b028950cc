"""Kernel calls per population step against the number of members K: the cost that decides a
launch-bound GPU step (each leaf ATen op is one kernel launch there), counted on the CPU.

K candidates of the default space's mixed kinds (benchmarks/throughput/epoch.py's), batch 64,
forward ``vmap`` (the GPU path); after one warm-up epoch, one step is profiled and its leaf
ATen ops (ops that call no other op) are counted, with the step's wall time on this CPU.

    python benchmarks/throughput/ops.py digits mlp 1 8 64
"""

from __future__ import annotations

import argparse
import time

import torch
from epoch import candidate  # type: ignore[import-not-found]
from torch.profiler import profile

from hwsparse.data import load_dataset
from hwsparse.models import build_model
from hwsparse.population import Population


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset")
    p.add_argument("model")
    p.add_argument("ks", type=int, nargs="+")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset)

    def factory() -> torch.nn.Module:
        return build_model(args.model, data.input_shape, data.num_classes)

    print("| dataset / model | K | leaf ATen ops per step | per member | step ms (CPU) |")
    print("|---|---|---|---|---|")
    for k in args.ks:
        pop = Population(factory, data, slots=k, batch_size=64, device="cpu", forward="vmap")
        for i in range(k):
            pop.join(candidate(i))
        idx = torch.stack([torch.arange(64)] * k)
        pop._step(idx)  # warm-up
        with profile() as prof:
            pop._step(idx)
        events = prof.events()
        leaves = sum(
            1
            for e in events
            if e.name.startswith("aten::")
            and not any(c.name.startswith("aten::") for c in e.cpu_children)
        )
        t0 = time.perf_counter()
        for _ in range(5):
            pop._step(idx)
        ms = 1e3 * (time.perf_counter() - t0) / 5
        print(f"| {args.dataset} / {args.model} | {k} | {leaves} | {leaves / k:.0f} | {ms:.1f} |")


if __name__ == "__main__":
    main()
