"""Algorithm 1 on Ray Train (V2): DDP across workers, checkpoints in local or S3 storage, resume,
and restarts of failed workers.

Each worker takes rows ``rank::W`` of every global batch (the global batch size B is the config's,
whatever W is). δ^u and δ^a are solved per worker on the plain module with no communication; only θ's
gradient goes through DDP's all-reduce (gloo on CPU, nccl on GPU). Random draws are keyed by each
row's global index, so a worker draws only its own rows (see ``perturb.generator``), and each worker's
loss is scaled by W/B so DDP's average equals the global mean: the worker count changes only
floating-point summation order and the BatchNorm statistics of θ's training-mode forward, which each
worker computes over its B/W rows.

Two ways to feed the workers:
- an in-memory ``ArrayDataset`` (small data) goes into Ray's object store once; workers on a node read it
  zero-copy and sample minibatches from seeded epoch permutations, exactly as the in-process loop does;
- an image-rows ``ray.data.Dataset`` (any size) is split among the workers by Ray Train
  (``datasets={"train": ds}``); each worker streams its shard through a seeded local shuffle buffer
  (``distributed.stream``) and nothing holds the whole dataset. Checkpoints then also store every
  worker's stream position, and a resumed run with the same worker count replays the same order.
See docs/ray-train.md for what the buffer changes compared with a full permutation.
"""
from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import ProtectConfig
from ..data.storage import DataError, StorageOptions
from ..engine.spec import EngineSpec
from ..perturb.generator import CHECKPOINT_NAME, GeneratorTraining, iterate_steps, load_checkpoint, save_checkpoint
from .stream import DEFAULT_SHUFFLE_BUFFER_ROWS


@dataclass
class RayTrainOptions:
    """One Algorithm-1 run on Ray Train: the engine's resources (``engine``, passed whole) and this run's own
    settings."""

    engine: EngineSpec = EngineSpec(workers=2)
    checkpoint: str = "~/sem_dist_runs"  # local folder or s3://bucket/prefix (see storage.default_checkpoint_uri)
    name: str = "generator"  # the run's folder under checkpoint; same (checkpoint, name) + resume continues it
    resume: bool = False
    storage: StorageOptions = StorageOptions()  # how every node reaches an s3:// checkpoint folder
    max_failures: int = 2  # worker restarts (from the latest checkpoint) before the run fails
    log_every_s: float = 15.0
    shuffle_buffer_rows: int = DEFAULT_SHUFFLE_BUFFER_ROWS  # per worker, streamed datasets only
    on_bad_record: str = "fail"  # streamed datasets: rows whose "error" is set fail the run or are left out
    stop_after: int | None = None  # end after this many steps with a checkpoint (the run stays resumable)
    progress: bool = False  # a progress bar in the driver over rank 0's steps (protect's fit stage)


def uses_ray_train(workers: int, checkpoint_uri: str | None) -> bool:
    """Algorithm 1 runs on Ray Train with several workers, and with one worker when its checkpoints go to
    object storage (Ray Train's storage layer writes there; the in-process loop writes local files)."""
    from .storage import is_remote

    return workers > 1 or is_remote(checkpoint_uri)


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _feed(config: dict, training: GeneratorTraining, state: dict | None, rank: int, world: int):
    """(this worker's batch iterator, its stream or None)."""
    import ray
    import ray.train

    from ..perturb.generator import memory_batches
    from .stream import ShardStream, StreamPosition

    if "data" in config:
        return memory_batches(training, ray.get(config["data"]), rank, world), None
    saved = (state or {}).get("stream") or {}
    positions = saved.get("positions") or []
    if len(positions) == world:
        position = StreamPosition(*positions[rank])
    else:  # a new run, or a changed worker count: shards differ, so start the current epoch afresh
        position = StreamPosition(max((e for e, _ in positions), default=0), 0)
        if positions and rank == 0:
            print(f"[sem-dist] checkpoint was written by {len(positions)} worker(s), not {world}: "
                  f"streaming restarts at epoch {position.epoch}", flush=True)
    shard = ray.train.get_dataset_shard("train")
    stream = ShardStream(lambda: shard.iter_batches(batch_size=256, batch_format="numpy"),
                         config["batch_rows"], training.cfg.seed, rank, config["buffer_rows"], position)
    return iter(stream), stream


