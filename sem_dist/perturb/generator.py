"""Algorithm 1: training the noise generator (surrogate θ) by min-min-max.

Per step i: a minibatch (x, y); δ^u from the shared solver (``noise.solve_noise``); t ~ T;
δ^a = PGD(t(x + δ^u)) when the method trains θ adversarially (:func:`adversarial_inputs`); one SGD step
on θ with ℓ(f_θ(t(x + δ^u) + δ^a), y) (:func:`theta_update`). On a GPU each of the two halves runs as
one CUDA graph (``trainer.graphs``, :class:`~sem_dist.runtime.device.CapturedCall`). The choices of DESIGN.md's
table (SEM, REM, REM-θ, REM-δu, EM, Table 7's rows) are all configurations of this one loop.

Randomness is a pure function of (seed, step): every step reseeds its stream from those, and minibatches
come from seeded epoch permutations. A checkpoint therefore needs only the step to resume the exact
sequence, whichever process or machine picks it up. A step's draws are keyed by (seed, step, global row
index) (``rng.CounterStream``): with W workers each draws only its own rows and gets the same values the
whole batch would, so the worker count changes only floating-point summation order and BatchNorm's
per-worker batch statistics in θ's update.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ProtectConfig
from ..models import build_model, unwrap
from ..runtime.device import CapturedCall, autocast, prepare_for
from ..runtime.rng import RNG_SCHEME, CounterStream, row_keys, step_seed
from ..training.pgd import frozen, pgd
from ..training.sampling import StepSampler
from .noise import NoiseSpec, solve_noise

CHECKPOINT_NAME = "generator.pt"


class BatchSource(Protocol):
    """What Algorithm 1 needs from a dataset: its size and a batch by indices (images in [0,1])."""

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def lr_at(cfg: ProtectConfig, step: int) -> float:
    """Step decay (official code: ×0.1 every 2000 steps)."""
    t = cfg.trainer
    return t.lr * (t.lr_gamma ** (step // t.lr_step)) if t.lr_step > 0 else t.lr


def adversarial_inputs(net: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ProtectConfig, spec: NoiseSpec,
                       stream) -> torch.Tensor:
    """Algorithm 1 lines 2–11 on the plain module ``net`` (never a DDP wrapper: these passes need no
    communication): δ^u from the solver, t ~ T and, when θ is trained adversarially, δ^a = PGD(t(x + δ^u)).
    Returns θ's training inputs t(x + δ^u) + δ^a."""
    with frozen(net):
        delta_u = solve_noise(net, x, y, spec, stream)
        xt = spec.transform.sample(x + delta_u, stream)
        if cfg.trainer.model_adv:
            xt = xt + pgd(net, xt, y, cfg.budget.rho_a, cfg.alpha_a, cfg.attack.steps,
                          stream=stream if cfg.attack.random_start else None, amp=spec.amp_on(xt),
                          chunk=spec.chunk_rows(xt))
    return xt


