"""The ceiling of population batching on a CPU: an ideal K-stacked LeNet-300-100 search step
(one baddbmm per layer, stacked projected masks, log penalty in place, one vectorised Adam with
per-member learning rates, the density count; no per-member Python, no exactness bookkeeping,
no validation pass) against K solo search epochs of the real code (--strength auto to 5 %),
batch 64, one thread, median of 3 interleaved repeats. If this misses the speed-up target, no
population implementation will reach it on this machine.

    python benchmarks/throughput/ideal.py digits 8
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from hwsparse import masks as M
from hwsparse import train as T
from hwsparse.data import Dataset, load_dataset
from hwsparse.models import build_model
from hwsparse.phase import SearchPhase, Trainer, search_phase

BATCH, EPS, BETAS = 64, 0.05, (0.9, 0.999)


def solo_epoch(data: Dataset) -> float:
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes)
    run = Trainer(data, T.TrainConfig(epochs=2, batch_size=BATCH, device="cpu"), None)
    ticket = T.TicketConfig(search_epochs=2, mask=M.MaskConfig(), density=0.05, auto_strength=True)
    relaxed = M.attach_relaxed(model, ticket.mask)
    search_phase(run, model, relaxed, SearchPhase.of(ticket))
    return statistics.median(h.seconds for h in run.history)


class Stacked:
    """K LeNet-300-100 members as stacked tensors, trained by one step for all."""

    def __init__(self, data: Dataset, k: int) -> None:
        self.x, self.y, self.k = data.x_train.flatten(1), data.y_train, k
        dims = [self.x.shape[1], 300, 100, data.num_classes]
        pairs = list(zip(dims, dims[1:], strict=False))
        self.w = [torch.randn(k, i, o) / math.sqrt(i) for i, o in pairs]
        self.b = [torch.zeros(k, 1, o) for _, o in pairs]
        self.s = [torch.ones_like(w) for w in self.w]
        self.params = self.w + self.b + self.s
        for p in self.params:
            p.requires_grad_(True)
        self.m1 = [torch.zeros_like(p) for p in self.params]
        self.m2 = [torch.zeros_like(p) for p in self.params]
        lr, mask_lr = torch.full((k, 1, 1), 1e-3), torch.full((k, 1, 1), 1e-2)
        self.lrs = [lr] * (len(self.w) + len(self.b)) + [mask_lr] * len(self.s)
        self.lam = torch.full((k, 1, 1), 1e-3)
        self.step = 0

    def epoch(self) -> float:
        n, t0 = len(self.x), time.perf_counter()
        orders = torch.stack([torch.randperm(n) for _ in range(self.k)])
        for i in range(0, n, BATCH):
            idx = orders[:, i : i + BATCH]
            h = self.x[idx]  # (K, batch, inputs)
            for j, (w, b, s) in enumerate(zip(self.w, self.b, self.s, strict=True)):
                h = torch.baddbmm(b, h, w * s)
                h = F.relu(h) if j < len(self.w) - 1 else h
            per = F.cross_entropy(h.flatten(0, 1), self.y[idx].flatten(), reduction="none")
            for p in self.params:
                p.grad = None
            per.view(self.k, -1).mean(1).sum().backward()  # type: ignore[no-untyped-call]
            self._update()
        return time.perf_counter() - t0

    @torch.no_grad()
    def _update(self) -> None:
        self.step += 1
        for s in self.s:
            assert s.grad is not None
            s.grad.addcdiv_(self.lam, s + EPS, value=EPS)
        grads = [p.grad for p in self.params if p.grad is not None]
        bc1, bc2 = 1 - BETAS[0] ** self.step, 1 - BETAS[1] ** self.step
        torch._foreach_lerp_(self.m1, grads, 1 - BETAS[0])
        torch._foreach_mul_(self.m2, BETAS[1])
        torch._foreach_addcmul_(self.m2, grads, grads, 1 - BETAS[1])
        den = torch._foreach_sqrt(self.m2)
        torch._foreach_div_(den, math.sqrt(bc2))
        torch._foreach_add_(den, 1e-8)
        update = torch._foreach_div(self.m1, den)
        torch._foreach_mul_(update, self.lrs)
        torch._foreach_div_(update, bc1)
        torch._foreach_sub_(self.params, update)
        for s in self.s:
            s.clamp_(0.0, 1.0)
        kept = torch.stack([s.sub(0.5).clamp_(0.0, 1.0).ceil_().sum((1, 2)) for s in self.s])
        density = kept.sum(0).view(self.k, 1, 1) / sum(s[0].numel() for s in self.s)
        error = (density - 0.5).clamp(-1, 1)
        self.lam.mul_(torch.exp(0.01 * error))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset")
    p.add_argument("k", type=int)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset)
    stacked = Stacked(data, args.k)
    solo_epoch(data), stacked.epoch()  # warm-up
    solo, ideal = [], []
    for _ in range(3):
        solo.append(solo_epoch(data))
        ideal.append(stacked.epoch())
    s, i = statistics.median(solo), statistics.median(ideal)
    print(
        f"| {args.dataset} / mlp | {args.k} | {1e3 * s * args.k:.1f} | {1e3 * i:.1f} | "
        f"{s * args.k / i:.2f}x |",
        flush=True,
    )


if __name__ == "__main__":
    main()