def _rank0_buffers(batches, model, world: int):
    """``batches``, with every worker taking rank 0's BatchNorm running statistics before each step.
    δ^u and δ^a are solved in eval mode on these statistics; without the sync each worker would use its own
    (updated by its own rows), which a checkpoint (rank 0's) could not restore exactly."""
    import torch.distributed as dist

    from ..models import unwrap

    buffers = list(unwrap(model).buffers())
    for batch in batches:
        if world > 1:
            for b in buffers:
                dist.broadcast(b, src=0)
        yield batch


def _stream_positions(stream, world: int) -> list[list[int]]:
    """Every worker's stream position (rank order), for rank 0's checkpoint."""
    if world == 1:
        return [stream.position.to_list()]
    import torch.distributed as dist

    gathered: list = [None] * world
    dist.all_gather_object(gathered, stream.position.to_list())
    return gathered


def _worker_loop(config: dict) -> None:
    """Ray Train worker function: the core Algorithm-1 loop with checkpoints reported to Ray."""
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cfg = ProtectConfig.from_dict(config["cfg"])
    training = GeneratorTraining.create(cfg, *config["dims"], device, wrap=ray.train.torch.prepare_model)
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(Path(d) / CHECKPOINT_NAME, device)
        training.load_state_dict(state)
    batches, stream = _feed(config, training, state, rank, world)
    resumed_from = training.step
    every = max(1, cfg.trainer.checkpoint_every)
    total = cfg.trainer.steps
    stop_at = min(total, resumed_from + config["stop_after"]) if config["stop_after"] else total
    t0 = last_log = time.monotonic()
    steps_seen, last_seen = config.get("steps_seen") if rank == 0 else None, 0.0
    if rank == 0:
        fed = "in-memory data" if stream is None else f"a streamed shard per worker ({config['batch_rows']} rows/step)"
        print(f"[sem-dist] Algorithm 1 on {world} worker(s), {device}, {fed}: steps {resumed_from}→{total}",
              flush=True)
    for stats in iterate_steps(training, None, device, rank, world,
                               batches=_rank0_buffers(batches, training.model, world)):
        now = time.monotonic()
        rate = (training.step - resumed_from) / max(now - t0, 1e-9)
        stopping = training.step >= stop_at
        if steps_seen is not None and (now - last_seen >= 0.5 or stopping):
            last_seen = now
            steps_seen.put.remote(training.step, float(stats["loss"]), float(stats["acc"]))
        if rank == 0 and (now - last_log >= config["log_every_s"] or stopping):
            last_log = now
            print(f"[sem-dist] step {training.step}/{total} · {rate:.2f} steps/s · "
                  f"ETA {_fmt_eta((total - training.step) / rate if rate else float('inf'))} · "
                  f"loss {stats['loss']:.3f}", flush=True)
        if training.step % every == 0 or stopping:
            metrics = {**stats, "steps_per_s": rate, "resumed_from": resumed_from, "workers": world,
                       "elapsed_s": now - t0}
            positions = _stream_positions(stream, world) if stream is not None else None
            if rank == 0:
                saved = training.state_dict()
                if positions is not None:
                    saved["stream"] = {"positions": positions}
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint(saved, Path(tmp) / CHECKPOINT_NAME)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)
        if stopping:
            break


def _dims(data, info) -> tuple[int, int, int]:
    """(classes, channels, image side) of an in-memory dataset or of a streamed one's ``DatasetInfo``."""
    if info is not None:
        return len(info.classes), info.channels, min(info.height, info.width)
    return data.num_classes, data.in_channels, data.image_side


