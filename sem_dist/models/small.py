"""A small 4-conv CNN for CPU-scale runs (tests, benchmarks, the bundled digits).

Pooling after each of the first three convolutions keeps it ≈13 M multiply-adds per 32×32×3 image.
"""
from __future__ import annotations

import torch.nn as nn

from .blocks import conv_bn_relu


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(in_channels, width, True), *conv_bn_relu(width, 2 * width, True),
            *conv_bn_relu(2 * width, 4 * width, True), *conv_bn_relu(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
