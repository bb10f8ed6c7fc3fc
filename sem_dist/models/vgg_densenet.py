"""CIFAR-style VGG-16 (with BatchNorm) and DenseNet-121 (3×3 stem, growth 32)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import conv_bn_relu

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, plan=tuple(_VGG16)):
        super().__init__()
        layers, cin = [], in_channels
        for i, v in enumerate(plan):
            if v != "M":  # a pooling ("M") goes inside the block before it
                layers += conv_bn_relu(cin, v, pool=i + 1 < len(plan) and plan[i + 1] == "M")
                cin = v
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        o = self.conv1(F.relu(self.bn1(x)))
        o = self.conv2(F.relu(self.bn2(o)))
        return torch.cat([o, x], 1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(self, blocks=(6, 12, 24, 16), growth: int = 32, reduction: float = 0.5,
                 num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        c = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        stages = []
        for i, n in enumerate(blocks):
            for _ in range(n):
                stages.append(DenseLayer(c, growth))
                c += growth
            if i < len(blocks) - 1:
                out = int(c * reduction)
                stages.append(Transition(c, out))
                c = out
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        o = F.relu(self.bn(self.features(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(o, 1).flatten(1))


def vgg16(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(num_classes, in_channels)


def densenet121(num_classes: int = 10, in_channels: int = 3) -> DenseNet:
    return DenseNet(num_classes=num_classes, in_channels=in_channels)
