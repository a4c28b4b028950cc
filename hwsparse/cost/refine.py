"""Calibration step 6: refine the layer-fitted numbers on whole synthetic networks.

Layer micro-benchmarks time each op alone; inside a network the same op pays more (allocator,
cache state, dispatch of the ops around it) or less. :func:`refine` times a set of small random
networks built here (depthwise-separable stacks, inverted residuals, plain conv stacks,
residual stacks, grouped convolutions, MLPs; seeded, and not the latency benchmark's networks)
and fits five numbers of the same model by MAP on log time, each with a weak prior at "no
change": a multiplier of every per-op overhead, of the compute efficiencies, of the
memory-bound efficiencies, the depthwise byte efficiency and the container call cost.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from hwsparse.cost.dataflow import trace
from hwsparse.cost.latency import (
    COMPUTE_CLASSES,
    MEMORY_CLASSES,
    Params,
    TermArrays,
    combine,
    engine_params,
    trace_terms,
)
from hwsparse.cost.profiles import DeviceProfile, Efficiency, KernelOverhead

PRIOR_SD = math.log(2.0)  # each refinement within 2x of "no change" at one sd
SIGMA = 0.05  # scatter of a network timing on a quiet machine, log units


def _cbr(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class _Inverted(nn.Module):
    def __init__(self, c: int, expand: int, k: int) -> None:
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(
            *_cbr(c, h, 1), *_cbr(h, h, k, groups=h), nn.Conv2d(h, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.body(x)
        return out


class _Basic(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_cbr(c, c, 3), nn.Conv2d(c, c, 3, 1, 1, bias=False))
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.relu(x + self.bn(self.body(x)))
        return out


def _head(c: int, classes: int = 10) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]


def synthetic_networks(
    count: int, seed: int
) -> list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]]:
    """``count`` seeded random networks: (name, builder, input shape)."""
    rng = random.Random(seed + 1009)
    families = ["separable", "inverted", "plain", "residual", "grouped", "mlp"]
    out: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = []
    for i in range(count):
        fam = families[i % len(families)]
        side = rng.choice([24, 32, 40, 48])
        w = rng.choice([8, 16, 24, 32])
        n = rng.randint(2, 5)
        if fam == "separable":
            k = rng.choice([3, 5])
            layers = _cbr(3, w, 3, 2)
            for j in range(n):
                grow = 2 if j % 2 else 1
                layers += _cbr(w, w, k, j % 2 + 1, groups=w) + _cbr(w, grow * w, 1)
                w *= grow
            net = partial(nn.Sequential, *layers, *_head(w))
        elif fam == "inverted":
            e, k = rng.choice([3, 4, 6]), rng.choice([3, 5])
            blocks = [_Inverted(w, e, k) for _ in range(n)]
            net = partial(nn.Sequential, *_cbr(3, w, 3), *blocks, *_head(w))
        elif fam == "plain":
            k = rng.choice([3, 3, 5])
            layers, c = [], 3
            for j in range(n):
                layers += _cbr(c, w * (j + 1), k)
                c = w * (j + 1)
                if j % 2:
                    layers.append(nn.MaxPool2d(2))
            net = partial(nn.Sequential, *layers, *_head(c))
        elif fam == "residual":
            net = partial(nn.Sequential, *_cbr(3, w, 3), *[_Basic(w) for _ in range(n)],
                          *_head(w))  # fmt: skip
        elif fam == "grouped":
            g = rng.choice([2, 4, 8])
            c = max(8 * g, w // g * g)
            layers = _cbr(3, c, 3)
            for _ in range(n):
                layers += _cbr(c, c, 1, groups=g) + _cbr(c, c, 3, groups=g)
            net = partial(nn.Sequential, *layers, *_head(c))
        else:
            dims = [rng.choice([128, 256, 512, 1024, 1536]) for _ in range(n)]
            layers = [nn.Flatten()]
            for a, b in zip([side * side, *dims], dims, strict=False):
                layers += [nn.Linear(a, b), nn.ReLU()]
            net = partial(nn.Sequential, *layers, nn.Linear(dims[-1], 10))
            out.append((f"mlp {side * side}-{'-'.join(map(str, dims))}", net, (side * side,)))
            continue
        out.append((f"{fam} w{w} n{n} @{side}", net, (3, side, side)))
    return out


@dataclass(frozen=True)
class Refinement:
    """Result of :func:`refine`: the refined profile and the networks' errors (percent)."""

    profile: DeviceProfile
    names: tuple[str, ...]
    measured_us: tuple[float, ...]
    before_us: tuple[float, ...]
    after_us: tuple[float, ...]
    values: dict[str, float]


