"""A depthwise-separable user model for the deploy benchmark (``nets:dsnet``, a factory).

``hwsparse`` builds it like any ``module:function`` model (``build_model("nets:dsnet", ...)``
with ``benchmarks/deploy`` on ``sys.path``): stem 3x3 conv, four depthwise-separable blocks
(depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU; two of them stride 2), global average
pooling and a classifier. About 12 M multiply-adds at 3 x 32 x 32.
"""

from __future__ import annotations

from torch import nn


def _ds(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


def dsnet(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Depthwise-separable CNN for C x H x W inputs (widths 32-64-128-128-256)."""
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, 1, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        *_ds(32, 64, 1),
        *_ds(64, 128, 2),
        *_ds(128, 128, 1),
        *_ds(128, 256, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, num_classes),
    )
