"""Time per Algorithm-1 step for SEM and REM at the paper's step settings (K_u=10, J=5, K_a=10) with
the small CNN on 32×32×3, interleaved in one run, against one plain input-gradient pass and one
training pass at the same batch size.

rem_over_sem: REM time / SEM time (paper: 3.91×; pass counting: (10·5·11+11)/(10·5+11) = 9.2×).
efficiency_sem: ((K_u·J + K_a)·t_input_grad + t_train) / t_sem_step (1 = no overhead beyond the passes).
"""
from __future__ import annotations

import platform
import statistics
import time

import torch
import torch.nn.functional as F

from ..config import resolve_config
from ..perturb.generator import GeneratorTraining
from ..perturb.pgd import frozen


def _input_grad_pass(model, x, y) -> float:
    with frozen(model):
        t0 = time.perf_counter()
        d = torch.zeros_like(x, requires_grad=True)
        torch.autograd.grad(F.cross_entropy(model(x + d), y, reduction="sum"), d)
        return time.perf_counter() - t0


def _train_pass(model, opt, x, y) -> float:
    model.train()
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def run(quick: bool = False, verbose: bool = True) -> dict:
    torch.manual_seed(0)
    batch = 32 if quick else 128
    reps = 1 if quick else 3
    device = torch.device("cpu")
    common = {"trainer.arch": "small_cnn", "trainer.batch_size": batch, "trainer.steps": 10 ** 6}
    runs = {m: GeneratorTraining.create(resolve_config(m, 32, overrides=common), 10, 3, 32, device)
            for m in ("sem", "rem")}
    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    for r in runs.values():  # warm-up
        r.run_step(x, y)
    net = runs["sem"].model
    times = {"sem": [], "rem": [], "input_grad": [], "train": []}
    for i in range(reps):  # interleaved so drift in machine load hits every measurement alike
        for m, r in runs.items():
            t0 = time.perf_counter()
            r.run_step(x, y)
            times[m].append(time.perf_counter() - t0)
        times["input_grad"] += [_input_grad_pass(net, x, y) for _ in range(5)]
        times["train"] += [_train_pass(net, runs["sem"].optimizer, x, y) for _ in range(5)]
        if verbose:
            print(f"rep {i + 1}/{reps}: sem {times['sem'][-1]:.2f}s rem {times['rem'][-1]:.2f}s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    cfg = runs["sem"].cfg
    passes = cfg.solver.steps * cfg.solver.samples + cfg.attack.steps
    return {
        "bench": "alg1", "quick": quick, "arch": "small_cnn", "image": [3, 32, 32], "batch_size": batch,
        "K_u": cfg.solver.steps, "J": cfg.solver.samples, "K_a": cfg.attack.steps,
        "sem_step_s": med["sem"], "rem_step_s": med["rem"], "rem_over_sem": med["rem"] / med["sem"],
        "t_input_grad_pass_s": med["input_grad"], "t_train_pass_s": med["train"],
        "efficiency_sem": (passes * med["input_grad"] + med["train"]) / med["sem"],
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
    }
