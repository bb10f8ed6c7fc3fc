"""Train a victim classifier on (protected) data and measure its clean test accuracy.

SGD lr 0.1, momentum 0.9, wd 5e-4, ×0.1 at 40% and 80% of the steps (the official 40k-step
schedule scaled to the run), the dataset's augmentation (crop+flip for 32×32, RandomResizedCrop+flip
for large images), and optional Madry adversarial training with radius ``adv_rho``.

What the victim may do against the protection, in the order it happens:
1. partial poisoning (Table 11): only ``poison_ratio`` of the set keeps its noise (``poisoning.py``);
2. early stopping (Table 5): hold out a validation set, part of it clean (``early_stopping.py``);
3. pre-processing defenses, once on the training (and validation) images (``defenses.py``: JPEG,
   grayscale, bit-depth reduction, ISS, noise + blur);
4. a low-pass filter on every training image, before augmentation (Table 4, ``filters.py``);
5. the standard augmentation, then a training-time augmentation defense (UEraser-style, ``defenses.py``),
   then adversarial training's PGD.
The test set is never filtered: the score is accuracy on clean test images, as in the paper.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..data.arrays import ArrayDataset
from ..models import build_model
from ..runtime.device import autocast, prepare_model
from ..runtime.rng import BatchStream, make_generator, step_seed
from ..training.pgd import frozen, pgd
from ..training.sampling import StepSampler
from ..training.transforms import get_transform
from .defenses import augmentation, parse_defenses, preprocess, ueraser_max
from .early_stopping import EarlyStopping, holdout_validation
from .filters import FILTERS, low_pass
from .poisoning import POISON_MODES, partial_poisoning


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
    eval_every: int = 0  # steps between evaluations for the learning curve (0 = ~10 points)
    amp: bool = False
    filter: str = "none"  # low-pass filter on training images: none | mean | median | gaussian (3×3)
    poison_ratio: float = 1.0  # fraction of the training set that keeps its noise (1 = all of it)
    poison_mode: str = "mixed"  # mixed: the rest as clean originals; clean-only: the rest alone
    patience: int | None = None  # early-stopping patience in steps; None = no early stopping
    val_fraction: float = 0.1  # with early stopping: held-out share of the training set (the paper's 10%)
    val_clean_ratio: float = 0.0  # with early stopping: share of the validation set that is clean
    defenses: list[str] = field(default_factory=list)  # NAME[:ARG] specs, see defenses.py (e.g. "jpeg:10")

    def total_steps(self, n_train: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        epochs = 40 if self.epochs is None else self.epochs
        return max(1, int(math.ceil(epochs * n_train / self.batch_size)))

    def validate(self) -> "VictimConfig":
        if not 0.0 <= self.adv_rho <= 1.0:
            raise ValueError(f"adv_rho={self.adv_rho} is outside [0, 1] (radii are in [0,1] pixel units, e.g. 4/255)")
        if self.filter not in FILTERS:
            raise ValueError(f"unknown filter {self.filter!r}; choose one of {', '.join(FILTERS)}")
        if self.poison_mode not in POISON_MODES:
            raise ValueError(f"unknown poisoning mode {self.poison_mode!r}; choose one of {', '.join(POISON_MODES)}")
        if not 0.0 <= self.poison_ratio <= 1.0:
            raise ValueError(f"poison_ratio={self.poison_ratio} is outside [0, 1]")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience={self.patience} must be >= 1 step")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.adv_rho > 0 and self.adv_steps < 1:
            raise ValueError(f"adv_steps={self.adv_steps} must be >= 1 for adversarial training")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps={self.steps} must be >= 1")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs={self.epochs} must be > 0")
        parse_defenses(self.defenses)
        return self


@dataclass
class VictimResult:
    test_acc: float | None
    train_acc: float
    steps: int  # steps actually taken (fewer than planned when early stopping fired)
    curve: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    config: dict = field(default_factory=dict)
    model: torch.nn.Module | None = field(default=None, repr=False)  # the trained victim (not serialised)
    mean_loss: float = 0.0  # mean training loss over every step (R_δu of Alg. 2 is its negative)
    early_stopping: dict | None = None  # what early stopping did (None when off)
    poisoning: dict | None = None  # which samples kept their noise (None for the dataset as given)

    def to_dict(self) -> dict:
        return {"test_acc": self.test_acc, "train_acc": self.train_acc, "steps": self.steps,
                "mean_loss": self.mean_loss, "wall_s": self.wall_s, "curve": self.curve,
                "early_stopping": self.early_stopping, "poisoning": self.poisoning}


def lr_at(cfg: VictimConfig, step: int, total: int) -> float:
    return cfg.lr * (0.1 ** ((step >= 0.4 * total) + (step >= 0.8 * total)))


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: ArrayDataset, device: torch.device, batch_size: int = 512,
             filter: str = "none") -> float:
    model.eval()
    correct = 0
    for _, images, labels in data.iter_batches(batch_size):
        x = low_pass(torch.from_numpy(images).to(device).float().div_(255.0), filter)
        correct += int((model(x).argmax(1).cpu() == torch.from_numpy(labels)).sum())
    return correct / max(1, len(data))


def victim_data(cfg: VictimConfig, train: ArrayDataset) -> tuple[ArrayDataset, ArrayDataset | None, dict | None,
                                                                   dict | None]:
    """What the victim trains and validates on: (train, validation, poisoning record, holdout record)."""
    poisoning = None
    if cfg.poison_ratio < 1.0 or cfg.poison_mode != "mixed":
        train, poisoning = partial_poisoning(train, cfg.poison_ratio, cfg.poison_mode, cfg.seed)
    val = holdout = None
    if cfg.patience is not None:
        train, val, holdout = holdout_validation(train, cfg.val_fraction, cfg.val_clean_ratio, cfg.seed)
    defenses = parse_defenses(cfg.defenses)
    if any(d.kind == "pre" for d in defenses):  # the defender processes every image it holds, not the test set
        train, val = (None if part is None else part.with_images(preprocess(part.images, defenses, cfg.seed), None)
                      for part in (train, val))
    return train, val, poisoning, holdout


def train_victim(cfg: VictimConfig, train: ArrayDataset, test: ArrayDataset | None, device: torch.device,
                 progress: Callable[[dict], None] | None = None) -> VictimResult:
    """Train ``cfg.arch`` from scratch on ``train``; ``test_acc`` is its accuracy on ``test`` (None without).

    ``progress`` is called after every step with ``{"step", "loss"}``; at evaluation points the dict is
    also the learning-curve point (``lr``, ``train_acc``, ``test_acc`` and, with early stopping, ``val_acc``).
    """
    cfg.validate()
    if len(train) == 0:
        raise ValueError("the training set is empty")
    t0 = time.perf_counter()
    train, val, poisoning, holdout = victim_data(cfg, train)
    augment = augmentation(parse_defenses(cfg.defenses))
    model = prepare_model(build_model(cfg.arch, train.num_classes, train.in_channels, seed=cfg.seed), device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    transform = get_transform(cfg.transform, train.image_side)
    total = cfg.total_steps(len(train))
    sampler = StepSampler(len(train), min(cfg.batch_size, len(train)), cfg.seed)
    every = cfg.eval_every or max(1, total // 10)
    stopper = None
    if cfg.patience is not None:
        stopper = EarlyStopping(cfg.patience)
        # a patience shorter than the evaluation interval could never be honoured: check ≥ 3× per patience
        every = min(every, max(1, cfg.patience // 3))
    best_state = None
    curve: list[dict] = []
    loss_sum = 0.0
    train_correct = train_seen = 0
    interval_loss = 0.0
    step = 0
    while step < total:
        x, y = train.batch(sampler.indices(step))
        x, y = low_pass(x.to(device), cfg.filter), y.to(device)
        stream = BatchStream(make_generator(step_seed(cfg.seed, step, purpose="victim"), device), x.shape[0])
        x = transform.sample(x, stream)
        if augment is not None:  # its own stream: without it, every other draw stays as it was
            defense_stream = BatchStream(make_generator(step_seed(cfg.seed, step, purpose="defense"), device), len(x))
            x = ueraser_max(model, x, y, defense_stream, int(augment.arg))
        if cfg.adv_rho > 0:
            with frozen(model):
                x = x + pgd(model, x, y, cfg.adv_rho, cfg.adv_rho / cfg.adv_alpha_div, cfg.adv_steps,
                            stream=stream, amp=cfg.amp)
        lr = lr_at(cfg, step, total)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        with autocast(device, cfg.amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        loss_value = float(loss.detach())
        loss_sum += loss_value
        interval_loss += loss_value * len(y)
        train_correct += int((logits.argmax(1) == y).sum())
        train_seen += len(y)
        stats = {"step": step, "loss": loss_value}
        if step % every == 0 or step == total:
            stats = {"step": step, "lr": lr, "loss": interval_loss / train_seen, "train_acc": train_correct / train_seen,
                     "test_acc": None if test is None else accuracy(model, test, device)}
            train_correct = train_seen = 0
            interval_loss = 0.0
            if stopper is not None:
                stats["val_acc"] = accuracy(model, val, device, filter=cfg.filter)
                if stats["val_acc"] > stopper.best_acc:
                    best_state = copy.deepcopy(model.state_dict())
                if stopper.update(step, stats["val_acc"]):
                    total = step  # ends the loop after this point is recorded
            curve.append(stats)
        if progress is not None:
            progress(stats)
    test_acc = curve[-1]["test_acc"]
    early = None
    if stopper is not None:
        model.load_state_dict(best_state)  # the victim keeps its best-validation weights
        test_acc = None if test is None else accuracy(model, test, device)
        early = dict(holdout, patience=cfg.patience, stopped_at=stopper.stopped_at, best_step=stopper.best_step,
                     best_val_acc=stopper.best_acc, test_acc=test_acc)
    return VictimResult(test_acc=test_acc, train_acc=curve[-1]["train_acc"], steps=step, curve=curve,
                        wall_s=time.perf_counter() - t0, config=asdict(cfg), model=model,
                        mean_loss=loss_sum / step, early_stopping=early, poisoning=poisoning)
