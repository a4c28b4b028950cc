"""Exact PyTorch rebuilds of the networks that public latency tables time.

Each builder follows the graph that was measured, not the paper's idealised one: the ncnn
``benchmark/*.param`` files that ``benchncnn`` runs (Tencent/ncnn, see
benchmarks/latency/public/SOURCES.md for the commits), the XNNPACK end-to-end MobileNetV3 models
and the Coral/TFLite classification graphs. Where a param file differs from the paper the param
file wins and the docstring says how. Weights are random (eval mode); batch-norm layers stand in
for the runtimes' folded scales, which do not change MACs or weight counts of the convolutions.

Pooling follows Caffe/ncnn arithmetic (``ceil_mode=True``, no padding) where the graph does, so
every feature-map size, and hence every layer's MACs, matches what the runtime executed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Act = Callable[[], nn.Module]

# ---------------------------------------------------------------------------------------------
# Building blocks


def _conv(
    c_in: int,
    c_out: int,
    k: int,
    stride: int = 1,
    groups: int = 1,
    act: Act | None = nn.ReLU,
    bias: bool = False,
) -> nn.Sequential:
    """k x k convolution (padding k // 2) + batch-norm + optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(c_out),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def _max_pool(k: int = 3, stride: int = 2, pad: int = 0) -> nn.MaxPool2d:
    """Caffe/ncnn max pooling: output size rounded up."""
    return nn.MaxPool2d(k, stride, pad, ceil_mode=True)


class _SqueezeExcite(nn.Module):
    """Global pool -> 1x1 (bias) -> act -> 1x1 (bias) -> gate, multiplied into the input."""

    def __init__(self, c: int, squeeze: int, act: Act, gate: Act) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(c, squeeze, 1)
        self.act = act()
        self.expand = nn.Conv2d(squeeze, c, 1)
        self.gate = gate()

    def forward(self, x: Tensor) -> Tensor:
        scale: Tensor = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * scale


@dataclass(frozen=True)
class MB:
    """One inverted-residual (MBConv) block.

    Attributes:
        c_in, c_exp, c_out: input, expanded (depthwise) and output channels.
        k: depthwise kernel size; stride: depthwise stride.
        se: squeeze channels of a squeeze-excite after the depthwise conv (0: none).
        act: activation after the expand and depthwise convs.
        expand: force a 1x1 expand conv even when ``c_exp == c_in``.
        residual: add the input (None: when stride 1 and ``c_in == c_out``).
    """

    c_in: int
    c_exp: int
    c_out: int
    k: int = 3
    stride: int = 1
    se: int = 0
    act: Act = nn.ReLU
    expand: bool = False
    residual: bool | None = None


class _MBConv(nn.Module):
    def __init__(self, b: MB, gate: Act = nn.Sigmoid, se_act: Act | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if b.expand or b.c_exp != b.c_in:
            layers.append(_conv(b.c_in, b.c_exp, 1, act=b.act))
        layers.append(_conv(b.c_exp, b.c_exp, b.k, b.stride, groups=b.c_exp, act=b.act))
        if b.se:
            layers.append(_SqueezeExcite(b.c_exp, b.se, se_act or b.act, gate))
        layers.append(_conv(b.c_exp, b.c_out, 1, act=None))
        self.body = nn.Sequential(*layers)
        default = b.stride == 1 and b.c_in == b.c_out
        self.residual = default if b.residual is None else b.residual

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x)
        return x + out if self.residual else out


def _stages(spec: Sequence[tuple[int, int, int, int, int]], c: int) -> list[MB]:
    """Expand ``(expansion, kernel, out, repeats, first_stride)`` stages into ReLU blocks."""
    blocks = []
    for t, k, out, n, s in spec:
        for i in range(n):
            blocks.append(MB(c, c * t, out, k, s if i == 0 else 1))
            c = out
    return blocks


def _mbnet(
    stem: int,
    blocks: Sequence[MB],
    last: int,
    act: Act,
    head: Sequence[int] = (),
    gate: Act = nn.Sigmoid,
    se_act: Act | None = None,
    num_classes: int = 1000,
) -> nn.Sequential:
    """Stem 3x3/2 conv, MBConv blocks, 1x1 conv to ``last``, global pool, FC head."""
    layers: list[nn.Module] = [_conv(3, stem, 3, 2, act=act)]
    layers += [_MBConv(b, gate, se_act) for b in blocks]
    layers += [_conv(blocks[-1].c_out, last, 1, act=act), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    c = last
    for width in head:
        layers += [nn.Linear(c, width), act()]
        c = width
    layers.append(nn.Linear(c, num_classes))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# Mobile networks


def mobilenet_v2_ncnn() -> nn.Module:
    """MobileNetV2 1.0 as in ncnn ``mobilenet_v2.param`` (Caffe port).

    Same as torchvision's layout except that the first block (t=1) keeps a 32->32 1x1 expand
    conv: +12.8 M MACs over the paper's 300 M, +1024 weights.
    """
    spec = [(6, 3, 24, 2, 2), (6, 3, 32, 3, 2), (6, 3, 64, 4, 2), (6, 3, 96, 3, 1)]
    spec += [(6, 3, 160, 3, 2), (6, 3, 320, 1, 1)]
    blocks = [MB(32, 32, 16, expand=True), *_stages(spec, 16)]
    return _mbnet(32, blocks, 1280, nn.ReLU)


def _v3_large(c5: Sequence[tuple[int, int]], se: Callable[[int], int]) -> list[MB]:
    hs, re = nn.Hardswish, nn.ReLU
    blocks = [
        MB(16, 16, 16, 3, 1, act=re),
        MB(16, 64, 24, 3, 2, act=re),
        MB(24, 72, 24, 3, 1, act=re),
        MB(24, 72, 40, 5, 2, se(72), re),
        MB(40, 120, 40, 5, 1, se(120), re),
        MB(40, 120, 40, 5, 1, se(120), re),
        MB(40, 240, 80, 3, 2, act=hs),
        MB(80, 200, 80, 3, 1, act=hs),
        MB(80, 184, 80, 3, 1, act=hs),
        MB(80, 184, 80, 3, 1, act=hs),
        MB(80, 480, 112, 3, 1, se(480), hs),
        MB(112, 672, 112, 3, 1, se(672), hs),
    ]
    c = 112
    for exp, stride in c5:
        blocks.append(MB(c, exp, 160, 5, stride, se(exp), hs))
        c = 160
    return blocks


def _divisible8(v: float) -> int:
    out = max(8, int(v + 4) // 8 * 8)
    return out + 8 if out < 0.9 * v else out


def mobilenet_v3_large() -> nn.Module:
    """MobileNetV3-Large 1.0 (Howard et al. 2019, Table 1; TF/torchvision layout), 224x224."""
    blocks = _v3_large([(672, 2), (960, 1), (960, 1)], lambda e: _divisible8(e / 4))
    return _mbnet(16, blocks, 960, nn.Hardswish, (1280,), nn.Hardsigmoid, nn.ReLU)


def mobilenet_v3_ncnn() -> nn.Module:
    """MobileNetV3-Large as in ncnn ``mobilenet_v3.param`` (a PyTorch port).

    Differs from the paper in the last stage: 672/s1, 672/s2, 960/s1 expansions instead of
    672/s2, 960/s1, 960/s1, and squeeze-excite width exp/4 without rounding to 8.
    """
    blocks = _v3_large([(672, 1), (672, 2), (960, 1)], lambda e: e // 4)
    return _mbnet(16, blocks, 960, nn.Hardswish, (1280,), nn.Hardsigmoid, nn.ReLU)


def mobilenet_v3_small() -> nn.Module:
    """MobileNetV3-Small 1.0 (Howard et al. 2019, Table 2; TF/torchvision layout), 224x224."""
    hs, re = nn.Hardswish, nn.ReLU

    def se(e: int) -> int:
        return _divisible8(e / 4)

    blocks = [
        MB(16, 16, 16, 3, 2, se(16), re),
        MB(16, 72, 24, 3, 2, act=re),
        MB(24, 88, 24, 3, 1, act=re),
        MB(24, 96, 40, 5, 2, se(96), hs),
        MB(40, 240, 40, 5, 1, se(240), hs),
        MB(40, 240, 40, 5, 1, se(240), hs),
        MB(40, 120, 48, 5, 1, se(120), hs),
        MB(48, 144, 48, 5, 1, se(144), hs),
        MB(48, 288, 96, 5, 2, se(288), hs),
        MB(96, 576, 96, 5, 1, se(576), hs),
        MB(96, 576, 96, 5, 1, se(576), hs),
    ]
    return _mbnet(16, blocks, 576, hs, (1024,), nn.Hardsigmoid, re)


def mnasnet() -> nn.Module:
    """MnasNet 1.0 without squeeze-excite (ncnn ``mnasnet.param``; torchvision mnasnet1_0)."""
    spec = [(3, 3, 24, 3, 2), (3, 5, 40, 3, 2), (6, 5, 80, 3, 2), (6, 3, 96, 2, 1)]
    spec += [(6, 5, 192, 4, 2), (6, 3, 320, 1, 1)]
    return _mbnet(32, [MB(32, 32, 16), *_stages(spec, 16)], 1280, nn.ReLU)


def proxylessnas_mobile() -> nn.Module:
    """ProxylessNAS (mobile) as in ncnn ``proxylessnasnet.param``.

    Block list read from the param file; its first block outputs 32 channels (the paper's
    16) and has no shortcut.
    """
    rows = [
        (32, 48, 32, 5, 2), (32, 96, 32, 3, 1),
        (32, 96, 40, 7, 2), (40, 120, 40, 3, 1), (40, 120, 40, 5, 1), (40, 120, 40, 5, 1),
        (40, 240, 80, 7, 2), (80, 240, 80, 5, 1), (80, 240, 80, 5, 1), (80, 240, 80, 5, 1),
        (80, 480, 96, 5, 1), (96, 288, 96, 5, 1), (96, 288, 96, 5, 1), (96, 288, 96, 5, 1),
        (96, 576, 192, 7, 2), (192, 1152, 192, 7, 1), (192, 576, 192, 7, 1),
        (192, 576, 192, 7, 1), (192, 1152, 320, 7, 1),
    ]  # fmt: skip
    blocks = [MB(32, 32, 32, residual=False), *(MB(*r) for r in rows)]
    return _mbnet(32, blocks, 1280, nn.ReLU)


def efficientnet_b0() -> nn.Module:
    """EfficientNet-B0 (Tan & Le 2019, Table 1), swish, squeeze-excite 1/4 of block input."""
    spec = [(6, 3, 24, 2, 2), (6, 5, 40, 2, 2), (6, 3, 80, 3, 2), (6, 5, 112, 3, 1)]
    spec += [(6, 5, 192, 4, 2), (6, 3, 320, 1, 1)]
    blocks = [MB(32, 32, 16, se=8, act=nn.SiLU)]
    blocks += [
        MB(b.c_in, b.c_exp, b.c_out, b.k, b.stride, max(1, b.c_in // 4), nn.SiLU)
        for b in _stages(spec, 16)
    ]
    return _mbnet(32, blocks, 1280, nn.SiLU)


class _FusedMBConv(nn.Module):
    """Fused-MBConv (EfficientNetV2): k x k expand conv (or the only conv when t=1) + 1x1
    projection; a residual add is followed by a per-channel constant add, as in the graph."""

    def __init__(self, c_in: int, c_out: int, t: int, stride: int) -> None:
        super().__init__()
        if t == 1:
            self.body = _conv(c_in, c_out, 3, stride, act=nn.SiLU)
        else:
            self.body = nn.Sequential(
                _conv(c_in, c_in * t, 3, stride, act=nn.SiLU), _conv(c_in * t, c_out, 1, act=None)
            )
        self.residual = stride == 1 and c_in == c_out
        self.shift = nn.Parameter(torch.zeros(c_out, 1, 1)) if self.residual else None

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x)
        return x + out + self.shift if self.shift is not None else out


class _ShiftedMBConv(_MBConv):
    """MBConv whose residual add is followed by a per-channel constant add (EfficientNetV2)."""

    def __init__(self, b: MB) -> None:
        super().__init__(b)
        self.shift = nn.Parameter(torch.zeros(b.c_out, 1, 1)) if self.residual else None

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out + self.shift if self.shift is not None else out


def efficientnetv2_b0() -> nn.Module:
    """EfficientNetV2-B0 (Tan & Le 2021) as in ncnn ``efficientnetv2_b0.param``, 224x224.

    Fused-MBConv stages (t=1 x1, t=4 x2 to 32, t=4 x2 to 48), then MBConv with squeeze-excite
    (1/4 of the block input): t=4 x3 to 96, t=6 x5 to 112, t=6 x8 to 192; 1x1 to 1280. Each
    residual add is followed by a per-channel constant add (MemoryData + BinaryOp in the file).
    """
    layers: list[nn.Module] = [_conv(3, 32, 3, 2, act=nn.SiLU)]
    c = 32
    for t, out, n, stride in [(1, 16, 1, 1), (4, 32, 2, 2), (4, 48, 2, 2)]:
        for i in range(n):
            layers.append(_FusedMBConv(c, out, t, stride if i == 0 else 1))
            c = out
    for t, out, n, stride in [(4, 96, 3, 2), (6, 112, 5, 1), (6, 192, 8, 2)]:
        for i in range(n):
            b = MB(c, c * t, out, 3, stride if i == 0 else 1, c // 4, nn.SiLU)
            layers.append(_ShiftedMBConv(b))
            c = out
    layers += [_conv(c, 1280, 1, act=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers, nn.Linear(1280, 1000))


# ---------------------------------------------------------------------------------------------
# ShuffleNets


class _ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _ShuffleV1Unit(nn.Module):
    """ShuffleNet unit: g-group 1x1 -> shuffle -> 3x3 dw -> g-group 1x1; add or concat pool."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, groups: int, g1: int, paper: bool
    ) -> None:
        super().__init__()
        branch = c_out - c_in if stride == 2 else c_out
        mid = (c_out if paper else branch) // 4
        layers: list[nn.Module] = [_conv(c_in, mid, 1, groups=g1)]
        if g1 > 1:
            layers.append(_ChannelShuffle(groups))
        layers += [
            _conv(mid, mid, 3, stride, mid, act=None),
            _conv(mid, branch, 1, 1, groups, None),
        ]
        self.branch = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(3, 2, ceil_mode=True) if stride == 2 else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.branch(x)
        joined = x + out if self.pool is None else torch.cat([self.pool(x), out], 1)
        result: Tensor = self.relu(joined)
        return result


def shufflenet_v1_g3(paper_bottleneck: bool = False) -> nn.Module:
    """ShuffleNet 1x, g=3 (Zhang et al. 2018; ncnn ``shufflenet.param``), 224x224.

    The Caffe graph sizes the bottleneck of the three stride-2 units as 1/4 of the residual
    branch (54, 60, 120 channels) where the paper takes 1/4 of the unit's output (60, 120,
    240): 127 M MACs instead of 137 M. ``paper_bottleneck=True`` builds the paper's widths.
    """
    layers: list[nn.Module] = [_conv(3, 24, 3, 2), _max_pool()]
    c = 24
    for out, n in [(240, 4), (480, 8), (960, 4)]:
        for i in range(n):
            first = c == 24  # the first unit's 1x1 is not grouped (24 input channels)
            g1 = 1 if first else 3
            layers.append(_ShuffleV1Unit(c, out, 2 if i == 0 else 1, 3, g1, paper_bottleneck))
            c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000)]
    return nn.Sequential(*layers)


class _ShuffleV2Unit(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        half = c_out // 2
        self.stride = stride
        self.left: nn.Module | None = None
        if stride == 2:
            self.left = nn.Sequential(
                _conv(c_in, c_in, 3, 2, c_in, act=None), _conv(c_in, half, 1)
            )
        src = c_in if stride == 2 else half
        self.right = nn.Sequential(
            _conv(src, half, 1), _conv(half, half, 3, stride, half, act=None), _conv(half, half, 1)
        )
        self.shuffle = _ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        if self.left is None:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        shuffled: Tensor = self.shuffle(out)
        return shuffled


def shufflenet_v2() -> nn.Module:
    """ShuffleNet V2 1.0x (Ma et al. 2018; ncnn ``shufflenet_v2.param``), 224x224."""
    layers: list[nn.Module] = [_conv(3, 24, 3, 2), _max_pool()]
    c = 24
    for out, n in [(116, 4), (232, 8), (464, 4)]:
        for i in range(n):
            layers.append(_ShuffleV2Unit(c, out, 2 if i == 0 else 1))
            c = out
    layers += [_conv(c, 1024, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 1000)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# RegNet


class _RegNetYBlock(nn.Module):
    def __init__(self, w_in: int, w_out: int, stride: int, group_width: int = 8) -> None:
        super().__init__()
        self.short: nn.Module | None = None
        if stride != 1 or w_in != w_out:
            self.short = _conv(w_in, w_out, 1, stride, act=None)
        self.body = nn.Sequential(
            _conv(w_in, w_out, 1),
            _conv(w_out, w_out, 3, stride, w_out // group_width),
            _SqueezeExcite(w_out, round(0.25 * w_in), nn.ReLU, nn.Sigmoid),
            _conv(w_out, w_out, 1, act=None),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.short is None else self.short(x)
        out: Tensor = self.relu(identity + self.body(x))
        return out


def regnety_400mf() -> nn.Module:
    """RegNetY-400MF (Radosavovic et al. 2020; ncnn ``regnety_400m.param``), 224x224."""
    layers: list[nn.Module] = [_conv(3, 32, 3, 2)]
    c = 32
    for width, depth in [(48, 1), (104, 3), (208, 6), (440, 6)]:
        for i in range(depth):
            layers.append(_RegNetYBlock(c, width, 2 if i == 0 else 1))
            c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# Classic Caffe-era networks


def squeezenet_v1_1() -> nn.Module:
    """SqueezeNet v1.1 (Caffe, ncnn ``squeezenet.param``), 227x227 input.

    As in the Caffe model, conv10 (1x1, 512->1000) pads by 1, so it runs on 16x16 instead of
    14x14 at 227 (+31 M MACs; torchvision's squeezenet1_1 has no padding there).
    """

    class Fire(nn.Module):
        def __init__(self, c_in: int, squeeze: int, expand: int) -> None:
            super().__init__()
            self.squeeze = nn.Sequential(nn.Conv2d(c_in, squeeze, 1), nn.ReLU(inplace=True))
            self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU(inplace=True))
            self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU(True))

        def forward(self, x: Tensor) -> Tensor:
            s = self.squeeze(x)
            return torch.cat([self.e1(s), self.e3(s)], 1)

    fires = [(64, 16, 64), (128, 16, 64), None, (128, 32, 128), (256, 32, 128), None]
    fires += [(256, 48, 192), (384, 48, 192), (384, 64, 256), (512, 64, 256)]
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 2), nn.ReLU(inplace=True), _max_pool()]
    layers += [_max_pool() if f is None else Fire(*f) for f in fires]
    # conv10 is a 1x1 conv with padding 1 in the Caffe prototxt and the param file (4=1)
    layers += [nn.Conv2d(512, 1000, 1, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)]
    return nn.Sequential(*layers, nn.Flatten())


class _Inception(nn.Module):
    def __init__(self, c_in: int, b1: int, b3r: int, b3: int, b5r: int, b5: int, bp: int) -> None:
        super().__init__()

        def conv(a: int, b: int, k: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, k, padding=k // 2), nn.ReLU(inplace=True))

        self.b1 = conv(c_in, b1, 1)
        self.b3 = nn.Sequential(conv(c_in, b3r, 1), conv(b3r, b3, 3))
        self.b5 = nn.Sequential(conv(c_in, b5r, 1), conv(b5r, b5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv(c_in, bp, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


def googlenet() -> nn.Module:
    """GoogLeNet (Szegedy et al. 2015, Table 1; BVLC Caffe / ncnn ``googlenet.param``).

    True 5x5 convs in the 5x5 branch and LRN after the stem, no auxiliary heads.
    """
    table = [
        (192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64), None,
        (480, 192, 96, 208, 16, 48, 64), (512, 160, 112, 224, 24, 64, 64),
        (512, 128, 128, 256, 24, 64, 64), (512, 112, 144, 288, 32, 64, 64),
        (528, 256, 160, 320, 32, 128, 128), None,
        (832, 256, 160, 320, 32, 128, 128), (832, 384, 192, 384, 48, 128, 128),
    ]  # fmt: skip
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3), nn.ReLU(inplace=True), _max_pool(), nn.LocalResponseNorm(5),
        nn.Conv2d(64, 64, 1), nn.ReLU(inplace=True), nn.Conv2d(64, 192, 3, padding=1),
        nn.ReLU(inplace=True), nn.LocalResponseNorm(5), _max_pool(),
    ]  # fmt: skip
    layers += [_max_pool() if row is None else _Inception(*row) for row in table]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.4), nn.Linear(1024, 1000)]
    return nn.Sequential(*layers)


def alexnet() -> nn.Module:
    """AlexNet as in BVLC Caffe (ncnn ``alexnet.param``): 227x227, LRN, two-group conv2/4/5."""

    def conv(a: int, b: int, k: int, s: int = 1, p: int = 0, g: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(a, b, k, s, p, groups=g), nn.ReLU(inplace=True)]

    layers = conv(3, 96, 11, 4) + [nn.LocalResponseNorm(5), _max_pool()]
    layers += conv(96, 256, 5, p=2, g=2) + [nn.LocalResponseNorm(5), _max_pool()]
    layers += conv(256, 384, 3, p=1) + conv(384, 384, 3, p=1, g=2) + conv(384, 256, 3, p=1, g=2)
    layers += [_max_pool(), nn.Flatten()]
    layers += [nn.Linear(9216, 4096), nn.ReLU(True), nn.Linear(4096, 4096), nn.ReLU(True)]
    return nn.Sequential(*layers, nn.Linear(4096, 1000))


def vgg16() -> nn.Module:
    """VGG-16 (Simonyan & Zisserman 2015, configuration D), 224x224."""
    layers: list[nn.Module] = []
    c = 3
    for width, n in [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]:
        for _ in range(n):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
            c = width
        layers.append(nn.MaxPool2d(2, 2))
    layers += [nn.Flatten(), nn.Linear(25088, 4096), nn.ReLU(True), nn.Linear(4096, 4096)]
    return nn.Sequential(*layers, nn.ReLU(True), nn.Linear(4096, 1000))


class _CaffeBottleneck(nn.Module):
    """ResNet v1 bottleneck as in the original Caffe models: the stride sits on the 1x1."""

    def __init__(self, c_in: int, mid: int, stride: int) -> None:
        super().__init__()
        out = mid * 4
        self.body = nn.Sequential(
            _conv(c_in, mid, 1, stride), _conv(mid, mid, 3), _conv(mid, out, 1, act=None)
        )
        self.short = _conv(c_in, out, 1, stride, act=None) if c_in != out or stride > 1 else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.short is None else self.short(x)
        out: Tensor = self.relu(identity + self.body(x))
        return out


class _ProjectedBasic(nn.Module):
    """ResNet basic block whose first block of every stage has a 1x1 projection shortcut."""

    def __init__(self, c_in: int, c: int, stride: int, project: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(c_in, c, 3, stride), _conv(c, c, 3, act=None))
        self.short = _conv(c_in, c, 1, stride, act=None) if project else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.short is None else self.short(x)
        out: Tensor = self.relu(identity + self.body(x))
        return out


def _caffe_resnet(blocks: list[nn.Module], c_out: int) -> nn.Module:
    stem = [_conv(3, 64, 7, 2), _max_pool()]
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_out, 1000)]
    return nn.Sequential(*stem, *blocks, *head)


def resnet18_ncnn() -> nn.Module:
    """ResNet-18 as in ncnn ``resnet18.param``: torchvision layout plus a 64->64 1x1
    projection on the first block of stage 2 (+12.8 M MACs, +4096 weights)."""
    blocks: list[nn.Module] = []
    c = 64
    for i, w in enumerate([64, 128, 256, 512]):
        blocks.append(_ProjectedBasic(c, w, 1 if i == 0 else 2, True))
        blocks.append(_ProjectedBasic(w, w, 1, False))
        c = w
    return _caffe_resnet(blocks, 512)


def resnet50_caffe() -> nn.Module:
    """ResNet-50 as in the original Caffe release (He et al. 2016; ncnn ``resnet50.param``):
    the stride-2 downsampling is on the first 1x1 conv, hence 3.86 G MACs, not 4.1 G."""
    blocks: list[nn.Module] = []
    c = 64
    for i, (mid, n) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
        for j in range(n):
            blocks.append(_CaffeBottleneck(c, mid, 2 if (i > 0 and j == 0) else 1))
            c = mid * 4
    return _caffe_resnet(blocks, 2048)
