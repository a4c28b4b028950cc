"""Model registry: logits shapes, layer conventions, shape refusals, user factories."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from hwsparse.errors import InputError
from hwsparse.models import MODELS, build_model

DIGITS, MNIST1D, MNIST, CIFAR, TABULAR = (1, 8, 8), (1, 40), (1, 28, 28), (3, 32, 32), (13,)

FITTING = [
    ("linear", DIGITS),
    ("linear", TABULAR),
    ("mlp", MNIST),
    ("mlp", MNIST1D),
    ("lenet5", DIGITS),
    ("lenet5", MNIST),
    ("lenet5", CIFAR),
    ("lenet5", (2, 9, 21)),
    ("conv1d", MNIST1D),
    ("conv1d", (40,)),
    ("conv1d", (3, 17)),
    ("conv4", DIGITS),
    ("conv4", CIFAR),
    ("resnet20", DIGITS),
    ("resnet20", CIFAR),
    ("vgg16", DIGITS),
    ("vgg16", CIFAR),
]


def test_every_registered_model_is_covered() -> None:
    assert {name for name, _ in FITTING} == set(MODELS)


def _weighted(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)]


@pytest.mark.parametrize(("name", "shape"), FITTING)
def test_logits_shape_gradients_and_layer_conventions(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, 7)
    x = torch.randn(4, *shape)
    logits = model(x)
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.arange(4)).backward()

    layers = _weighted(model)
    assert layers and all(type(m) in (nn.Conv1d, nn.Conv2d, nn.Linear) for m in layers)
    for layer in layers:
        assert layer.bias is not None
        assert isinstance(layer.weight, torch.Tensor)
        grad = layer.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    first, last = layers[0], layers[-1]
    if isinstance(first, nn.Linear):
        assert first.in_features == x[0].numel()
    else:
        assert isinstance(first, nn.Conv1d | nn.Conv2d)
        assert first.in_channels == (shape[0] if len(shape) > 1 else 1)
    assert isinstance(last, nn.Linear) and last.out_features == 7


def test_reference_sizes() -> None:
    def params(name: str, shape: tuple[int, ...]) -> int:
        return sum(p.numel() for p in build_model(name, shape, 10).parameters())

    assert params("mlp", MNIST) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert params("conv1d", MNIST1D) == 5_210  # mnist1d's ConvBase: Linear(125, 10)
    assert params("lenet5", MNIST) == 61_706  # classic LeNet-5 at 28 x 28
    assert 0.26e6 < params("resnet20", CIFAR) < 0.28e6
    assert 14.7e6 < params("vgg16", CIFAR) < 14.8e6


def test_resnet20_structure() -> None:
    model = build_model("resnet20", CIFAR, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    shortcuts = [m for m in convs if m.kernel_size == (1, 1)]
    assert len(convs) - len(shortcuts) == 19  # 1 stem + 9 blocks x 2; plus fc = 20 layers
    assert [(m.in_channels, m.out_channels) for m in shortcuts] == [(16, 32), (32, 64)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 21


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("lenet5", TABULAR),
        ("conv4", MNIST1D),
        ("resnet20", (1, 4, 4)),
        ("vgg16", (3, 32)),
        ("conv1d", DIGITS),
        ("conv1d", (2,)),
        ("linear", ()),
        ("mlp", (0, 3)),
    ],
)
def test_impossible_shapes(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError) as info:
        build_model(name, shape, 10)
    assert str(shape) in str(info.value) and "\n" not in str(info.value)


def test_shape_error_names_what_fits() -> None:
    with pytest.raises(InputError, match="images \\(C, H, W\\).*lenet5.*conv1d.*linear, mlp"):
        build_model("vgg16", TABULAR, 3)


USER_MODULE = """
import torch.nn as nn

def make(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1], num_classes))

def fixed():
    return nn.Linear(4, 2)

class Net(nn.Module):
    def __init__(self, input_shape=(4,), num_classes=2, width=8):
        super().__init__()
        self.fc = nn.Linear(input_shape[0], num_classes)

    def forward(self, x):
        return self.fc(x)

def not_a_module(input_shape, num_classes):
    return "nope"

def buggy(input_shape, num_classes):
    raise TypeError("a bug inside the factory")

def two_args(a, b):
    return nn.Linear(1, 1)

VALUE = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"hwsparse_user_models_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / f"{name}_broken.py").write_text("import does_not_exist_hwsparse\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_factories(user_module: str) -> None:
    model = build_model(f"{user_module}:make", (1, 5), 3)
    assert model(torch.randn(2, 1, 5)).shape == (2, 3)
    assert isinstance(build_model(f"{user_module}:fixed", (4,), 2), nn.Linear)
    net = build_model(f"{user_module}:Net", (6,), 4)
    assert net(torch.randn(2, 6)).shape == (2, 4)


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ("not_a_module", "returned str, expected a torch.nn.Module"),
        ("missing", "has no attribute 'missing'"),
        ("VALUE", "not callable"),
        ("two_args", "must accept \\(input_shape=, num_classes=\\) or no arguments"),
    ],
)
def test_bad_user_factories(user_module: str, attribute: str, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        build_model(f"{user_module}:{attribute}", (4,), 2)


def test_user_factory_bug_is_not_masked(user_module: str) -> None:
    with pytest.raises(TypeError, match="a bug inside the factory"):
        build_model(f"{user_module}:buggy", (4,), 2)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("no_such_module_hwsparse_xyz:make", "cannot import 'no_such_module_hwsparse_xyz'"),
        ("{broken}:make", "ModuleNotFoundError.*does_not_exist_hwsparse"),
        (":make", "must be package.module:function"),
        ("{module}:", "must be package.module:function"),
        ("a:b:c", "must be package.module:function"),
    ],
)
def test_bad_factory_strings(user_module: str, spec: str, expected: str) -> None:
    spec = spec.format(module=user_module, broken=f"{user_module}_broken")
    with pytest.raises(InputError, match=expected) as info:
        build_model(spec, (4,), 2)
    assert "\n" not in str(info.value)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(InputError) as info:
        build_model("resnet50", CIFAR, 10)
    message = str(info.value)
    assert "resnet50" in message and "package.module:function" in message
    assert all(name in message for name in MODELS)