def _scaled(base: Params, v: dict[str, float]) -> Params:
    eff = dict(base.efficiency)
    for c in eff:
        eff[c] *= v["compute"] if c in COMPUTE_CLASSES else v["memory"]
    over = {c: o * v["overhead"] for c, o in base.overhead_us.items()}
    return replace(base, efficiency=eff, overhead_us=over, depthwise_bytes=v["depthwise_bytes"])


def refine(
    profile: DeviceProfile,
    time_us: Callable[[nn.Module, tuple[int, ...]], float],
    count: int,
    seed: int,
) -> Refinement:
    """Refine ``profile``'s first engine on ``count`` synthetic networks timed by ``time_us``."""
    # scipy is imported here: importing it adds warning filters to the caller's process
    from scipy.optimize import least_squares

    eng = profile.engines[0]
    data = []
    for name, build, shape in synthetic_networks(count, seed):
        model = build().eval()
        tr = trace(model, shape)
        notes: set[str] = set()
        terms, wb = trace_terms(tr, profile, eng, eng.dtype, {}, notes)
        params = engine_params(eng, {t.cls for t in terms if not t.free}, notes)
        data.append((name, TermArrays(terms, [wb] * len(terms)), params, tr.container_calls,
                     time_us(model, shape)))  # fmt: skip
    invoke = eng.invoke_overhead_us or 0.0
    container0 = max(eng.container_overhead_us or 0.0, 0.01)
    dwb0 = eng.efficiency.depthwise_bytes or 1.0
    names = ("overhead", "compute", "memory", "depthwise_bytes", "container")
    prior = np.log([1.0, 1.0, 1.0, dwb0, container0])

    def predict(theta: NDArray[np.float64]) -> list[float]:
        v = dict(zip(names, np.exp(theta), strict=True))
        return [
            float(combine(arrays, _scaled(p, v)).time_us.sum()) + invoke + calls * v["container"]
            for _, arrays, p, calls, _ in data
        ]

    measured = np.array([d[4] for d in data])

    def residuals(theta: NDArray[np.float64]) -> NDArray[np.float64]:
        fit = (np.log(predict(theta)) - np.log(measured)) / SIGMA
        return np.concatenate([fit, (theta - prior) / PRIOR_SD])

    lo = prior - 3 * math.log(4.0)
    hi = prior + 3 * math.log(4.0)
    res = least_squares(residuals, prior.copy(), bounds=(lo, hi), max_nfev=300)
    v = dict(zip(names, (float(x) for x in np.exp(res.x)), strict=True))
    scale = {c: v["compute"] for c in COMPUTE_CLASSES} | {c: v["memory"] for c in MEMORY_CLASSES}

    def eff_of(name: str, value: float | None) -> float | None:
        if value is None or name == "depthwise_bytes":
            return value
        return round(min(4.0, value * scale.get(name, 1.0)), 4)

    efficiency = Efficiency(**{
        f: eff_of(f, getattr(eng.efficiency, f)) for f in Efficiency.__dataclass_fields__
    })  # fmt: skip
    efficiency = replace(efficiency, depthwise_bytes=round(min(4.0, v["depthwise_bytes"]), 4))
    overhead = KernelOverhead(**{
        f: None if (o := getattr(eng.kernel_overhead_us, f)) is None
        else round(o * v["overhead"], 3)
        for f in KernelOverhead.__dataclass_fields__
    })  # fmt: skip
    new_eng = replace(
        eng,
        efficiency=efficiency,
        kernel_overhead_us=overhead,
        container_overhead_us=round(v["container"], 3),
    )
    return Refinement(
        profile=replace(profile, engines=(new_eng, *profile.engines[1:])),
        names=tuple(d[0] for d in data),
        measured_us=tuple(float(m) for m in measured),
        before_us=tuple(predict(prior)),
        after_us=tuple(predict(res.x)),
        values=v,
    )
