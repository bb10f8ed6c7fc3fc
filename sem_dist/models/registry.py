"""Build classifiers by name. Every model is ``Normalize → network`` and takes [0,1] images.

Normalisation follows the paper's implementation details: pixels rescaled to [−0.5, 0.5]
(mean 0.5, std 1), so attacks and radii never see normalised inputs.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .resnet import resnet18, resnet50
from .small import SmallCNN
from .vgg_densenet import densenet121, vgg16
from .wrn import wrn34_10


class Normalize(nn.Module):
    def __init__(self, mean: float = 0.5, std: float = 1.0):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x - self.mean) / self.std


class Classifier(nn.Sequential):
    """``Normalize`` then the network; ``.net`` is the network."""

    def __init__(self, net: nn.Module, mean: float = 0.5, std: float = 1.0):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "densenet121": densenet121,
    "wrn34_10": wrn34_10,
}


def _torchvision(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision

    try:
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError:
        raise ValueError(f"unknown torchvision model {name!r} (arch tv_{name})") from None
    if in_channels != 3:  # swap the stem for single-channel (or other) inputs
        for mod_name, mod in net.named_modules():
            if isinstance(mod, nn.Conv2d) and mod.in_channels == 3:
                parent = net.get_submodule(mod_name.rsplit(".", 1)[0]) if "." in mod_name else net
                setattr(parent, mod_name.rsplit(".", 1)[-1], nn.Conv2d(
                    in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, bias=mod.bias is not None))
                break
    return net


def build_model(arch: str, num_classes: int, in_channels: int = 3, seed: int | None = None) -> Classifier:
    """A fresh classifier; ``seed`` makes its initialisation reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    if arch.startswith("tv_"):
        net = _torchvision(arch[3:], num_classes, in_channels)
    elif arch in ARCHS:
        net = ARCHS[arch](num_classes=num_classes, in_channels=in_channels)
    else:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)} or tv_<torchvision name>")
    return Classifier(net)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (input-gradient passes bypass DDP's gradient hooks)."""
    return getattr(model, "module", model)