def _feed_config(data, info, cfg: ProtectConfig, opts: RayTrainOptions) -> tuple[dict, dict, object]:
    """(train_loop_config entries, TorchTrainer ``datasets``, its ``dataset_config``) for either feed."""
    import ray
    import ray.data

    if not isinstance(data, ray.data.Dataset):
        return {"data": ray.put(data)}, {}, None
    from ray.train import DataConfig

    from .stream import BAD_RECORD_POLICIES, check_good_rows, rows_per_worker

    if info is None:
        raise ValueError("a streamed dataset needs its DatasetInfo (classes, channels, size)")
    if opts.on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"--on-bad-record must be one of {', '.join(BAD_RECORD_POLICIES)}, not {opts.on_bad_record!r}")
    if opts.shuffle_buffer_rows < 1:
        raise ValueError(f"the shuffle buffer must hold >= 1 rows, got {opts.shuffle_buffer_rows}")
    rows = rows_per_worker(cfg.trainer.batch_size, opts.engine.train_workers)
    good = data.map_batches(check_good_rows, fn_kwargs={"policy": opts.on_bad_record}, batch_format="numpy")
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # each epoch's shard order is deterministic: exact resume needs it
    # which rows a rank gets must not depend on where blocks landed (locality), so that a resume on another
    # node layout skips the same rows: blocks go to ranks in input order (Ray 2.60 also drops the hints when
    # order is preserved; this says so rather than rely on it)
    return ({"batch_rows": rows, "buffer_rows": opts.shuffle_buffer_rows}, {"train": good},
            DataConfig(execution_options=ingest, enable_shard_locality=False))


def _bad_record(exc: BaseException) -> DataError | None:
    """The DataError behind a failed run (a worker read a bad record), as a one-line error. Ray wraps it in
    its task and worker-group errors, whose own messages are truncated tracebacks: search each worker's
    chain for the original exception, else for its printed form."""
    import re

    seen, todo, printed = set(), [exc, *getattr(exc, "worker_failures", {}).values()], None
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e) is DataError:
            return DataError(str(e))
        printed = printed or re.search(r"DataError: (bad record [^\n]*)", str(e))
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return DataError(printed.group(1)) if printed else None


class StepsSeen:
    """Rank 0's latest (step, loss, acc), for the driver's progress bar: Ray Train V2 keeps the reports in
    its controller actor, out of the driver's sight. A zero-CPU actor; rank 0 tells it twice a second."""

    def __init__(self) -> None:
        self.latest: tuple[int, float, float] | None = None

    def put(self, step: int, loss: float, acc: float) -> None:
        self.latest = (step, loss, acc)

    def get(self) -> tuple[int, float, float] | None:
        return self.latest


