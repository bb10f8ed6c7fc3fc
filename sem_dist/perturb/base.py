"""The interface every noise method implements (like torchattacks' one class per attack).

A method is built from a resolved :class:`ProtectConfig`; ``fit(data)`` does whatever training the
method needs (Algorithm 1 for the min-min-max family, a clean model for TAP, nothing for rule-based
noise), and ``perturb(x, y, ids)`` returns δ for a batch with ‖δ‖∞ ≤ ρ_u and x + δ ∈ [0, 1].
``state_dict`` / ``load_state_dict`` carry the fitted state to the workers that regenerate noise
(Algorithm 4).

The class lives in its own module (re-exported by ``methods``) so that the baselines in ``tap``,
``sc`` and ``ntga`` can subclass it while ``methods`` imports them for the registry, without an
import cycle.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch

from ..config import ProtectConfig


class NoiseMethod(ABC):
    names: ClassVar[tuple[str, ...]]
    # method-specific knobs this method reads from ``cfg.extra`` (defaults in configs/<method>.yaml)
    extra_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: ProtectConfig, num_classes: int, in_channels: int, image_side: int,
                 device: torch.device):
        self.cfg, self.device = cfg, device
        self.num_classes, self.in_channels, self.image_side = num_classes, in_channels, image_side
        if self.extra_keys:
            problems = []
            unknown = sorted(set(cfg.extra) - set(self.extra_keys))
            missing = sorted(set(self.extra_keys) - set(cfg.extra))
            if unknown:
                problems.append(f"unknown extra key(s) {', '.join(unknown)}")
            if missing:
                problems.append(f"missing extra key(s) {', '.join(missing)} (resolve_config({cfg.method!r}, ...) "
                                "fills them from the method's YAML)")
            if problems:
                raise ValueError(f"method {cfg.method!r}: {'; '.join(problems)}; known: {', '.join(self.extra_keys)}")

    def extra(self, key: str) -> Any:
        """A method-specific knob from ``cfg.extra`` (validated against ``extra_keys`` at construction)."""
        return self.cfg.extra[key]

    @abstractmethod
    def fit(self, data, *, checkpoint_dir: str | Path | None = None, resume: bool = False,
            progress: Callable[[dict], None] | None = None) -> None:
        """Prepare to perturb ``data`` (a BatchSource: ``len`` and ``batch(indices)``)."""

    @abstractmethod
    def perturb(self, x: torch.Tensor, y: torch.Tensor, ids: Sequence[str]) -> torch.Tensor:
        """δ for a batch of images in [0,1] on ``self.device``; depends only on each sample and its id
        (block methods such as NTGA: on the block the batch forms)."""

    def regen_batch_size(self) -> int:
        """Batch size for Algorithm 4. Per-sample methods may use any size (results do not depend on
        it); block methods (NTGA) return their block size."""
        return self.cfg.regen_batch_size

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
