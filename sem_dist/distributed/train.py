"""Algorithm 1 on Ray Train (V2): DDP across workers, checkpoints in local or S3 storage, resume,
and restarts of failed workers.

Each worker takes rows ``rank::W`` of every global batch (the global batch size B is the config's,
whatever W is). δ^u and δ^a are solved per worker on the plain module with no communication; only θ's
gradient goes through DDP's all-reduce (gloo on CPU, nccl on GPU). Random draws are keyed by each
row's global index, so a worker draws only its own rows (see ``perturb.generator``), and each worker's
loss is scaled by W/B so DDP's average equals the global mean: the worker count changes only
floating-point summation order and the BatchNorm statistics of θ's training-mode forward, which each
worker computes over its B/W rows.

The dataset goes into Ray's object store once; workers on a node read it zero-copy from shared memory
instead of each loading its own copy.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import ProtectConfig
from ..perturb.generator import CHECKPOINT_NAME, GeneratorTraining, iterate_steps, load_checkpoint, save_checkpoint


@dataclass
class RayTrainOptions:
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    storage: str = "~/sem_dist_runs"  # local folder or s3://bucket/prefix
    name: str = "generator"  # the run's folder under storage; same (storage, name) + resume continues it
    resume: bool = False
    max_failures: int = 2  # worker restarts (from the latest checkpoint) before the run fails
    s3_endpoint: str | None = None
    s3_profile: str | None = None  # a profile name each node resolves; never a secret
    log_every_s: float = 15.0


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _worker_loop(config: dict) -> None:
    """Ray Train worker function: the core Algorithm-1 loop with checkpoints reported to Ray."""
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cfg = ProtectConfig.from_dict(config["cfg"])
    data = ray.get(config["data"])
    training = GeneratorTraining.create(cfg, data.num_classes, data.in_channels, data.image_side, device,
                                        wrap=ray.train.torch.prepare_model)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            training.load_state_dict(load_checkpoint(Path(d) / CHECKPOINT_NAME, device))
    resumed_from = training.step
    every = max(1, cfg.trainer.checkpoint_every)
    total = cfg.trainer.steps
    t0 = last_log = time.monotonic()
    if rank == 0:
        print(f"[sem-dist] Algorithm 1 on {world} worker(s), {device}: steps {resumed_from}→{total}", flush=True)
    for stats in iterate_steps(training, data, device, rank, world):
        now = time.monotonic()
        rate = (training.step - resumed_from) / max(now - t0, 1e-9)
        if rank == 0 and (now - last_log >= config["log_every_s"] or training.done):
            last_log = now
            print(f"[sem-dist] step {training.step}/{total} · {rate:.2f} steps/s · "
                  f"ETA {_fmt_eta((total - training.step) / rate if rate else float('inf'))} · "
                  f"loss {stats['loss']:.3f}", flush=True)
        if training.step % every == 0 or training.done:
            metrics = {**stats, "steps_per_s": rate, "resumed_from": resumed_from, "workers": world,
                       "elapsed_s": now - t0}
            if rank == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint(training.state_dict(), Path(tmp) / CHECKPOINT_NAME)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)


def fit_generator(cfg: ProtectConfig, data, opts: RayTrainOptions, address: str | None = None) -> tuple[dict, dict]:
    """Run Algorithm 1 on Ray Train; returns the final checkpoint's state dict and the last metrics."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .cluster import connect
    from .storage import run_exists, storage_for

    if opts.workers < 1:
        raise ValueError(f"--workers must be >= 1 for Ray Train, got {opts.workers}")
    embedded = not (address or os.environ.get("RAY_ADDRESS"))
    connect(address)
    if embedded and opts.gpus_per_worker > 0:  # an embedded cluster never grows: fail now, not hang waiting
        have = ray.cluster_resources().get("GPU", 0)
        if have < opts.workers * opts.gpus_per_worker:
            raise ValueError(f"--workers {opts.workers} × --gpus-per-worker {opts.gpus_per_worker:g} needs "
                             f"{opts.workers * opts.gpus_per_worker:g} GPUs; this machine's Ray has {have:g}")
    storage_path, filesystem = storage_for(opts.storage, opts.s3_endpoint, opts.s3_profile)
    if not opts.resume and run_exists(storage_path, filesystem, opts.name):
        raise FileExistsError(f"a run named {opts.name!r} already exists under {opts.storage}; "
                              "pass --resume to continue it or choose another name")
    use_gpu = opts.gpus_per_worker > 0
    resources = {"CPU": opts.cpus_per_worker, **({"GPU": opts.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg.to_dict(), "data": ray.put(data), "log_every_s": opts.log_every_s},
        scaling_config=ScalingConfig(num_workers=opts.workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=opts.name, storage_path=storage_path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=opts.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             logging_config=LoggingConfig(log_level="WARNING"),
                             # our own progress lines are enough; Ray's print patch would repeat them
                             worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("Ray Train finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = load_checkpoint(Path(d) / CHECKPOINT_NAME)
    return state, dict(result.metrics or {})


def fit_method_distributed(cfg: ProtectConfig, data, device, opts: RayTrainOptions,
                           address: str | None = None):
    """``pipeline.fit_method`` on Ray Train: the fitted method and Ray's last metrics. Methods without an
    Algorithm-1 generator (TAP, SC, NTGA) have nothing to spread across workers and fit in-process."""
    import sys

    from ..perturb.methods import MinMinMax, get_method
    from ..pipeline import fit_method

    method = get_method(cfg, data.num_classes, data.in_channels, data.image_side, device)
    if not isinstance(method, MinMinMax):
        print(f"sem-dist: {cfg.method} has no Algorithm-1 generator; fitting in this process", file=sys.stderr)
        return fit_method(cfg, data, device), {"workers": 1}
    state, metrics = fit_generator(cfg, data, opts, address)
    method.load_state_dict({"model": state["model"]})
    return method, metrics