@contextlib.contextmanager
def _driver_bar(total: int, desc: str, steps_seen):
    """While Ray Train runs: a bar in the driver (as the in-process loop draws), polled from ``steps_seen``
    every second by a thread; nothing without it."""
    if steps_seen is None:
        yield
        return
    import threading

    import ray

    from ..runtime.progress import bar

    stop = threading.Event()
    with bar(total, desc, unit="step") as pb:
        shown = [None]

        def show() -> None:
            latest = ray.get(steps_seen.get.remote(), timeout=10)
            if latest is not None and latest != shown[0]:
                shown[0] = latest
                pb.n = latest[0]
                pb.set_postfix(loss=f"{latest[1]:.3f}", acc=f"{latest[2]:.2f}", refresh=False)
                pb.refresh()

        def poll() -> None:
            while not stop.wait(1.0):
                try:
                    show()
                except Exception:  # a slow actor start, a restart: the next poll tries again
                    pass

        thread = threading.Thread(target=poll, name="sem-dist-train-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=15)
            try:
                show()
            except Exception:
                pass
            ray.kill(steps_seen)


def fit_generator(cfg: ProtectConfig, data, opts: RayTrainOptions, info=None,
                  callbacks: list | None = None) -> tuple[dict, dict]:
    """Run Algorithm 1 on Ray Train; returns the final checkpoint's state dict and the last metrics.
    ``data`` is an in-memory dataset or an image-rows ``ray.data.Dataset`` with its ``DatasetInfo``;
    ``callbacks`` are ``ray.train.UserCallback``s of the run's controller (a Tune trial driving the run
    passes one that forwards its reports to Tune)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .cluster import connect
    from .resources import wait_for_resources
    from .storage import check_cluster_visible, run_exists, storage_for

    storage_path, filesystem = storage_for(opts.checkpoint, opts.storage)
    engine = opts.engine
    connect(engine.address)
    check_cluster_visible({"checkpoint folder": opts.checkpoint}, engine.shared_fs)
    w, c, g = engine.train_workers, engine.cpus_per_worker, engine.gpus_per_worker
    wait_for_resources(w * c, w * g, f"Algorithm 1 (--workers {w} × {c:g} CPU + {g:g} GPU)",
                       engine.resource_timeout_s, units=w)
    if not opts.resume and run_exists(storage_path, filesystem, opts.name):
        raise FileExistsError(f"a run named {opts.name!r} already exists under {opts.checkpoint}; "
                              "pass --resume to continue it or choose another name")
    feed, datasets, dataset_config = _feed_config(data, info, cfg, opts)
    if datasets:  # streamed: Ray Data's read tasks need a CPU beside the workers, or the ingest never starts
        try:
            wait_for_resources(w * c + 1, w * g, f"Algorithm 1 streamed through Ray Data (--workers {w} × {c:g} CPU "
                               "+ 1 CPU for its reads)", engine.resource_timeout_s)
        except ValueError as exc:
            raise ValueError(f"{exc}; give --no-stream (one in-memory copy), fewer --workers or a smaller "
                             "--cpus-per-worker") from None
    steps_seen = ray.remote(num_cpus=0)(StepsSeen).remote() if opts.progress else None
    if steps_seen is not None:
        feed["steps_seen"] = steps_seen
    use_gpu = g > 0
    resources = {"CPU": c, **({"GPU": g} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg.to_dict(), "dims": _dims(data, info), "log_every_s": opts.log_every_s,
                           "stop_after": opts.stop_after, **feed},
        scaling_config=ScalingConfig(num_workers=w, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        datasets=datasets or None, **({"dataset_config": dataset_config} if dataset_config else {}),
        run_config=RunConfig(name=opts.name, storage_path=storage_path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=opts.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             logging_config=LoggingConfig(log_level="WARNING"), callbacks=callbacks,
                             # our own progress lines are enough; Ray's print patch would repeat them
                             worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
    )
    try:
        with _driver_bar(cfg.trainer.steps, f"{cfg.method}: generator (Alg. 1, Ray Train × {w})", steps_seen):
            result = trainer.fit()
    except Exception as exc:
        bad = _bad_record(exc)
        if bad is None:
            raise
        raise bad from None
    if result.checkpoint is None:
        raise RuntimeError("Ray Train finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = load_checkpoint(Path(d) / CHECKPOINT_NAME)
    return state, dict(result.metrics or {})


def fit_method_distributed(cfg: ProtectConfig, data, device, opts: RayTrainOptions, info=None,
                           callbacks: list | None = None):
    """``perturb.in_memory.fit_method`` on Ray Train: the fitted method and Ray's last metrics. Methods without an
    Algorithm-1 generator (TAP, SC, NTGA) have nothing to spread across workers and fit in-process."""
    import sys

    from ..perturb.in_memory import fit_method
    from ..perturb.methods import MinMinMax, get_method

    method = get_method(cfg, *_dims(data, info), device)
    if not isinstance(method, MinMinMax):
        if info is not None:
            raise ValueError(f"{cfg.method} has no Algorithm-1 generator and fits in one process on in-memory data, "
                             "not on a streamed dataset")
        print(f"sem-dist: {cfg.method} has no Algorithm-1 generator; fitting in this process", file=sys.stderr)
        return fit_method(cfg, data, device), {"workers": 1}
    state, metrics = fit_generator(cfg, data, opts, info, callbacks)
    method.load_state_dict({"model": state["model"]})
    return method, metrics
