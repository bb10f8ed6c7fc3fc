"""Every noise method by name (like torchattacks' one class per attack): the min-min-max family
and the baselines (TAP, SC, NTGA), behind the interface :class:`NoiseMethod` of ``base`` (re-exported
here). A method is built from a resolved :class:`ProtectConfig`; ``fit(data)`` does whatever training
the method needs, and ``perturb(x, y, ids)`` returns δ for a batch with ‖δ‖∞ ≤ ρ_u and x + δ ∈ [0, 1].
``state_dict`` / ``load_state_dict`` carry the fitted state to the workers that regenerate noise
(Algorithm 4).
"""
from __future__ import annotations

import torch

from ..config import ProtectConfig
from ..models import build_model
from ..runtime.device import prepare_for
from ..runtime.rng import CounterStream
from .base import NoiseMethod
from .generator import GeneratorTraining, train_generator
from .noise import KeyedSolver, NoiseSpec
from .ntga import NeuralTangentGeneralizationAttack
from .sc import SyntheticShortcut
from .tap import TargetedAdversarialPoisoning


class MinMinMax(NoiseMethod):
    """SEM, REM, REM-θ, REM-δu, EM and Table 7's rows: Algorithm 1 then Algorithm 4."""

    names = ("sem", "rem", "rem-theta", "rem-delta", "em", "sem-no-adv", "eot-minmin")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.spec = NoiseSpec.from_config(self.cfg, self.image_side)
        net = build_model(self.cfg.trainer.arch, self.num_classes, self.in_channels)
        self.model = prepare_for(self.cfg.trainer, net, self.device)
        self.solver = KeyedSolver(self.model, self.spec, self.cfg.trainer.graphs)

    def fit(self, data, *, checkpoint_dir=None, resume=False, progress=None) -> None:
        training = train_generator(self.cfg, data, self.num_classes, self.in_channels, self.image_side,
                                   self.device, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)
        self.use_generator(training)

    def use_generator(self, training: GeneratorTraining) -> None:
        """Adopt a trained generator (from this process, a checkpoint, or Ray Train)."""
        from ..models import unwrap

        self.model.load_state_dict(unwrap(training.model).state_dict())

    def perturb(self, x, y, ids):
        return self.solver(x, y, CounterStream.for_samples(self.cfg.seed, ids, x.device).keys)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])


METHODS: dict[str, type[NoiseMethod]] = {
    name: cls for cls in (MinMinMax, TargetedAdversarialPoisoning, SyntheticShortcut, NeuralTangentGeneralizationAttack)
    for name in cls.names}


METHOD_FORMAT = "sem_dist.method"


def method_state(method: NoiseMethod) -> dict:
    """Everything Algorithm 4 needs to rebuild a fitted method elsewhere (plain tensors and builtins, so
    it loads with ``weights_only=True``)."""
    return {"format": METHOD_FORMAT, "config": method.cfg.to_dict(), "num_classes": method.num_classes,
            "in_channels": method.in_channels, "image_side": method.image_side, "state": method.state_dict()}


def as_method_state(state: dict, num_classes: int, in_channels: int, image_side: int, where: str) -> dict:
    """A :func:`method_state` dict from either that format or an Algorithm-1 checkpoint (``generator.pt``:
    model, optimizer, step, config), checked against the data it will perturb."""
    if state.get("format") != METHOD_FORMAT:
        if not {"model", "config"} <= set(state):
            raise ValueError(f"{where}: neither a sem_dist method checkpoint nor an Algorithm-1 generator.pt")
        state = {"format": METHOD_FORMAT, "config": state["config"], "num_classes": num_classes,
                 "in_channels": in_channels, "image_side": image_side, "state": {"model": state["model"]}}
    want = {"num_classes": num_classes, "in_channels": in_channels, "image_side": image_side}
    got = {k: state[k] for k in want}
    if got != want:
        raise ValueError(f"{where}: the generator was fitted for {got}, the data has {want}")
    return state


def method_from_state(state: dict, device: torch.device) -> NoiseMethod:
    cfg = ProtectConfig.from_dict(state["config"])
    method = get_method(cfg, state["num_classes"], state["in_channels"], state["image_side"], device)
    method.load_state_dict(state["state"])
    return method


def get_method(cfg: ProtectConfig, num_classes: int, in_channels: int, image_side: int,
               device: torch.device) -> NoiseMethod:
    try:
        cls = METHODS[cfg.method]
    except KeyError:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(sorted(METHODS))}") from None
    return cls(cfg, num_classes, in_channels, image_side, device)
