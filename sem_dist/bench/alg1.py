"""Time per Algorithm-1 step for SEM and REM at the paper's step settings (K_u=10, J=5, K_a=10),
interleaved in one run, against one plain input-gradient pass and one training pass at the same batch
size and in the same layout the step uses; and where a SEM step's time goes.

amp_speedup: the SEM step in fp32 over the same step under bf16 autocast, both timed in the run (``trainer.amp``
``auto`` picks bf16 on CPUs with AMX or avx512_bf16: ``amp`` in ``layout`` says which the other figures used).
rem_over_sem: REM time / SEM time (paper: 3.91×; pass counting: (10·5·11+11)/(10·5+11) = 9.2×).
efficiency_sem: ((K_u·J + K_a)·t_input_grad + t_train) / t_sem_step (1 = no overhead beyond the passes), the
plain input-gradient pass over B images run as the step runs its passes (layout, compilation, chunks);
t_input_grad_whole_pass_s is the same pass unchunked.
t_passes_s, t_transform_s, t_random_s, t_project_s, t_other_s: a SEM step's time in forward/backward
passes, EOT transforms, random draws, projections, and the optimizer (see ``bench.profile``);
profile_coverage is their sum over the step time.
ops (with --ops N): the N operators with the most self CPU time in one SEM step, in each precision (torch
profiler, one step each after the timed ones), as ``{"op", "fp32_ms", "bf16_ms", "speedup"}``: where bf16 gains
and where it does not (docs/performance.md, "bf16 on CPUs"); ops_total_ms: all operators' self time in that step.
speedup_vs_contiguous (with --baseline-layout): the same SEM step as the code before issue #13 ran it
(contiguous, uncompiled model, passes run whole, glibc's default malloc) over this run's step. The baseline
runs in a child process started without this package's malloc settings (:mod:`sem_dist.runtime.allocator`, which
this process has from the benchmark's main, as ``sem-dist`` has), one step at a time when this process
asks, so its steps stay interleaved with the others. speedup_layout_only: the same baseline layout timed
in this process, i.e. with the malloc settings: what layout, compilation and chunking alone bring.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import resolve_config
from ..perturb.generator import GeneratorTraining
from ..runtime.device import cpu_summary, resolve_amp, resolve_device, trainer_layout
from ..training.pgd import frozen, input_gradient
from .profile import StepProfile, instrument


def add_arguments(group) -> None:
    group.add_argument("--arch", default="small_cnn", help="generator model (default small_cnn)")
    group.add_argument("--batch-size", type=int, help="images per step B (default 128; 32 with --quick)")
    group.add_argument("--image-side", type=int, default=32, help="square image side in pixels (default 32)")
    group.add_argument("--device", default="cpu", help="cpu (default), cuda[:N] or auto")
    group.add_argument("--memory-format", default="auto", choices=["auto", "channels_last", "contiguous"],
                       help="layout of the measured run (default auto = channels_last)")
    group.add_argument("--compile", default="off", choices=["auto", "on", "off"],
                       help="torch.compile the model (default off: compile time would swamp a short benchmark)")
    group.add_argument("--pass-chunk", default="auto",
                       help="rows per chunk of an input-gradient pass: auto (default; CPU: 128 rows at 32×32, "
                            "GPU: whole), off, or a number")
    group.add_argument("--amp", default="auto", choices=["auto", "on", "off"],
                       help="bf16 autocast on every pass (default auto: on CPUs with AMX or avx512_bf16); the SEM "
                            "step is timed in the other precision too, for amp_speedup")
    group.add_argument("--baseline-layout", action="store_true",
                       help="also time SEM with a contiguous, uncompiled model: reports speedup_vs_contiguous")
    group.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                       help="wall time (default) or this process's CPU time (all its threads), which other "
                            "processes' load skews less")
    group.add_argument("--reps", type=int, help="timed steps per method (default 3; 1 with --quick)")
    group.add_argument("--no-rem", action="store_true", help="time SEM only (REM costs ≈ 9× SEM: skip it for big models)")
    group.add_argument("--ops", type=int, default=0,
                       help="also list the N operators with the most CPU time in one SEM step, per precision")
    group.add_argument("--ku", type=int, help="K_u noise steps (default 10; fewer shortens a run, same pass shapes)")
    group.add_argument("--ka", type=int, help="K_a PGD steps (default 10)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn, clock: Callable[[], float] = time.perf_counter) -> float:
    _sync(device)
    t0 = clock()
    fn()
    _sync(device)
    return clock() - t0


def _input_grad_pass(model, x, y, chunk: int | None, amp: bool) -> None:
    with frozen(model):
        input_gradient(model, x, y, amp, chunk)


def _train_pass(model, opt, x, y) -> None:
    model.train()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _baseline_steps(conn, cfg_args: tuple, x: torch.Tensor, y: torch.Tensor, threads: int, cpu_clock: bool) -> None:
    """Child process: the baseline step, timed each time the parent sends True (False ends it)."""
    torch.set_num_threads(threads)
    tick = time.process_time if cpu_clock else time.perf_counter
    method, overrides, image_side, device = cfg_args
    run = GeneratorTraining.create(resolve_config(method, image_side, overrides=overrides), 10, 3, image_side,
                                   torch.device(device))
    run.run_step(x, y)  # warm-up, as for the others
    conn.send("ready")
    while conn.recv():
        conn.send(_timed(x.device, lambda: run.run_step(x, y), tick))


class BaselineProcess:
    """The baseline variant in a spawned interpreter with glibc's default malloc (see module docstring)."""

    def __init__(self, cfg_args: tuple, x: torch.Tensor, y: torch.Tensor, cpu_clock: bool):
        import multiprocessing as mp

        # a spawned interpreter: mallopt settings are per process, and the child never applies them
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        args = (child, cfg_args, x, y, torch.get_num_threads(), cpu_clock)
        self.proc = ctx.Process(target=_baseline_steps, args=args, daemon=True)
        self.proc.start()
        self.conn.recv()  # its warm-up is over: nothing it does overlaps a timed step

    def step(self) -> float:
        self.conn.send(True)
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(False)
        self.proc.join()


