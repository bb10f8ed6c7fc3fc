"""TAP — targeted adversarial poisoning (Fowl et al. 2021, "Adversarial Examples Make Strong Poisons").

A model f_0 is trained on the clean data (or loaded); each sample's noise is a targeted PGD attack
on f_0 towards the permuted label g(y) = (y + 1) mod K, i.e. it minimises ℓ(f_0(x + δ), g(y)) over
‖δ‖∞ ≤ ρ_u (the SEM paper's baseline section). Table 9: α = ρ_u/125 and 250 steps on 32×32 data,
ρ_u/50 and 100 steps for ImageNet-size images (``solver.alpha_div`` / ``solver.steps``).

Choices the paper leaves open:
- f_0 is ``trainer.arch`` trained with the victim trainer (SGD, crop+flip, step decay) for
  ``trainer.steps`` steps and the ``trainer`` optimiser settings, seeded by ``cfg.seed``.
- PGD starts from a uniform random point in the ball drawn from the sample's own stream
  (``extra.random_start``), so the seed matters and the noise does not depend on batching.
- No differentiable augmentation while crafting (Fowl et al. offer it as an option; the SEM paper's
  description has none).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..models import build_model
from ..runtime.device import prepare_model, resolve_amp
from ..runtime.rng import CounterStream
from ..training.pgd import frozen, pgd
from ..victims.train import VictimConfig, train_victim
from .base import NoiseMethod
from .generator import load_checkpoint, save_checkpoint

SOURCE_CHECKPOINT = "tap_source.pt"


def tap_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The label permutation g(y) = (y + 1) mod K."""
    return (y + 1) % num_classes


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file, never unpickled freely
    (``torch.load(weights_only=True)`` refuses anything but tensors and plain containers)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"TAP source model {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise RuntimeError(f"{path} is a .safetensors file: install safetensors to load it") from None
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # our own checkpoints nest it
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


@dataclass
class _LabelledSource:
    """What the victim trainer needs of a BatchSource: its batches plus the dataset's geometry."""

    data: object
    num_classes: int
    in_channels: int
    image_side: int

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices):
        return self.data.batch(indices)


class TargetedAdversarialPoisoning(NoiseMethod):
    names = ("tap",)
    extra_keys = ("source_model", "random_start")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model = prepare_model(build_model(self.cfg.trainer.arch, self.num_classes, self.in_channels), self.device)

    def fit(self, data, *, checkpoint_dir=None, resume=False, progress=None) -> None:
        """Load f_0 from ``extra.source_model``, or from ``checkpoint_dir`` when resuming, or train it."""
        ckpt = Path(checkpoint_dir) / SOURCE_CHECKPOINT if checkpoint_dir is not None else None
        if self.extra("source_model"):
            self.load_source(load_state_dict_file(self.extra("source_model")))
            return
        if resume and ckpt is not None and ckpt.exists():
            self.load_state_dict(load_checkpoint(ckpt, self.device))
            return
        self.model.load_state_dict(self.train_source(data, progress).state_dict())
        if ckpt is not None:
            save_checkpoint(self.state_dict(), ckpt)

    def train_source(self, data, progress=None) -> torch.nn.Module:
        t = self.cfg.trainer
        vcfg = VictimConfig(arch=t.arch, steps=t.steps, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum,
                            weight_decay=t.weight_decay, seed=self.cfg.seed,
                            amp=resolve_amp(t.amp, self.device))
        source = _LabelledSource(data, self.num_classes, self.in_channels, self.image_side)

        def report(point: dict) -> None:  # forward the learning-curve points in the generator's format
            if progress is not None and "train_acc" in point:
                progress({"step": point["step"], "loss": point["loss"], "acc": point["train_acc"]})

        return train_victim(vcfg, source, None, self.device, progress=report).model

    def load_source(self, state: dict[str, torch.Tensor]) -> None:
        """Accept the classifier's state dict or the bare network's (keys without ``net.``)."""
        if state and not all(k.startswith("net.") for k in state):
            state = {f"net.{k}": v for k, v in state.items()}
        try:
            self.model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"TAP source model does not fit arch {self.cfg.trainer.arch!r} with "
                             f"{self.num_classes} classes and {self.in_channels} channels: {err}") from None

    def perturb(self, x, y, ids):
        stream = CounterStream.for_samples(self.cfg.seed, ids, x.device) if self.extra("random_start") else None
        with frozen(self.model):
            # descending the loss of the target labels is the targeted attack
            return pgd(self.model, x, tap_targets(y, self.num_classes), self.cfg.budget.rho_u, self.cfg.alpha_u,
                       self.cfg.solver.steps, maximize=False, stream=stream,
                       amp=resolve_amp(self.cfg.trainer.amp, x.device))

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