def theta_update(model: nn.Module, optimizer: torch.optim.Optimizer, xt: torch.Tensor, y: torch.Tensor,
                 amp: bool, loss_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 line 12: one SGD step on θ with ``loss_scale`` · Σ ℓ(f_θ(xt), y), through ``model`` (a DDP
    wrapper all-reduces the gradient). Returns the summed loss and the count of correct predictions as
    tensors: reading them waits for the device, which the caller does once per step."""
    model.train()
    with autocast(xt.device, amp):
        logits = model(xt)
    loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    (loss_sum * loss_scale).backward()
    optimizer.step()
    return loss_sum.detach(), (logits.argmax(1) == y).sum()


@dataclass
class GeneratorTraining:
    """The state of an Algorithm-1 run: model, optimizer and the next step to take."""

    cfg: ProtectConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    spec: NoiseSpec
    step: int = 0

    def __post_init__(self) -> None:
        # each half of a step as one CapturedCall (trainer.graphs): on a GPU a step replays two CUDA graphs
        # instead of launching thousands of kernels. θ's update through a DDP wrapper stays eager: its
        # gradient all-reduce is not captured.
        net = unwrap(self.model)
        graphs = self.cfg.trainer.graphs
        self._inputs = CapturedCall(
            lambda x, y, keys: adversarial_inputs(net, x, y, self.cfg, self.spec, CounterStream(keys)), graphs)
        self._update = CapturedCall(self._theta_update, graphs if net is self.model else "off")

    def _theta_update(self, xt: torch.Tensor, y: torch.Tensor, *, lr: float, loss_scale: float):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return theta_update(self.model, self.optimizer, xt, y, self.spec.amp_on(xt), loss_scale)

    @classmethod
    def create(cls, cfg: ProtectConfig, num_classes: int, in_channels: int, image_side: int,
               device: torch.device, wrap: Callable[[nn.Module], nn.Module] | None = None) -> "GeneratorTraining":
        model = prepare_for(cfg.trainer, build_model(cfg.trainer.arch, num_classes, in_channels, seed=cfg.seed), device)
        if wrap is not None:
            model = wrap(model)
        t = cfg.trainer
        opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        return cls(cfg, model, opt, NoiseSpec.from_config(cfg, image_side))

    @property
    def done(self) -> bool:
        return self.step >= self.cfg.trainer.steps

    def run_step(self, x: torch.Tensor, y: torch.Tensor, rank: int = 0, world: int = 1) -> dict[str, float]:
        """One step on this worker's rows ``rank::world`` of the global batch ``(x, y)`` given here
        already sliced; the random draws are made for the same rows only (keyed by their global index).
        The loss is scaled by W/B, so DDP's average over W workers is the mean over the global batch."""
        batch = self.cfg.trainer.batch_size if world > 1 else x.shape[0]
        keys = row_keys(step_seed(self.cfg.seed, self.step), torch.arange(rank, batch, world, device=x.device))
        xt = self._inputs(x, y, keys)
        loss_sum, correct = self._update(xt, y, lr=lr_at(self.cfg, self.step), loss_scale=world / batch)
        self.step += 1
        return {"loss": float(loss_sum) / len(y), "acc": float(correct) / len(y)}

    def state_dict(self) -> dict:
        return {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "lr": lr_at(self.cfg, self.step),
                # the RNG state is a pure function of these (see module docstring)
                "rng": {"seed": self.cfg.seed, "scheme": RNG_SCHEME},
                "config": self.cfg.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        saved = ProtectConfig.from_dict(state["config"]).to_dict()
        mine = self.cfg.to_dict()
        if saved != mine:
            diff = sorted(k for k in mine if mine[k] != saved.get(k))
            raise ValueError(f"checkpoint was written by a different configuration (differs in: {', '.join(diff)})")
        scheme = state.get("rng", {}).get("scheme")
        if scheme != RNG_SCHEME:  # the remaining steps would draw other noise than the run began with
            raise ValueError(f"checkpoint was written with random scheme {scheme!r}; this sem_dist draws with "
                             f"{RNG_SCHEME!r}: start the run afresh")
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])  # new momentum tensors: graphs must record again
        self._update.reset()
        self.step = int(state["step"])


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Atomic write: a crash leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Checkpoints are plain state dicts: loaded with ``weights_only=True``, never unpickled freely."""
    return torch.load(path, map_location=map_location, weights_only=True)


def memory_batches(training: GeneratorTraining, data: BatchSource, rank: int = 0, world: int = 1
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This worker's rows ``rank::world`` of each step's global batch, from seeded epoch permutations."""
    sampler = StepSampler(len(data), training.cfg.trainer.batch_size, training.cfg.seed)
    while True:
        yield data.batch(sampler.indices(training.step)[rank::world])


def iterate_steps(training: GeneratorTraining, data: BatchSource | None, device: torch.device,
                  rank: int = 0, world: int = 1,
                  batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Iterator[dict[str, float]]:
    """Run the remaining steps; this worker takes rows ``rank::world`` of each global batch, from the
    in-memory ``data`` or, when given, from ``batches`` (e.g. a streamed shard, ``distributed.stream``)."""
    batches = batches if batches is not None else memory_batches(training, data, rank, world)
    while not training.done:
        x, y = next(batches)
        t0 = time.perf_counter()
        stats = training.run_step(x.to(device, non_blocking=True), y.to(device, non_blocking=True), rank, world)
        stats["step"] = training.step
        stats["step_s"] = time.perf_counter() - t0
        yield stats


def train_generator(cfg: ProtectConfig, data: BatchSource, num_classes: int, in_channels: int, image_side: int,
                    device: torch.device, checkpoint_dir: str | Path | None = None, resume: bool = False,
                    progress=None, stop_after: int | None = None) -> GeneratorTraining:
    """Algorithm 1 in this process. With ``checkpoint_dir`` a checkpoint is written every
    ``trainer.checkpoint_every`` steps and at the end; ``resume`` continues from it.
    ``stop_after`` ends the call after that many steps (the run stays resumable)."""
    training = GeneratorTraining.create(cfg, num_classes, in_channels, image_side, device)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if resume and ckpt is not None and ckpt.exists():
        training.load_state_dict(load_checkpoint(ckpt, device))
    every = max(1, cfg.trainer.checkpoint_every)
    taken = 0
    for stats in iterate_steps(training, data, device):
        taken += 1
        if progress is not None:
            progress(stats)
        if ckpt is not None and (training.step % every == 0 or training.done):
            save_checkpoint(training.state_dict(), ckpt)
        if stop_after is not None and taken >= stop_after:
            break
    return training
