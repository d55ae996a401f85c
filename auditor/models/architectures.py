"""Proxy architectures: Conv-4 for small images and a small ResNet for larger ones.

Both expose `embed(x)` (penultimate features) and `head` (the final linear layer), which the
influence engine and the embedding export rely on.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _conv_block(in_channels: int, out_channels: int, *, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """The few-shot literature's Conv-4: four 3x3 conv-BN-ReLU-maxpool blocks, global average, linear head.

    Pooling stops once the feature map is 1x1, so the network also accepts 8x8 inputs.
    """

    def __init__(self, in_channels: int, n_classes: int, *, image_size: int, width: int = 64) -> None:
        super().__init__()
        n_pools = min(4, int(math.log2(max(image_size, 2))))
        blocks = [_conv_block(in_channels if i == 0 else width, width, pool=i < n_pools) for i in range(4)]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, n_classes)
        self.embedding_dim = width

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape [batch, embedding_dim]."""
        out: torch.Tensor = self.features(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.embed(x))
        return out


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = torch.relu(out + self.shortcut(x))
        return result


class SmallResNet(nn.Module):
    """A three-stage ResNet (widths 32/64/128, one basic block each) sized for CPU training at 32-64 px."""

    def __init__(
        self, in_channels: int, n_classes: int, *, image_size: int, widths: tuple[int, ...] = (32, 64, 128)
    ) -> None:
        super().__init__()
        del image_size  # global pooling makes the network size-agnostic
        stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        previous = widths[0]
        for i, width in enumerate(widths):
            stages.append(_BasicBlock(previous, width, stride=1 if i == 0 else 2))
            previous = width
        self.features = nn.Sequential(stem, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(previous, n_classes)
        self.embedding_dim = previous

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape [batch, embedding_dim]."""
        out: torch.Tensor = self.features(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.embed(x))
        return out


ARCHITECTURES: dict[str, type[nn.Module]] = {"conv4": Conv4, "resnet": SmallResNet}


def choose_architecture(native_size: int, channels: int) -> str:
    """Conv-4 for grey-scale images (characters, digits: the few-shot literature's choice) and for small
    colour images (<= 32 px native); the small ResNet for larger colour (natural) images."""
    return "conv4" if channels == 1 or native_size <= 32 else "resnet"


def build_proxy(name: str, *, in_channels: int, n_classes: int, image_size: int) -> nn.Module:
    """Instantiate the proxy architecture `name` (a key of ARCHITECTURES)."""
    return ARCHITECTURES[name](in_channels, n_classes, image_size=image_size)
