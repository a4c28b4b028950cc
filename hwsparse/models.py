"""Model registry (names -> factories) and ``package.module:function`` user factories.

A factory takes ``(input_shape, num_classes)``: the per-sample input shape (without the batch
dimension, e.g. ``(1, 8, 8)``, ``(1, 40)``, ``(F,)``) and the number of classes K, and returns an
``nn.Module`` that maps a batch ``(B, *input_shape)`` to logits ``(B, K)``.

Which registered models fit which inputs:

- any shape (flattened): ``linear``, ``mlp``
- 1-D signals ``(L,)`` or ``(C, L)``: ``conv1d``
- images ``(C, H, W)`` with ``H, W >= 8``: ``lenet5``, ``conv4``, ``resnet20``, ``vgg16``

Conventions every registered model keeps (masks attach to them, cost models read them): the
weighted layers are plain ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` with biases; modules are
defined in forward order, so the first and last Conv/Linear in ``named_modules()`` are the
input and output layers.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from hwsparse.errors import InputError, valid_names

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]
"""``factory(input_shape, num_classes) -> nn.Module`` producing logits ``(B, num_classes)``."""

MIN_IMAGE_SIDE = 8
"""Smallest image height and width the 2-D conv models accept."""

_FITS = (
    f"images (C, H, W) with H, W >= {MIN_IMAGE_SIDE}: lenet5, conv4, resnet20, vgg16; "
    "signals (L,) or (C, L): conv1d; any shape: linear, mlp"
)


def _check_shape(input_shape: tuple[int, ...], num_classes: int) -> None:
    if not input_shape or any(d < 1 for d in input_shape):
        raise InputError(f"input shape {input_shape} must be non-empty with positive sizes")
    if num_classes < 1:
        raise InputError(f"num_classes must be >= 1, got {num_classes}")


def _image(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return (C, H, W) or raise an InputError that says which models fit this shape."""
    if len(input_shape) != 3 or min(input_shape[1:]) < MIN_IMAGE_SIDE:
        raise InputError(f"model {name!r} does not fit input shape {input_shape}; fits: {_FITS}")
    channels, height, width = input_shape
    return channels, height, width


def _pool2(side: int) -> int:
    """Kernel of a 2x down-sampling step along one side: 2, or 1 once the side is 1."""
    return 2 if side >= 2 else 1


# --------------------------------------------------------------------------------------------
# Any shape
# --------------------------------------------------------------------------------------------


def linear(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Logistic regression: Flatten, Linear(prod(input_shape), K)."""
    _check_shape(input_shape, num_classes)
    return nn.Sequential(
        OrderedDict(
            [("flatten", nn.Flatten()), ("fc", nn.Linear(math.prod(input_shape), num_classes))]
        )
    )


def mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-300-100: Flatten, Linear(in, 300), ReLU, Linear(300, 100), ReLU, Linear(100, K)."""
    _check_shape(input_shape, num_classes)
    return nn.Sequential(
        OrderedDict(
            [
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(math.prod(input_shape), 300)),
                ("relu1", nn.ReLU()),
                ("fc2", nn.Linear(300, 100)),
                ("relu2", nn.ReLU()),
                ("fc3", nn.Linear(100, num_classes)),
            ]
        )
    )


# --------------------------------------------------------------------------------------------
# 1-D signals
# --------------------------------------------------------------------------------------------


