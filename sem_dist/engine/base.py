"""The seam between the stages and the engines: what a stage hands an engine, and what it gets back."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from ..config import ProtectConfig
    from ..data.arrays import ArrayDataset
    from ..perturb.methods import NoiseMethod
    from .input import Input
    from .ledger import UnitResult
    from .spec import RunSpec
    from .units import RegenJob


@dataclass
class Fitted:
    """The fitted method: its state (what ``_staging/method.pt`` holds, and what a Ray actor loads) and, when
    this process fitted it, the live object (an in-process engine uses it as it is)."""

    state: dict
    method: "NoiseMethod | None" = None


class Engine(Protocol):
    """Runs the stages' heavy work. ``fit`` is Algorithm 1 (or whatever the method learns) on the split:
    ``data`` is the whole split in memory, or the :class:`Input` to stream from storage. ``regenerate`` is
    Algorithm 4 over every unit not in ``done``; it records each finished unit in the ledger and returns every
    unit's result (``done``'s too) and the manifest's ``regeneration`` fields of its own."""

    def fit(self, spec: "RunSpec", cfg: "ProtectConfig", data: "ArrayDataset | Input", device: "torch.device",
            checkpoint: str) -> "tuple[NoiseMethod, dict]": ...

    def regenerate(self, spec: "RunSpec", inp: "Input", job: "RegenJob", done: "dict[int, UnitResult]",
                   fitted: Fitted) -> "tuple[list[UnitResult], dict]": ...
