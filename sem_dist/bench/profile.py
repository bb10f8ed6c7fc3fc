"""Where an Algorithm-1 step's time goes: forward/backward passes, transforms, random draws, projections,
and the rest (optimizer step, loss, update arithmetic).

The step's code is not changed for this: :func:`instrument` wraps, for the duration of a ``with`` block,
the functions each part runs through (the model's forward, ``torch.autograd.grad`` and
``Tensor.backward``, ``Transform.sample``, the random streams, ``project``, the optimizer). Sections
nest (a transform draws its uniforms; PGD's random start projects), and each records only its exclusive
time, so the parts add up to the time spent inside any of them. Wall time the wrappers do not cover
(tensor copies, the signed update) is what a caller sees as the gap between the parts' sum and the step.
"""
from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from typing import Callable, Iterator

import torch

from ..perturb import attacks, noise
from ..runtime import rng
from ..training import pgd, transforms

PARTS = ("passes", "transform", "random", "project", "other")


class StepProfile:
    """Exclusive time per part, accumulated over the sections entered while it is installed."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        # wall time for benchmarks; a test passes time.process_time, which other processes' load cannot skew
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # [start, time spent in nested sections]

    def enter(self) -> None:
        self._stack.append([self.clock(), 0.0])

    def leave(self, part: str) -> None:
        start, nested = self._stack.pop()
        elapsed = self.clock() - start
        self.seconds[part] += elapsed - nested
        if self._stack:
            self._stack[-1][1] += elapsed

    @contextlib.contextmanager
    def section(self, part: str) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave(part)

    def wrap(self, part: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.section(part):
                return fn(*args, **kwargs)
        return timed

    def total(self) -> float:
        return sum(self.seconds.values())

    def result(self, steps: int = 1) -> dict[str, float]:
        """Seconds per step for each part, as ``t_<part>_s``."""
        return {f"t_{p}_s": self.seconds.get(p, 0.0) / steps for p in PARTS}


@contextlib.contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def instrument(profile: StepProfile, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Attribute the time of Algorithm-1 steps run inside the block to ``profile``'s parts."""
    wrap = profile.wrap
    with contextlib.ExitStack() as stack:
        for module in (noise, pgd, attacks):  # the names each module imported and calls
            for name, part in (("project", "project"), ("uniform_ball", "random")):
                if hasattr(module, name):
                    stack.enter_context(_patched(module, name, wrap(part, getattr(module, name))))
        stack.enter_context(_patched(rng.CounterStream, "rand", wrap("random", rng.CounterStream.rand)))
        stack.enter_context(_patched(transforms.Transform, "sample", wrap("transform", transforms.Transform.sample)))
        stack.enter_context(_patched(torch.autograd, "grad", wrap("passes", torch.autograd.grad)))
        stack.enter_context(_patched(torch.Tensor, "backward", wrap("passes", torch.Tensor.backward)))
        for name in ("step", "zero_grad"):
            stack.enter_context(_patched(optimizer, name, wrap("other", getattr(optimizer, name))))
        compiled = getattr(model, "_compiled_call_impl", None)  # set by Module.compile()
        if compiled is not None:
            # hooks would run inside the compiled graph (a graph break, and a recompilation in the timed
            # step): time the compiled call from outside instead
            stack.enter_context(_patched(model, "_compiled_call_impl", wrap("passes", compiled)))
        else:
            pre = model.register_forward_pre_hook(lambda *_: profile.enter())
            post = model.register_forward_hook(lambda *_: profile.leave("passes"))
            stack.callback(pre.remove)
            stack.callback(post.remove)
        yield