def conv1d(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The CNN of the MNIST-1D repository (``ConvBase``), for signals ``(L,)`` or ``(C, L)``.

    Conv1d(C, 25, 5, stride 2, pad 1), ReLU, Conv1d(25, 25, 3, stride 2, pad 1), ReLU,
    Conv1d(25, 25, 3, stride 2, pad 1), ReLU, Flatten, Linear(25 * L', K). For MNIST-1D
    (L = 40) that is L' = 5, a 125 -> 10 classifier and 5,210 parameters, as upstream.
    """
    _check_shape(input_shape, num_classes)
    if len(input_shape) == 1:
        channels, length = 1, input_shape[0]
    elif len(input_shape) == 2:
        channels, length = input_shape
    else:
        raise InputError(f"model 'conv1d' does not fit input shape {input_shape}; fits: {_FITS}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if len(input_shape) == 1:
        layers["unflatten"] = nn.Unflatten(1, (1, length))
    out = length
    for i, (c_in, kernel) in enumerate(((channels, 5), (25, 3), (25, 3)), start=1):
        out = (out + 2 - kernel) // 2 + 1
        if out < 1:
            raise InputError(
                f"model 'conv1d' needs signals of length >= 3, got input shape {input_shape}"
            )
        layers[f"conv{i}"] = nn.Conv1d(c_in, 25, kernel, stride=2, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(25 * out, num_classes)
    return nn.Sequential(layers)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-5 with ReLU and max pooling, for images ``(C, H, W)`` with ``H, W >= 8``.

    Conv(C, 6, 5, pad 2), pool 2, Conv(6, 16, 5), pool 2, then 16 x 5 x 5 features into
    FC 120, 84, K: exactly the classic net on 28 x 28 inputs. Smaller maps pad the second conv
    (8 x 8 digits: 16 x 2 x 2 features), larger ones average-pool down to 5 x 5.
    """
    _check_shape(input_shape, num_classes)
    channels, height, width = _image("lenet5", input_shape)
    h1, w1 = height // 2, width // 2
    pad = (0 if h1 >= 10 else 2, 0 if w1 >= 10 else 2)
    h2, w2 = (h1 + 2 * pad[0] - 4) // 2, (w1 + 2 * pad[1] - 4) // 2
    h3, w3 = min(h2, 5), min(w2, 5)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(channels, 6, 5, padding=2)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(6, 16, 5, padding=pad)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),
                ("avgpool", nn.AdaptiveAvgPool2d((h3, w3))),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(16 * h3 * w3, 120)),
                ("relu3", nn.ReLU()),
                ("fc2", nn.Linear(120, 84)),
                ("relu4", nn.ReLU()),
                ("fc3", nn.Linear(84, num_classes)),
            ]
        )
    )


