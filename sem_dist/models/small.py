"""A small 4-conv CNN for CPU-scale runs (tests, benchmarks, the bundled digits).

Pooling after each of the first three convolutions keeps it ≈13 M multiply-adds per 32×32×3 image.
"""
from __future__ import annotations

import torch.nn as nn


def _block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return layers + ([nn.MaxPool2d(2)] if pool else [])


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            *_block(in_channels, width, True), *_block(width, 2 * width, True),
            *_block(2 * width, 4 * width, True), *_block(4 * width, 4 * width, False),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
