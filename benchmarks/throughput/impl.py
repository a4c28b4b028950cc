"""Which batched implementation trains K candidates fastest: vmap or grouped kernels?

One training step (masked forward, cross-entropy, backward) of K candidates of the same
network, each on its own mini-batch, three ways, interleaved in one process, one thread:

- ``solo``: K separate models, one after another (what the search did before);
- ``vmap``: ``torch.func.stack_module_state`` + ``vmap(functional_call)`` over the K members;
- ``grouped``: hand-written batched kernels: ``baddbmm`` for Linear, one grouped conv
  (``groups=K``) for Conv2d.

    python benchmarks/throughput/impl.py --k 8 --batch 64 --repeats 5 > impl.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from hwsparse.data import load_dataset
from hwsparse.models import build_model

CASES = [("mnist10k", "mlp"), ("mnist10k", "lenet5"), ("digits", "mlp")]


def _masked(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """weight * mask for every layer with a mask entry (projected masks)."""
    out = {}
    for k, v in params.items():
        if k.endswith(".mask"):
            continue
        mask = params.get(k[: -len("weight")] + "mask") if k.endswith("weight") else None
        out[k] = v * mask if mask is not None else v
    return out


def solo_step(models: list[nn.Module], masks: list[dict[str, torch.Tensor]],
              xs: torch.Tensor, ys: torch.Tensor) -> Callable[[], None]:  # fmt: skip
    def step() -> None:
        for model, mask, x, y in zip(models, masks, xs, ys, strict=True):
            params = {**dict(model.named_parameters()), **mask}
            loss = F.cross_entropy(functional_call(model, _masked(params), (x,)), y)
            loss.backward()

    return step


def vmap_step(models: list[nn.Module], masks: list[dict[str, torch.Tensor]],
              xs: torch.Tensor, ys: torch.Tensor) -> Callable[[], None]:  # fmt: skip
    params, _ = stack_module_state(models)  # type: ignore[arg-type]
    for name in masks[0]:
        params[name] = torch.stack([m[name] for m in masks])
    base = models[0]

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(base, _masked(p), (x,)), y)

    g = vmap(grad_and_value(loss))

    def step() -> None:
        g(params, xs, ys)

    return step


def grouped_step(models: list[nn.Module], masks: list[dict[str, torch.Tensor]],
                 xs: torch.Tensor, ys: torch.Tensor) -> Callable[[], None]:  # fmt: skip
    k = len(models)
    names = [n for n, m in models[0].named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    mods = dict(models[0].named_modules())
    w = {n: torch.stack([dict(m.named_parameters())[n + ".weight"] for m in models])
         .detach().requires_grad_() for n in names}  # fmt: skip
    b = {n: torch.stack([dict(m.named_parameters())[n + ".bias"] for m in models])
         .detach().requires_grad_() for n in names}  # fmt: skip
    mk = {n: torch.stack([m[n + ".mask"] for m in masks]).requires_grad_() for n in names}

    def forward(x: torch.Tensor) -> torch.Tensor:  # x: [K, B, ...]
        for name, mod in models[0].named_children():
            if isinstance(mod, nn.Linear):
                x = x.flatten(2) if x.dim() > 3 else x
                x = torch.baddbmm(b[name].unsqueeze(1), x, (w[name] * mk[name]).transpose(1, 2))
            elif isinstance(mod, nn.Conv2d):
                kb, n = x.shape[0], x.shape[1]
                xx = x.transpose(0, 1).reshape(n, kb * x.shape[2], *x.shape[3:])
                ww = (w[name] * mk[name]).reshape(-1, *w[name].shape[2:])
                conv = mods[name]
                assert isinstance(conv, nn.Conv2d)
                yy = F.conv2d(xx, ww, b[name].reshape(-1), conv.stride, conv.padding,
                              groups=kb)  # type: ignore[arg-type]  # fmt: skip
                x = yy.reshape(n, kb, -1, *yy.shape[2:]).transpose(0, 1)
            elif isinstance(mod, nn.Flatten):
                x = x.flatten(2)
            else:
                lead = x.shape[:2]
                y = mod(x.reshape(-1, *x.shape[2:]))
                x = y.reshape(*lead, *y.shape[1:])
        return x

    def step() -> None:
        logits = forward(xs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys.reshape(-1)) * k
        loss.backward()

    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"K = {args.k} candidates, batch {args.batch}, {args.steps} steps per timing, "
          f"median of {args.repeats}; ms per step of all K")  # fmt: skip
    print()
    print("| dataset / model | solo (K one after another) | vmap | grouped | vmap / grouped |")
    print("|---|---|---|---|---|")
    for dataset, name in CASES:
        data = load_dataset(dataset)
        models = []
        for s in range(args.k):
            torch.manual_seed(s)
            models.append(build_model(name, data.input_shape, data.num_classes))
        masks = [
            {f"{n}.mask": torch.ones_like(m.weight) for n, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d))}
            for model in models
        ]  # fmt: skip
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(0, len(data.x_train), (args.k, args.batch), generator=g)
        xs, ys = data.x_train[idx], data.y_train[idx]
        steps = {
            "solo": solo_step(models, masks, xs, ys),
            "vmap": vmap_step(models, masks, xs, ys),
            "grouped": grouped_step(models, masks, xs, ys),
        }
        times: dict[str, list[float]] = {k: [] for k in steps}
        for fn in steps.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for key, fn in steps.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                times[key].append((time.perf_counter() - t0) / args.steps * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = statistics.median(
            a / b for a, b in zip(times["vmap"], times["grouped"], strict=True)
        )
        print(f"| {dataset} / {name} | {med['solo']:.2f} | {med['vmap']:.2f} | "
              f"{med['grouped']:.2f} | {ratio:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