def conv4(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Conv-4 of the lottery-ticket paper (Frankle & Carbin 2019), for images ``(C, H, W)``.

    Conv 64, 64, pool, conv 128, 128, pool (3x3 convs, pad 1, ReLU), FC 256, 256, K. On 32 x 32
    inputs the classifier sees 128 x 8 x 8 features, as in the paper; larger maps are
    average-pooled down to 8 x 8.
    """
    _check_shape(input_shape, num_classes)
    channels, height, width = _image("conv4", input_shape)
    h, w = min(height // 4, 8), min(width // 4, 8)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(channels, 64, 3, padding=1)),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(64, 64, 3, padding=1)),
                ("relu2", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("conv3", nn.Conv2d(64, 128, 3, padding=1)),
                ("relu3", nn.ReLU()),
                ("conv4", nn.Conv2d(128, 128, 3, padding=1)),
                ("relu4", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),
                ("avgpool", nn.AdaptiveAvgPool2d((h, w))),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(128 * h * w, 256)),
                ("relu5", nn.ReLU()),
                ("fc2", nn.Linear(256, 256)),
                ("relu6", nn.ReLU()),
                ("fc3", nn.Linear(256, num_classes)),
            ]
        )
    )


def _kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) conv weights, zero biases; BatchNorm to identity."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    The shortcut is the identity, or (option B) a 1x1 conv with BatchNorm when the stride or the
    number of channels changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu2(out + self.shortcut(x))
        return result


def resnet20(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """CIFAR ResNet-20 (He et al. 2016, section 4.2), for images ``(C, H, W)``.

    Conv 16 + BN + ReLU, three stages of three basic blocks with 16, 32, 64 channels (stride 2
    at the start of stages 2 and 3, option-B 1x1-conv shortcuts), global average pool, FC K.
    About 0.27 M parameters; Kaiming-normal conv initialization.
    """
    _check_shape(input_shape, num_classes)
    channels, _, _ = _image("resnet20", input_shape)
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        [
            ("conv1", nn.Conv2d(channels, 16, 3, padding=1)),
            ("bn1", nn.BatchNorm2d(16)),
            ("relu1", nn.ReLU()),
        ]
    )
    in_channels = 16
    for stage, width in enumerate((16, 32, 64), start=1):
        blocks = []
        for block in range(3):
            stride = 2 if stage > 1 and block == 0 else 1
            blocks.append(BasicBlock(in_channels, width, stride))
            in_channels = width
        layers[f"layer{stage}"] = nn.Sequential(*blocks)
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(64, num_classes)
    model = nn.Sequential(layers)
    _kaiming_init(model)
    return model


_VGG16_PLAN: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
)  # fmt: skip


def vgg16(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """CIFAR VGG-16 with BatchNorm, for images ``(C, H, W)``.

    13 conv3x3 (pad 1) + BN + ReLU layers of 64, 64, 128, 128, 256 x 3, 512 x 3, 512 x 3
    channels with 2x2 max pools after each group (a pool is skipped along a side that is already
    1), global average pool, one Linear(512, K). About 14.7 M parameters; Kaiming-normal conv
    initialization.
    """
    _check_shape(input_shape, num_classes)
    channels, height, width = _image("vgg16", input_shape)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels, conv, pool = channels, 0, 0
    for item in _VGG16_PLAN:
        if item == "M":
            pool += 1
            kernel = (_pool2(height), _pool2(width))
            if kernel != (1, 1):
                layers[f"pool{pool}"] = nn.MaxPool2d(kernel)
            height, width = height // kernel[0], width // kernel[1]
            continue
        assert isinstance(item, int)
        conv += 1
        layers[f"conv{conv}"] = nn.Conv2d(in_channels, item, 3, padding=1)
        layers[f"bn{conv}"] = nn.BatchNorm2d(item)
        layers[f"relu{conv}"] = nn.ReLU()
        in_channels = item
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(in_channels, num_classes)
    model = nn.Sequential(layers)
    _kaiming_init(model)
    return model


MODELS: dict[str, ModelFactory] = {
    "linear": linear,
    "mlp": mlp,
    "lenet5": lenet5,
    "conv1d": conv1d,
    "conv4": conv4,
    "resnet20": resnet20,
    "vgg16": vgg16,
}


# --------------------------------------------------------------------------------------------
# Entry point and user factories
# --------------------------------------------------------------------------------------------


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a registered model, or call a user factory given as ``package.module:function``.

    A user factory is called as ``fn(input_shape=..., num_classes=...)``, or as ``fn()`` when
    its signature takes no such arguments. Its module is imported only here, only then.

    Args:
        name: A key of ``MODELS`` or ``package.module:function``.
        input_shape: Shape of one input sample, without the batch dimension.
        num_classes: Number of output logits K.

    Returns:
        The model (untrained, on the CPU), mapping ``(B, *input_shape)`` to ``(B, K)``.

    Raises:
        InputError: Unknown name, a model that does not fit ``input_shape``, or a user factory
            that cannot be imported, called, or does not return an ``nn.Module``.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if ":" in name:
        return _user_model(name, input_shape, num_classes)
    factory = MODELS.get(name)
    if factory is None:
        raise InputError(
            f"unknown model {name!r}; valid: {valid_names(MODELS)}, or package.module:function "
            "(a factory returning an nn.Module)"
        )
    return factory(input_shape, num_classes)


def is_user_model(name: str) -> bool:
    """True for a ``package.module:function`` name (building it imports that module)."""
    return ":" in name


def require_trust(name: str, origin: str, *, trust_code: bool, named: str | None = None) -> None:
    """Refuse to build a ``module:function`` model that a file (``origin``) names.

    A registry name is always fine. A user factory named by a ticket or a study would import
    (run) its module, so it is built only with ``trust_code`` or when it is ``named``: the name
    the user gave on this command line (``--model``) or in this call.
    """
    if not is_user_model(name) or trust_code or name == named:
        return
    module = name.partition(":")[0]
    raise InputError(
        f"{origin} names model {name!r}: building it would import (run) module {module!r}; "
        "pass --trust-code (API: trust_code=True) if you trust that code"
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _user_model(spec: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise InputError(f"model {spec!r} must be package.module:function")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # anything the user's module raises while importing
        raise InputError(
            f"cannot import {module_name!r} for model {spec!r}: {_one_line(exc)}"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise InputError(f"model {spec!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise InputError(f"model {spec!r}: {attribute!r} is not callable")
    factory: Callable[..., object] = target
    kwargs = {"input_shape": input_shape, "num_classes": num_classes}
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature (some builtins): try the keywords first
        try:
            model = factory(**kwargs)
        except TypeError:
            model = factory()
    else:
        try:
            signature.bind(**kwargs)
        except TypeError:
            try:
                signature.bind()
            except TypeError:
                raise InputError(
                    f"model factory {spec!r} must accept (input_shape=, num_classes=) or no "
                    f"arguments; its signature is {signature}"
                ) from None
            model = factory()
        else:
            model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise InputError(
            f"model factory {spec!r} returned {type(model).__name__}, expected a torch.nn.Module"
        )
    return model
