"""Reference workloads and the check of a profile against its published anchors.

A profile's ``anchors`` are published end-to-end latencies (reference/devices.md). To compare
an estimate with them we need the same networks; this module builds them in plain PyTorch
(random weights, eval mode) with the standard layer shapes:

- ``mobilenet_v1``, ``mobilenet_v2`` (width 1.0, 224x224, 1000 classes; 569 M / 301 M MACs),
- ``resnet18``, ``resnet50`` (torchvision layout; 1.814 G / 4.1 G MACs at 224x224),
- MLPerf Tiny v1.x: ``mlperf_tiny_ic`` (ResNet-8, 32x32x3), ``mlperf_tiny_vww`` (MobileNetV1
  0.25, 96x96x3, 2 classes), ``mlperf_tiny_kws`` (DS-CNN, 49x10x1 MFCC, 12 classes),
  ``mlperf_tiny_ad`` (FC auto-encoder 640-128x4-8-128x4-640),
- the graphs public latency tables time (benchncnn, XNNPACK, Coral; :mod:`hwsparse.cost.zoo`),
  keyed by the names benchmarks/latency/public/measurements.csv uses.

Anchor runtimes fuse batch-norm and activations and often run Winograd or FP16; the profile's
efficiencies are what absorb that, so an anchor check mostly tests the fitted profile against
the published numbers it was fitted to (in-sample) and across the other anchors (out-of-sample).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from hwsparse.cost import zoo
from hwsparse.cost.profiles import Anchor, DeviceProfile
from hwsparse.errors import lookup

# ---------------------------------------------------------------------------------------------
# Building blocks


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def _width(c: float, mult: float) -> int:
    return max(8, int(c * mult + 4) // 8 * 8)


def mobilenet_v1(width: float = 1.0, num_classes: int = 1000, in_ch: int = 3) -> nn.Module:
    """MobileNetV1 (Howard et al. 2017): 3x3 stem + 13 depthwise-separable blocks."""
    spec = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
    spec += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    c = int(32 * width)
    layers = _conv_bn(in_ch, c, 3, 2)
    for out, stride in spec:
        o = int(out * width)
        layers += _conv_bn(c, c, 3, stride, groups=c) + _conv_bn(c, o, 1)
        c = o
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


class _InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [
                nn.Conv2d(c_in, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(True),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return x + out if self.residual else out


def mobilenet_v2(width: float = 1.0, num_classes: int = 1000, in_ch: int = 3) -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018), torchvision layout."""
    spec = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)]
    spec += [(6, 160, 3, 2), (6, 320, 1, 1)]
    c = _width(32, width)
    last = _width(1280, max(1.0, width))
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, c, 3, 2, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU6(inplace=True),
    ]
    for t, out, n, s in spec:
        o = _width(out, width)
        for i in range(n):
            layers.append(_InvertedResidual(c, o, s if i == 0 else 1, t))
            c = o
    layers += [nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(last, num_classes),
    ]
    return nn.Sequential(*layers)


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c: int, stride: int, mid: int | None = None) -> None:
        super().__init__()
        m = mid or c
        self.conv1 = nn.Conv2d(c_in, m, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        self.conv2 = nn.Conv2d(m, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.down: nn.Module | None = None
        if stride != 1 or c_in != c:
            self.down = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: Tensor = self.relu(out + identity)
        return result


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, c: int, stride: int, mid: int | None = None) -> None:
        super().__init__()
        out = c * 4
        self.conv1 = nn.Conv2d(c_in, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.down: nn.Module | None = None
        if stride != 1 or c_in != out:
            self.down = nn.Sequential(
                nn.Conv2d(c_in, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        result: Tensor = self.relu(out + identity)
        return result


class ResNet(nn.Module):
    """ResNet for ImageNet (7x7 stem + max-pool) or CIFAR (3x3 stem) layouts."""

    def __init__(
        self,
        block: type[_Basic] | type[_Bottleneck],
        blocks: list[int],
        widths: list[int],
        num_classes: int,
        in_ch: int = 3,
        imagenet_stem: bool = True,
        mid_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        c = widths[0]
        if imagenet_stem:
            self.stem = nn.Sequential(*_conv_bn(in_ch, c, 7, 2), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(*_conv_bn(in_ch, c, 3, 1))
        stages = []
        for i, (n, w) in enumerate(zip(blocks, widths, strict=True)):
            layer = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                mid = max(1, int(w * mid_fraction)) if block is _Basic else None
                layer.append(block(c, w, stride, mid))
                c = w * block.expansion
            stages.append(nn.Sequential(*layer))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        out: Tensor = self.fc(self.pool(x).flatten(1))
        return out


def resnet18(num_classes: int = 1000) -> nn.Module:
    """ResNet-18 (He et al. 2016), torchvision layout."""
    return ResNet(_Basic, [2, 2, 2, 2], [64, 128, 256, 512], num_classes)


def resnet50(num_classes: int = 1000) -> nn.Module:
    """ResNet-50 (He et al. 2016), torchvision layout."""
    return ResNet(_Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes)


def resnet_cifar(
    depth: int = 20, width: int = 16, num_classes: int = 10, in_ch: int = 3, mid: float = 1.0
) -> nn.Module:
    """CIFAR ResNet-(6n+2) of He et al., three stages of width x (1, 2, 4)."""
    n = (depth - 2) // 6
    widths = [width, 2 * width, 4 * width]
    return ResNet(
        _Basic, [n] * 3, widths, num_classes, in_ch, imagenet_stem=False, mid_fraction=mid
    )


def mlperf_tiny_ic() -> nn.Module:
    """MLPerf Tiny image classification ResNet-8 (3 basic blocks, 16/32/64, CIFAR-10)."""
    return ResNet(_Basic, [1, 1, 1], [16, 32, 64], 10, imagenet_stem=False)


def mlperf_tiny_vww() -> nn.Module:
    """MLPerf Tiny visual wake words: MobileNetV1 width 0.25, 96x96x3, 2 classes."""
    return mobilenet_v1(width=0.25, num_classes=2)


def mlperf_tiny_kws() -> nn.Module:
    """MLPerf Tiny keyword spotting DS-CNN (64 channels, 4 depthwise-separable blocks)."""
    layers: list[nn.Module] = [
        nn.Conv2d(1, 64, (10, 4), (2, 2), (5, 1), bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
    ]
    for _ in range(4):
        layers += _conv_bn(64, 64, 3, 1, groups=64) + _conv_bn(64, 64, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 12)]
    return nn.Sequential(*layers)


def mlperf_tiny_ad() -> nn.Module:
    """MLPerf Tiny anomaly detection FC auto-encoder 640-128x4-8-128x4-640."""
    dims = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(128, 640))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class Workload:
    """A reference network and the input it is published with (one sample, no batch dim)."""

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str


_224 = (3, 224, 224)

WORKLOADS: dict[str, Workload] = {
    "mobilenet_v1": Workload(mobilenet_v1, _224, "MobileNetV1 1.0, 224x224"),
    "mobilenet_v2": Workload(mobilenet_v2, _224, "MobileNetV2 1.0, 224x224"),
    "resnet18": Workload(resnet18, _224, "ResNet-18, 224x224"),
    "resnet50": Workload(resnet50, _224, "ResNet-50, 224x224"),
    "alexnet": Workload(zoo.alexnet, (3, 227, 227), "AlexNet (BVLC Caffe, grouped), 227x227"),
    "efficientnet_b0": Workload(zoo.efficientnet_b0, _224, "EfficientNet-B0, 224x224"),
    "efficientnetv2_b0": Workload(zoo.efficientnetv2_b0, _224, "EfficientNetV2-B0, 224x224"),
    "googlenet": Workload(zoo.googlenet, _224, "GoogLeNet (BVLC Caffe, 5x5 branch), 224x224"),
    "mnasnet": Workload(zoo.mnasnet, _224, "MnasNet 1.0 (no SE), 224x224"),
    "mobilenet_v2_ncnn": Workload(
        zoo.mobilenet_v2_ncnn, _224, "MobileNetV2 1.0, ncnn graph (t=1 block expands), 224x224"
    ),
    "mobilenet_v3_large": Workload(zoo.mobilenet_v3_large, _224, "MobileNetV3-Large, 224x224"),
    "mobilenet_v3_ncnn": Workload(
        zoo.mobilenet_v3_ncnn, _224, "MobileNetV3-Large, ncnn graph (last stage differs)"
    ),
    "mobilenet_v3_small": Workload(zoo.mobilenet_v3_small, _224, "MobileNetV3-Small, 224x224"),
    "proxylessnas_mobile": Workload(zoo.proxylessnas_mobile, _224, "ProxylessNAS mobile (ncnn)"),
    "regnety_400mf": Workload(zoo.regnety_400mf, _224, "RegNetY-400MF, 224x224"),
    "resnet18_ncnn": Workload(
        zoo.resnet18_ncnn, _224, "ResNet-18, ncnn graph (projection in res2a), 224x224"
    ),
    "resnet50_caffe": Workload(
        zoo.resnet50_caffe, _224, "ResNet-50, Caffe graph (stride on the 1x1), 224x224"
    ),
    "shufflenet_v1_g3": Workload(zoo.shufflenet_v1_g3, _224, "ShuffleNet 1x g=3 (Caffe)"),
    "shufflenet_v2": Workload(zoo.shufflenet_v2, _224, "ShuffleNet V2 1.0x, 224x224"),
    "squeezenet_v1_1": Workload(zoo.squeezenet_v1_1, (3, 227, 227), "SqueezeNet v1.1, 227x227"),
    "vgg16": Workload(zoo.vgg16, _224, "VGG-16, 224x224"),
    "mlperf_tiny_ic": Workload(mlperf_tiny_ic, (3, 32, 32), "MLPerf Tiny IC ResNet-8, 32x32"),
    "mlperf_tiny_vww": Workload(mlperf_tiny_vww, (3, 96, 96), "MLPerf Tiny VWW MobileNetV1 0.25"),
    "mlperf_tiny_kws": Workload(mlperf_tiny_kws, (1, 49, 10), "MLPerf Tiny KWS DS-CNN"),
    "mlperf_tiny_ad": Workload(mlperf_tiny_ad, (640,), "MLPerf Tiny AD FC auto-encoder"),
}


@dataclass(frozen=True)
class AnchorCheck:
    """Estimate vs a published anchor.

    Attributes:
        anchor: the profile's anchor.
        estimate_ms: the estimate on the anchor's engine and dtype (None when unknown).
        error_pct: ``(estimate / published - 1) x 100`` (None when unknown).
        within_band: the published value lies in the estimate's uncertainty band.
    """

    anchor: Anchor
    estimate_ms: float | None
    error_pct: float | None
    within_band: bool | None


def check_anchors(profile: DeviceProfile) -> list[AnchorCheck]:
    """Estimate every anchor of ``profile`` on its engine and dtype and compare."""
    from hwsparse.cost.estimate import estimate  # local: estimate imports this package

    checks = []
    for anchor in profile.anchors:
        work = lookup(WORKLOADS, anchor.model, "anchor model")
        model = work.build()
        report = estimate(
            model, anchor.input_shape, profile, dtype=anchor.dtype, engine=anchor.engine
        )
        est = report.latency_ms
        if est is None or report.latency_ms_low is None or report.latency_ms_high is None:
            checks.append(AnchorCheck(anchor, None, None, None))
            continue
        inside = report.latency_ms_low <= anchor.latency_ms <= report.latency_ms_high
        checks.append(AnchorCheck(anchor, est, (est / anchor.latency_ms - 1) * 100, inside))
    return checks
