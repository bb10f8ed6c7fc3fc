"""Wide ResNet (Zagoruyko & Komodakis 2016), WRN-34-10 as used for CIFAR adversarial training."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv ×2 with a 1×1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.proj = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        shortcut = x if self.proj is None else self.proj(o)
        o = self.conv1(o)
        o = self.conv2(F.relu(self.bn2(o)))
        return o + shortcut


class WideResNet(nn.Module):
    def __init__(self, depth: int = 34, widen: int = 10, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths[1:]):
            for k in range(n):
                blocks.append(WideBlock(cin, w, (1 if i == 0 else 2) if k == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        o = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(o, 1).flatten(1))


def wrn34_10(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    return WideResNet(34, 10, num_classes, in_channels)
