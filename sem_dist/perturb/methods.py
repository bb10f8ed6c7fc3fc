"""One interface for every noise method (like torchattacks' one class per attack).

A method is built from a resolved :class:`ProtectConfig`; ``fit(data)`` does whatever training the
method needs (Algorithm 1 for the min-min-max family, nothing for rule-based noise), and
``perturb(x, y, ids)`` returns δ for a batch with ‖δ‖∞ ≤ ρ_u and x + δ ∈ [0, 1]. ``state_dict`` /
``load_state_dict`` carry the fitted state to the workers that regenerate noise (Algorithm 4).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch

from ..config import ProtectConfig
from ..models import build_model
from ..rng import SampleStreams
from .generator import GeneratorTraining, train_generator
from .noise import NoiseSpec, solve_noise
from .pgd import frozen


class NoiseMethod(ABC):
    names: ClassVar[tuple[str, ...]]

    def __init__(self, cfg: ProtectConfig, num_classes: int, in_channels: int, image_side: int,
                 device: torch.device):
        self.cfg, self.device = cfg, device
        self.num_classes, self.in_channels, self.image_side = num_classes, in_channels, image_side

    @abstractmethod
    def fit(self, data, *, checkpoint_dir: str | Path | None = None, resume: bool = False,
            progress: Callable[[dict], None] | None = None) -> None:
        """Prepare to perturb ``data`` (a BatchSource: ``len`` and ``batch(indices)``)."""

    @abstractmethod
    def perturb(self, x: torch.Tensor, y: torch.Tensor, ids: Sequence[str]) -> torch.Tensor:
        """δ for a batch of images in [0,1] on ``self.device``; depends only on each sample and its id."""

    def regen_batch_size(self) -> int:
        """Batch size for Algorithm 4. Per-sample methods may use any size (results do not depend on
        it); block methods (NTGA) return their block size."""
        return self.cfg.regen_batch_size

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class MinMinMax(NoiseMethod):
    """SEM, REM, REM-θ, REM-δu, EM and Table 7's rows: Algorithm 1 then Algorithm 4."""

    names = ("sem", "rem", "rem-theta", "rem-delta", "em", "sem-no-adv", "eot-minmin")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.spec = NoiseSpec.from_config(self.cfg, self.image_side)
        self.model = build_model(self.cfg.trainer.arch, self.num_classes, self.in_channels).to(self.device)

    def fit(self, data, *, checkpoint_dir=None, resume=False, progress=None) -> None:
        training = train_generator(self.cfg, data, self.num_classes, self.in_channels, self.image_side,
                                   self.device, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)
        self.use_generator(training)

    def use_generator(self, training: GeneratorTraining) -> None:
        """Adopt a trained generator (from this process, a checkpoint, or Ray Train)."""
        from ..models import unwrap

        self.model.load_state_dict(unwrap(training.model).state_dict())

    def perturb(self, x, y, ids):
        with frozen(self.model):
            return solve_noise(self.model, x, y, self.spec, SampleStreams(self.cfg.seed, ids, x.device))

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])


METHODS: dict[str, type[NoiseMethod]] = {name: cls for cls in (MinMinMax,) for name in cls.names}


def get_method(cfg: ProtectConfig, num_classes: int, in_channels: int, image_side: int,
               device: torch.device) -> NoiseMethod:
    try:
        cls = METHODS[cfg.method]
    except KeyError:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(sorted(METHODS))}") from None
    return cls(cfg, num_classes, in_channels, image_side, device)
