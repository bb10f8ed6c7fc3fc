"""Train a victim classifier on (protected) data and measure its clean test accuracy.

SGD lr 0.1, momentum 0.9, wd 5e-4, ×0.1 at 40% and 80% of the steps (the official 40k-step
schedule scaled to the run), the dataset's augmentation (crop+flip for 32×32, RandomResizedCrop+flip
for large images), and optional Madry adversarial training with radius ``adv_rho``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.arrays import ArrayDataset
from ..device import autocast, prepare_model
from ..models import build_model
from ..perturb.generator import StepSampler, step_seed
from ..perturb.pgd import frozen, pgd
from ..perturb.transforms import get_transform
from ..rng import BatchStream, make_generator


@dataclass
class VictimConfig:
    arch: str = "resnet18"
    epochs: float | None = None  # give epochs or steps; steps wins when both are set
    steps: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    adv_rho: float = 0.0  # Madry adversarial training radius in [0,1] units (0 = standard training)
    adv_steps: int = 10  # Table 9: K_a = 10
    adv_alpha_div: float = 5.0  # α = ρ_a / 5
    transform: str = "auto"
    seed: int = 0
    eval_every: int = 0  # steps between test evaluations for the learning curve (0 = ~10 points)
    amp: bool = False

    def total_steps(self, n_train: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        epochs = 40 if self.epochs is None else self.epochs
        return max(1, int(math.ceil(epochs * n_train / self.batch_size)))


@dataclass
class VictimResult:
    test_acc: float
    train_acc: float
    steps: int
    curve: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    config: dict = field(default_factory=dict)
    model: torch.nn.Module | None = field(default=None, repr=False)  # the trained victim (not serialised)


def lr_at(cfg: VictimConfig, step: int, total: int) -> float:
    return cfg.lr * (0.1 ** ((step >= 0.4 * total) + (step >= 0.8 * total)))


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: ArrayDataset, device: torch.device, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for _, images, labels in data.iter_batches(batch_size):
        x = torch.from_numpy(images).to(device).float().div_(255.0)
        correct += int((model(x).argmax(1).cpu() == torch.from_numpy(labels)).sum())
    return correct / max(1, len(data))


def train_victim(cfg: VictimConfig, train: ArrayDataset, test: ArrayDataset | None, device: torch.device,
                 progress: Callable[[dict], None] | None = None) -> VictimResult:
    if len(train) == 0:
        raise ValueError("the training set is empty")
    t0 = time.perf_counter()
    model = prepare_model(build_model(cfg.arch, train.num_classes, train.in_channels, seed=cfg.seed), device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    transform = get_transform(cfg.transform, train.image_side)
    total = cfg.total_steps(len(train))
    sampler = StepSampler(len(train), min(cfg.batch_size, len(train)), cfg.seed)
    every = cfg.eval_every or max(1, total // 10)
    curve: list[dict] = []
    train_correct = train_seen = 0
    for step in range(total):
        x, y = train.batch(sampler.indices(step))
        x, y = x.to(device), y.to(device)
        stream = BatchStream(make_generator(step_seed(cfg.seed, step, purpose="victim"), device), x.shape[0])
        x = transform.sample(x, stream)
        if cfg.adv_rho > 0:
            with frozen(model):
                x = x + pgd(model, x, y, cfg.adv_rho, cfg.adv_rho / cfg.adv_alpha_div, cfg.adv_steps, stream=stream)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step, total)
        model.train()
        with autocast(device, cfg.amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_correct += int((logits.argmax(1) == y).sum())
        train_seen += len(y)
        if (step + 1) % every == 0 or step + 1 == total:
            point = {"step": step + 1, "loss": float(loss.detach()), "train_acc": train_correct / train_seen,
                     "test_acc": None if test is None else accuracy(model, test, device)}
            curve.append(point)
            train_correct = train_seen = 0
            if progress is not None:
                progress(point)
    return VictimResult(test_acc=curve[-1]["test_acc"], train_acc=curve[-1]["train_acc"], steps=total,
                        curve=curve, wall_s=time.perf_counter() - t0, config=asdict(cfg), model=model)
