"""CIFAR ResNets for PyTorch loops, as peloton's own model zoo builds them (crates/peloton-burn,
resnet.rs): He et al.'s 6n+2-layer networks with option-A shortcuts (subsample by 2 and pad
with zero channels where the shape changes), so that a Python run trains the same network as
the CLI's `--model resnet20` (269,722 parameters). Imports torch.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

__all__ = ["resnet", "resnet20", "resnet32", "resnet56"]


class BasicBlock(nn.Module):
    """Two 3×3 convolutions without bias, each followed by BatchNorm, and the shortcut."""

    def __init__(self, inp: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = (planes - inp) // 2 if (stride != 1 or inp != planes) else None

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.pad is not None:
            x = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + x)


class ResNet(nn.Module):
    def __init__(self, n: int, channels: int = 3, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, inp = [], 16
        for stage, planes in enumerate([16, 32, 64]):
            for b in range(n):
                blocks.append(BasicBlock(inp, planes, 2 if stage > 0 and b == 0 else 1))
                inp = planes
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.linear(x.mean((2, 3)))


def resnet(depth: int, channels: int = 3, classes: int = 10) -> ResNet:
    """The CIFAR ResNet of `depth` = 6n + 2 layers (20, 32, 44, 56, 110, …)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has 6n+2 layers (20, 32, 56, ...), not {depth}")
    return ResNet((depth - 2) // 6, channels, classes)


def resnet20(classes: int = 10) -> ResNet:
    return resnet(20, classes=classes)


def resnet32(classes: int = 10) -> ResNet:
    return resnet(32, classes=classes)


def resnet56(classes: int = 10) -> ResNet:
    return resnet(56, classes=classes)
