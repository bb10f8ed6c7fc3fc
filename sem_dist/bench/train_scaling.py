"""Algorithm 1 on Ray Train with 1 and 2 CPU workers (gloo) on this machine, and the per-step
compute/communication ratio used to project scaling to 8–64 GPUs.

Per step a worker runs (K_u·J + K_a) input-gradient passes and one training pass over its B/N rows, then
one all-reduce of θ's gradient. We time the all-reduce of a θ-sized fp32 tensor between two gloo processes
on loopback, and report the ratio of one worker's step compute to it.
"""
from __future__ import annotations

import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..config import resolve_config
from ..data.sources.digits import load_digits
from ..models import build_model


def _allreduce_worker(rank: int, port: int, numel: int, reps: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    t = torch.ones(numel)
    dist.all_reduce(t)  # warm-up
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        out.put(statistics.median(times))
    dist.destroy_process_group()


def allreduce_seconds(numel: int, reps: int = 10) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_allreduce_worker, args=(r, port, numel, reps, q)) for r in range(2)]
    for p in procs:
        p.start()
    result = q.get(timeout=300)
    for p in procs:
        p.join()
    return result


def run(quick: bool = False, verbose: bool = True) -> dict:
    import tempfile

    from ..distributed.algorithm1 import RayTrainOptions, fit_generator
    from ..distributed.cluster import connect
    from ..engine.spec import EngineSpec

    steps = 4 if quick else 12
    over = {"trainer.arch": "small_cnn", "trainer.batch_size": 64, "trainer.steps": steps,
            "trainer.checkpoint_every": steps}
    cfg = resolve_config("sem", 32, overrides=over)
    data = load_digits("train")
    connect(num_cpus=max(4, os.cpu_count() or 1))
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            _, metrics = fit_generator(cfg, data, RayTrainOptions(engine=EngineSpec(workers=workers), checkpoint=tmp,
                                                                  name=f"w{workers}", log_every_s=1e9))
            rates[workers] = metrics["steps_per_s"]
            if verbose:
                print(f"{workers} worker(s): {rates[workers]:.3f} steps/s", flush=True)
    numel = sum(p.numel() for p in build_model("small_cnn", 10, 1).parameters())
    t_ar = allreduce_seconds(numel)
    r18 = sum(p.numel() for p in build_model("resnet18", 10, 3).parameters())
    step_compute = 1.0 / rates[2]  # one worker's step at B/2 rows, all-reduce included (an upper bound)
    return {"bench": "train-scaling", "quick": quick, "arch": "small_cnn", "batch_size": 64, "steps": steps,
            "K_u": cfg.solver.steps, "J": cfg.solver.samples, "K_a": cfg.attack.steps,
            "steps_per_s_1": rates[1], "steps_per_s_2": rates[2], "speedup_2": rates[2] / rates[1],
            "theta_params": numel, "allreduce_theta_s": t_ar, "compute_over_comm": step_compute / t_ar,
            "passes_per_step": cfg.solver.steps * cfg.solver.samples + cfg.attack.steps + 1,
            "resnet18_params": r18, "cpu_count": os.cpu_count()}
