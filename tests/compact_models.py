"""A user model for tests/test_compact.py (``compact_models:factory``).

A residual block with a 1x1 projection shortcut, a depthwise-separable block, a two-branch
concatenation into a 1x1 conv, and a flatten into a classifier: the structures channel
compaction must follow. (Torch-Pruning 1.6.1 mis-maps a flatten directly after a concat, so
the concat feeds a conv here.)
"""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a 1x1-conv-BN projection shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class DepthwiseSeparable(nn.Module):
    """Depthwise conv3x3-BN-ReLU, then pointwise 1x1-BN-ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.pw = nn.Conv2d(c_in, c_out, 1)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.pw(torch.relu(self.bn1(self.dw(x))))))


class Net(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        c, h, w = input_shape
        self.stem = nn.Conv2d(c, 8, 3, padding=1)
        self.block = Residual(8, 16)
        self.pool = nn.MaxPool2d(2)
        self.ds = DepthwiseSeparable(16, 12)
        self.left = nn.Conv2d(12, 6, 1)
        self.right = nn.Conv2d(12, 10, 3, padding=1)
        self.merge = nn.Conv2d(16, 8, 1)
        self.fc1 = nn.Linear(8 * (h // 2) * (w // 2), 24)
        self.fc2 = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(torch.relu(self.stem(x))))
        x = self.ds(x)
        x = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        x = torch.relu(self.merge(x))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def factory(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return Net(input_shape, num_classes)