def profiled_steps(training: GeneratorTraining, x, y, steps: int,
                   clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], StepProfile]:
    """Run ``steps`` Algorithm-1 steps under the profile; their times (by ``clock``) and the profile."""
    profile = StepProfile(clock)
    times = []
    with instrument(profile, training.model, training.optimizer):
        for _ in range(steps):
            times.append(_timed(x.device, lambda: training.run_step(x, y), clock))
    return times, profile


def op_times(training: GeneratorTraining, x, y) -> dict[str, float]:
    """Self CPU milliseconds per operator in one Algorithm-1 step (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # read at the profiler's first use: no start/stop lines
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        training.run_step(x, y)
    return {e.key: e.self_cpu_time_total / 1000 for e in prof.key_averages()}


def _op_table(runs: dict, x, y, bf16: bool, n: int) -> dict:
    here, other = ("bf16", "fp32") if bf16 else ("fp32", "bf16")
    ms = {here: op_times(runs["sem"], x, y), other: op_times(runs["sem_other_precision"], x, y)}
    top = sorted(set(ms["fp32"]) | set(ms["bf16"]), key=lambda op: -max(ms["fp32"].get(op, 0), ms["bf16"].get(op, 0)))
    rows = [{"op": op, "fp32_ms": round(ms["fp32"].get(op, 0.0), 2), "bf16_ms": round(ms["bf16"].get(op, 0.0), 2)}
            for op in top[:n]]
    rows = [{**r, "speedup": round(r["fp32_ms"] / r["bf16_ms"], 2) if r["bf16_ms"] else None} for r in rows]
    return {"ops": rows, "ops_total_ms": {p: round(sum(t.values()), 2) for p, t in ms.items()}}


def run(quick: bool = False, verbose: bool = True, arch: str = "small_cnn", batch_size: int | None = None,
        image_side: int = 32, device: str = "cpu", memory_format: str = "auto", compile: str = "off",
        pass_chunk: str = "auto", amp: str = "auto", baseline_layout: bool = False, reps: int | None = None,
        no_rem: bool = False, ku: int | None = None, ka: int | None = None, clock: str = "wall", ops: int = 0) -> dict:
    torch.manual_seed(0)
    tick = time.process_time if clock == "cpu" else time.perf_counter
    batch = batch_size or (32 if quick else 128)
    reps = reps or (1 if quick else 3)
    dev = resolve_device(device)
    common = {"trainer.arch": arch, "trainer.batch_size": batch, "trainer.steps": 10 ** 6, "trainer.amp": amp,
              "trainer.memory_format": memory_format, "trainer.compile": compile, "trainer.pass_chunk": pass_chunk,
              **({"solver.steps": ku} if ku else {}), **({"attack.steps": ka} if ka else {})}
    bf16 = resolve_amp(amp, dev)
    other = {**common, "trainer.amp": "off" if bf16 else "on"}  # the SEM step in the other precision
    variants = {"sem": ("sem", common), "sem_other_precision": ("sem", other),
                **({} if no_rem else {"rem": ("rem", common)})}
    baseline = {**common, "trainer.amp": "off", "trainer.memory_format": "contiguous", "trainer.compile": "off",
                "trainer.pass_chunk": "off"}
    if baseline_layout:
        variants["sem_contiguous"] = ("sem", baseline)
    runs = {k: GeneratorTraining.create(resolve_config(m, image_side, overrides=o), 10, 3, image_side, dev)
            for k, (m, o) in variants.items()}
    x = torch.rand(batch, 3, image_side, image_side, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    main = BaselineProcess(("sem", baseline, image_side, str(dev)), x, y, clock == "cpu") if baseline_layout else None
    for r in runs.values():  # warm-up (and compilation, when on)
        r.run_step(x, y)
    net, opt, chunk = runs["sem"].model, runs["sem"].optimizer, runs["sem"].spec.chunk_rows(x)
    times: dict[str, list[float]] = {k: [] for k in [*runs, "main", "input_grad", "input_grad_whole", "train"]}
    profile_total = StepProfile(tick)
    for i in range(reps):  # interleaved so drift in machine load hits every measurement alike
        for k, r in runs.items():
            if k == "sem":
                t, profile = profiled_steps(r, x, y, 1, tick)
                for part, s in profile.seconds.items():
                    profile_total.seconds[part] += s
                times[k] += t
            else:
                times[k].append(_timed(dev, lambda: r.run_step(x, y), tick))
        if main is not None:
            times["main"].append(main.step())
        times["input_grad"] += [_timed(dev, lambda: _input_grad_pass(net, x, y, chunk, bf16), tick) for _ in range(5)]
        times["input_grad_whole"] += [_timed(dev, lambda: _input_grad_pass(net, x, y, None, bf16), tick) for _ in range(5)]
        times["train"] += [_timed(dev, lambda: _train_pass(net, opt, x, y), tick) for _ in range(5)]
        if verbose:
            print(f"rep {i + 1}/{reps}: " + " ".join(f"{k} {times[k][-1]:.2f}s" for k in runs), flush=True)
    if main is not None:
        main.close()
    med = {k: statistics.median(v) for k, v in times.items() if v}
    cfg = runs["sem"].cfg
    passes = cfg.solver.steps * cfg.solver.samples + cfg.attack.steps
    sem_total = sum(times["sem"])
    out = {
        "bench": "alg1", "quick": quick, "arch": arch, "image": [3, image_side, image_side], "batch_size": batch,
        "device": str(dev), "reps": reps, "clock": clock,
        "K_u": cfg.solver.steps, "J": cfg.solver.samples, "K_a": cfg.attack.steps,
        "layout": trainer_layout(cfg.trainer, dev, tuple(x.shape)),
        "sem_step_s": med["sem"], "sem_other_precision_step_s": med["sem_other_precision"],
        "amp_speedup": med["sem_other_precision"] / med["sem"] if bf16 else med["sem"] / med["sem_other_precision"],
        "t_input_grad_pass_s": med["input_grad"], "t_input_grad_whole_pass_s": med["input_grad_whole"],
        "t_train_pass_s": med["train"],
        "efficiency_sem": (passes * med["input_grad"] + med["train"]) / med["sem"],
        **profile_total.result(reps), "profile_coverage": profile_total.total() / sem_total,
        "random_share": profile_total.seconds.get("random", 0.0) / sem_total,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        **({"cpu": cpu_summary()} if dev.type == "cpu" else {}),
    }
    if not no_rem:
        out["rem_step_s"], out["rem_over_sem"] = med["rem"], med["rem"] / med["sem"]
    if ops:
        out.update(_op_table(runs, x, y, bf16, ops))
    if baseline_layout:
        out["sem_main_step_s"], out["speedup_vs_contiguous"] = med["main"], med["main"] / med["sem"]
        out["sem_contiguous_step_s"] = med["sem_contiguous"]
        out["speedup_layout_only"] = med["sem_contiguous"] / med["sem"]
    return out
