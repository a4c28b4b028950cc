"""The networks of the latency benchmark: depth, width, kernel size, depthwise vs dense, MLP vs
conv, channel-pruned and unstructured-masked variants.

Each case gives the model the *estimator* sees (with masks, if any) and the model that is
*measured*: for a channel-pruned case the estimator gets the full-width network plus channel
masks, and the measured network is the physically narrower one (what an exported,
compacted network runs), so the case also checks the channel-liveness propagation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hwsparse.cost.anchors import (
    mlperf_tiny_ad,
    mlperf_tiny_kws,
    mobilenet_v1,
    mobilenet_v2,
    resnet18,
    resnet_cifar,
)

Masks = dict[str, Tensor]


@dataclass(frozen=True)
class Case:
    name: str
    family: str
    input_shape: tuple[int, ...]
    build: Callable[[], tuple[nn.Module, Masks | None]]  # what the estimator sees
    build_measured: Callable[[], nn.Module] | None = None  # what is timed (default: same)


def mlp(dims: list[int]) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in itertools.pairwise(dims[:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*layers)


def vgg(widths: list[int], convs_per_stage: int = 2, k: int = 3, in_ch: int = 3, side: int = 32,
        classes: int = 10) -> nn.Module:  # fmt: skip
    layers: list[nn.Module] = []
    c = in_ch
    for w in widths:
        for _ in range(convs_per_stage):
            layers += [
                nn.Conv2d(c, w, k, padding=k // 2, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(),
            ]
            c = w
        layers.append(nn.MaxPool2d(2))
        side //= 2
    layers += [nn.Flatten(), nn.Linear(c * side * side, classes)]
    return nn.Sequential(*layers)


def lenet5(c1: int = 6, c2: int = 16, f1: int = 120, f2: int = 84) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(c2 * 25, f1), nn.ReLU(), nn.Linear(f1, f2), nn.ReLU(), nn.Linear(f2, 10),
    )  # fmt: skip


def conv1d_net(widths: list[int], length: int = 256) -> nn.Module:
    layers: list[nn.Module] = []
    c = 1
    for w in widths:
        layers += [nn.Conv1d(c, w, 5, stride=2, padding=2), nn.ReLU()]
        c = w
        length = (length + 1) // 2
    layers += [nn.Flatten(), nn.Linear(c * length, 10)]
    return nn.Sequential(*layers)


def separable(widths: list[int]) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
                               nn.BatchNorm2d(widths[0]), nn.ReLU()]  # fmt: skip
    c = widths[0]
    for i, w in enumerate(widths[1:]):
        stride = 2 if i % 2 == 0 else 1
        layers += [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c),
                   nn.ReLU(), nn.Conv2d(c, w, 1, bias=False), nn.BatchNorm2d(w),
                   nn.ReLU()]  # fmt: skip
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
    return nn.Sequential(*layers)


def all_conv(widths: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    c = 3
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, 2, 1), nn.ReLU()]
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
    return nn.Sequential(*layers)


def wide_shallow() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Flatten(), nn.Linear(128 * 64, 10))  # fmt: skip


def big_kernel() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 7, 2, 3), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 5, 1, 2), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 5, 1, 2), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


# --- masks -----------------------------------------------------------------------------------


def channel_masks(model: nn.Module, keep: float, only: Callable[[str, nn.Module], bool]) -> Masks:
    """Keep the first ``ceil``-free ``int(out * keep)`` output channels of selected layers."""
    masks: Masks = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)) and only(name, mod):
            if isinstance(mod, nn.Conv2d) and mod.groups > 1:
                continue  # depthwise outputs die with their inputs
            out = mod.weight.shape[0]
            m = torch.zeros_like(mod.weight)
            m[: max(1, int(out * keep))] = 1
            masks[name] = m
    return masks


def random_masks(model: nn.Module, sparsity: float, seed: int = 0) -> Masks:
    """Unstructured masks at ``sparsity`` on every Conv/Linear."""
    gen = torch.Generator().manual_seed(seed)
    return {
        name: (torch.rand(mod.weight.shape, generator=gen) >= sparsity).float()
        for name, mod in model.named_modules()
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear))
    }


def apply_masks(model: nn.Module, masks: Masks | None) -> nn.Module:
    """Multiply weights by their masks in place (what a masked ticket runs densely)."""
    if masks:
        mods = dict(model.named_modules())
        with torch.no_grad():
            for name, m in masks.items():
                mods[name].weight.mul_(m)  # type: ignore[operator]
    return model


def _not_last(model_fn: Callable[[], nn.Module]) -> Callable[[str, nn.Module], bool]:
    last = [n for n, m in model_fn().named_modules() if isinstance(m, nn.Linear)][-1]
    return lambda name, mod: name != last


def _plain(fn: Callable[[], nn.Module]) -> Callable[[], tuple[nn.Module, Masks | None]]:
    return lambda: (fn(), None)


def _pruned(fn: Callable[[], nn.Module], keep: float,
            only: Callable[[str, nn.Module], bool] | None = None
            ) -> Callable[[], tuple[nn.Module, Masks | None]]:  # fmt: skip
    def build() -> tuple[nn.Module, Masks | None]:
        model = fn()
        return model, channel_masks(model, keep, only or _not_last(fn))

    return build


def _unstructured(fn: Callable[[], nn.Module], sparsity: float
                  ) -> Callable[[], tuple[nn.Module, Masks | None]]:  # fmt: skip
    def build() -> tuple[nn.Module, Masks | None]:
        model = fn()
        return model, random_masks(model, sparsity)

    return build


def _block_conv1(name: str, mod: nn.Module) -> bool:
    return name.endswith("conv1") and "stages" in name


def cases() -> list[Case]:
    img = (3, 32, 32)
    vgg_m = lambda: vgg([32, 64, 128])  # noqa: E731
    return [
        Case("mlp-tiny 64-32-10", "mlp", (64,), _plain(lambda: mlp([64, 32, 10]))),
        Case("mlp 784-256-10", "mlp", (784,), _plain(lambda: mlp([784, 256, 10]))),
        Case(
            "mlp-deep 784-512x3-10", "mlp", (784,), _plain(lambda: mlp([784, 512, 512, 512, 10]))
        ),
        Case(
            "mlp-wide 3072-2048x2-10", "mlp", (3072,), _plain(lambda: mlp([3072, 2048, 2048, 10]))
        ),
        Case("mlperf-tiny AD autoencoder", "mlp", (640,), _plain(mlperf_tiny_ad)),
        Case("lenet5", "conv", (1, 28, 28), _plain(lenet5)),
        Case("conv1d 32-64-128", "conv1d", (1, 256), _plain(lambda: conv1d_net([32, 64, 128]))),
        Case("vgg-s 16-32-64", "conv", img, _plain(lambda: vgg([16, 32, 64]))),
        Case("vgg-m 32-64-128", "conv", img, _plain(vgg_m)),
        Case("vgg-l 64-128-256", "conv", img, _plain(lambda: vgg([64, 128, 256]))),
        Case("vgg-deep 3x(32-64-128)", "conv", img, _plain(lambda: vgg([32, 64, 128], 3))),
        Case("vgg-k5 32-64", "conv", img, _plain(lambda: vgg([32, 64], 2, k=5))),
        Case("big-kernel 7x7/5x5", "conv", (3, 64, 64), _plain(big_kernel)),
        Case("wide-shallow 128", "conv", img, _plain(wide_shallow)),
        Case(
            "all-conv strided 32-64-128-256",
            "conv",
            img,
            _plain(lambda: all_conv([32, 64, 128, 256])),
        ),
        Case("resnet8 (mlperf-tiny IC)", "resnet", img, _plain(lambda: resnet_cifar(8, 16))),
        Case("resnet20", "resnet", img, _plain(lambda: resnet_cifar(20, 16))),
        Case("resnet32", "resnet", img, _plain(lambda: resnet_cifar(32, 16))),
        Case("resnet56", "resnet", img, _plain(lambda: resnet_cifar(56, 16))),
        Case("resnet20-w32", "resnet", img, _plain(lambda: resnet_cifar(20, 32))),
        Case("resnet18 @224", "resnet", (3, 224, 224), _plain(resnet18)),
        Case(
            "separable 32-64-128-128",
            "depthwise",
            img,
            _plain(lambda: separable([32, 64, 128, 128])),
        ),
        Case(
            "mobilenet_v1 0.25 @96 (VWW)",
            "depthwise",
            (3, 96, 96),
            _plain(lambda: mobilenet_v1(0.25, 2)),
        ),
        Case(
            "mobilenet_v1 0.5 @64", "depthwise", (3, 64, 64), _plain(lambda: mobilenet_v1(0.5, 10))
        ),
        Case(
            "mobilenet_v1 1.0 @128",
            "depthwise",
            (3, 128, 128),
            _plain(lambda: mobilenet_v1(1.0, 100)),
        ),
        Case(
            "mobilenet_v2 0.5 @96", "depthwise", (3, 96, 96), _plain(lambda: mobilenet_v2(0.5, 10))
        ),
        Case("mobilenet_v2 1.0 @224", "depthwise", (3, 224, 224), _plain(mobilenet_v2)),
        Case("ds-cnn KWS", "depthwise", (1, 49, 10), _plain(mlperf_tiny_kws)),
        # channel-pruned: estimate = full net + channel masks; measured = the narrow net
        Case("vgg-m channels 50%", "pruned", img, _pruned(vgg_m, 0.5), lambda: vgg([16, 32, 64])),
        Case("vgg-m channels 25%", "pruned", img, _pruned(vgg_m, 0.25), lambda: vgg([8, 16, 32])),
        Case(
            "vgg-l channels 50%",
            "pruned",
            img,
            _pruned(lambda: vgg([64, 128, 256]), 0.5),
            lambda: vgg([32, 64, 128]),
        ),  # fmt: skip
        Case(
            "resnet20 block-mid 50%",
            "pruned",
            img,
            _pruned(lambda: resnet_cifar(20, 16), 0.5, _block_conv1),
            lambda: resnet_cifar(20, 16, mid=0.5),
        ),  # fmt: skip
        Case(
            "resnet20-w32 block-mid 25%",
            "pruned",
            img,
            _pruned(lambda: resnet_cifar(20, 32), 0.25, _block_conv1),
            lambda: resnet_cifar(20, 32, mid=0.25),
        ),  # fmt: skip
        Case(
            "mobilenet_v1 0.5 -> 0.25 @64",
            "pruned",
            (3, 64, 64),
            _pruned(lambda: mobilenet_v1(0.5, 10), 0.5),
            lambda: mobilenet_v1(0.25, 10),
        ),  # fmt: skip
        Case(
            "mlp-deep hidden 25%",
            "pruned",
            (784,),
            _pruned(lambda: mlp([784, 512, 512, 512, 10]), 0.25),
            lambda: mlp([784, 128, 128, 128, 10]),
        ),  # fmt: skip
        Case(
            "lenet5 channels 50%",
            "pruned",
            (1, 28, 28),
            _pruned(lenet5, 0.5),
            lambda: lenet5(3, 8, 60, 42),
        ),  # fmt: skip
        # unstructured masks: eager PyTorch runs them densely (no speed-up may be credited)
        Case(
            "resnet20 80% unstructured",
            "masked",
            img,
            _unstructured(lambda: resnet_cifar(20, 16), 0.8),
        ),
        Case(
            "mlp-deep 90% unstructured",
            "masked",
            (784,),
            _unstructured(lambda: mlp([784, 512, 512, 512, 10]), 0.9),
        ),  # fmt: skip
    ]
