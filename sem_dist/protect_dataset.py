"""``protect`` and ``regenerate`` as compositions of the named stages (:mod:`sem_dist.stages`):

protect:     read → fit (Algorithm 1) → regenerate (Algorithm 4) → commit
regenerate:  read → load a fitted generator → regenerate (Algorithm 4) → commit

Each stage runs in this process or on Ray (:class:`Engine`): Ray Train for fit when ``workers > 1``,
Ray Data for regeneration whenever a Ray flag (``--workers``, ``--regen-actors``, ``--address``) is given.
Small local runs keep the plain in-process default.

Shards are written at their final keys in OUT as units finish; the manifest, written last, makes them a
dataset (``data.canonical.DatasetWriter``). Resumability lives in ``OUT/_staging``: ``run.json`` (the run's
fingerprint), ``method.pt`` (the fitted method; present ⇒ ``--resume`` skips fitting) and the ledger of
finished units (``stages.regenerate``); it is removed once the manifest is in place.
Algorithm 1's own checkpoints go to ``--checkpoint-dir``, else to ``OUT/_staging/checkpoint`` on the
output's own storage, so every node of a cluster (and a later run on another machine) sees them.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .config import ProtectConfig, resolve_config
from .data.canonical import DatasetWriter, Manifest
from .data.info import SplitTooLarge
from .data.output import OutputState, check_not_nested, prepare_output
from .data.records import BadRecord, BadRecordPolicy
from .data.storage import DataError, Location, StorageOptions, file_identities, open_location, redact_uri
from .runtime.device import resolve_device, trainer_layout
from .perturb.methods import as_method_state, method_from_state, method_state
from .runtime.rng import RNG_SCHEME
from .stages.commit import already_done, commit
from .stages.fit import (IN_PROCESS, METHOD_CHECKPOINT, RAY_DATA, FitPlan, choose_feed, fit, read_checkpoint,
                         save_method)
from .stages.read import Input, open_input
from .stages.regenerate import Ledger, RegenJob, UnitResult, pending_units, regenerate_local, unit_count


@dataclass
class Engine:
    """Where the stages run: ``workers > 1`` → Algorithm 1 on Ray Train; ``regen_actors`` set →
    Algorithm 4 on Ray Data with that many model actors. GPUs and CPUs per worker apply to both."""

    workers: int = 1
    regen_actors: int | None = None
    gpus_per_worker: float = 0.0
    address: str | None = None
    implied: bool = False  # Ray Data only because --workers/--address were given: may fall back in-process
    resource_timeout_s: float | None = None  # None: distributed.resources.DEFAULT_RESOURCE_TIMEOUT_S
    cpus_per_worker: float = 1.0

    @classmethod
    def from_flags(cls, workers: int | None, regen_actors: int | None, gpus_per_worker: float,
                   address: str | None, resource_timeout_s: float | None = None,
                   cpus_per_worker: float = 1.0) -> "Engine":
        implied = regen_actors is None and (workers is not None or address is not None)
        if implied:
            regen_actors = max(workers or 1, 1)
        return cls(workers or 1, regen_actors, gpus_per_worker, address, implied, resource_timeout_s,
                   cpus_per_worker)

    @property
    def ray_regen(self) -> bool:
        return self.regen_actors is not None

    @property
    def on_ray(self) -> bool:
        return self.workers > 1 or self.ray_regen or self.address is not None

    def driver_device(self, requested: str) -> str:
        """The device of work left in this process. On Ray every GPU used is one Ray allocated, so the
        driver's own (unallocated) GPU is not taken by ``auto``; an explicit ``--device`` still is."""
        return "cpu" if self.on_ray and requested == "auto" else requested


@dataclass
class OutputOptions:
    out: str
    resume: bool = False
    overwrite: bool = False
    on_bad_record: str = "fail"
    shard_rows: int | None = None
    keep_noise: bool = False  # an int8 noise column lets anyone undo the protection: research use only
    device: str = "auto"
    storage: StorageOptions = field(default_factory=StorageOptions)


@dataclass
class ProtectRequest:
    data: str
    out: str
    method: str = "sem"
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted config keys, e.g. {"trainer.steps": 100}
    config_file: str | None = None
    device: str = "auto"
    workers: int | None = None  # > 1: Algorithm 1 on Ray Train with this many DDP workers
    regen_actors: int | None = None  # Algorithm 4 on Ray Data with this many actors
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    resource_timeout_s: float | None = None  # None: distributed.resources.DEFAULT_RESOURCE_TIMEOUT_S
    shared_fs: bool = False  # local --data/--out/--checkpoint-dir are on a file system every node mounts
    stream: bool | None = None  # Ray Train fed through Ray Data (None: for large inputs, see stages.fit)
    address: str | None = None  # Ray cluster to join (default: $RAY_ADDRESS, else an embedded local Ray)
    resume: bool = False
    overwrite: bool = False
    on_bad_record: str = "fail"
    shard_rows: int | None = None
    keep_noise: bool = False
    checkpoint_dir: str | None = None
    storage: StorageOptions = field(default_factory=StorageOptions)

    def output(self) -> OutputOptions:
        return OutputOptions(self.out, self.resume, self.overwrite, self.on_bad_record, self.shard_rows,
                             self.keep_noise, self.engine().driver_device(self.device), self.storage)

    def engine(self) -> Engine:
        return Engine.from_flags(self.workers, self.regen_actors, self.gpus_per_worker, self.address,
                                 self.resource_timeout_s, self.cpus_per_worker)


@dataclass
class RegenerateRequest:
    generator: str  # a method.pt or an Algorithm-1 generator.pt, any storage URI
    data: str
    out: str
    regen_actors: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0  # per regeneration actor (its torch threads too)
    address: str | None = None
    resource_timeout_s: float | None = None  # None: distributed.resources.DEFAULT_RESOURCE_TIMEOUT_S
    shared_fs: bool = False  # local --data/--out are on a file system every node of the cluster mounts
    resume: bool = False
    overwrite: bool = False
    on_bad_record: str = "fail"
    shard_rows: int | None = None
    keep_noise: bool = False
    device: str = "auto"
    storage: StorageOptions = field(default_factory=StorageOptions)

    def output(self) -> OutputOptions:
        return OutputOptions(self.out, self.resume, self.overwrite, self.on_bad_record, self.shard_rows,
                             self.keep_noise, self.engine().driver_device(self.device), self.storage)

    def engine(self) -> Engine:
        return Engine.from_flags(None, self.regen_actors, self.gpus_per_worker, self.address,
                                 self.resource_timeout_s, self.cpus_per_worker)


def input_files(inp: Input) -> dict[str, list] | None:
    """Content identity of a file-backed input (image folders, Parquet, tars, MNIST/CIFAR files): each file's
    size and ETag (object stores) or mtime (local files), by path under the source's root. Canonical inputs
    need none: their manifest's per-shard sha256 is in the fingerprint and every shard is checked against it."""
    return None if inp.canonical or inp.location is None else file_identities(inp.location)


def fingerprint(cfg: ProtectConfig, inp: Input, opts: OutputOptions, files: dict[str, list] | None, **more) -> str:
    """Everything that decides the output's bytes; a resumed run must match it exactly."""
    m = inp.info.manifest
    blob = json.dumps({"config": cfg.to_dict(), "rng": RNG_SCHEME, "source": inp.info.source,
                       "input_shards": [s.sha256 for s in m.shards] if m else None, "input_files": files,
                       "shard_rows": opts.shard_rows,
                       "keep_noise": opts.keep_noise, "on_bad_record": opts.on_bad_record, **more}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Run:
    """One protect/regenerate run's output side: where it writes and what it has done so far."""

    inp: Input
    out: Location
    writer: DatasetWriter
    state: OutputState
    opts: OutputOptions
    engine: Engine
    t_start: float

    @classmethod
    def open(cls, inp: Input, opts: OutputOptions, engine: Engine, t_start: float) -> "Run":
        out = open_location(opts.out, opts.storage)
        check_not_nested(inp.location, out, "--data", "--out")
        state = prepare_output(out, "--out", opts.resume, opts.overwrite)
        BadRecordPolicy(opts.on_bad_record)  # validates the mode before anything is written
        if engine.ray_regen:
            engine = _ray_regen_or_fallback(inp, opts, engine)
        return cls(inp, out, DatasetWriter(out), state, opts, engine, t_start)

    @property
    def staging(self) -> Location:
        return self.writer.staging

    def start(self, fp: str, files: dict[str, list] | None) -> None:
        """A fresh output (or the interrupted one with ``--resume``), tied to the fingerprint."""
        if not self.opts.resume:
            self.writer.clear()
        root = self.inp.location.display if self.inp.location is not None else ""
        Ledger(self.staging).open(fp, self.opts.resume, files, root)

    def check_cluster_paths(self, checkpoint: str | None, streamed: bool, shared_fs: bool) -> None:
        """Refuse, before anything is written, a path only this machine has that a Ray stage of this run
        touches while the cluster has, or may autoscale to, several nodes: the input when Ray reads it
        (regeneration actors, a ``streamed`` fit), the output (shards and ledger) when Ray Data regenerates,
        ``checkpoint`` when Ray Train fits (None otherwise)."""
        from .distributed.storage import check_cluster_visible

        ray_reads = self.engine.ray_regen or streamed
        check_cluster_visible({"--data": self.inp.location if ray_reads else None,
                               "--out": self.out if self.engine.ray_regen else None,
                               "checkpoint folder": checkpoint}, shared_fs, address=self.engine.address)

    def staged_method(self) -> dict | None:
        if self.opts.resume and self.staging.exists(METHOD_CHECKPOINT):
            state, _ = read_checkpoint(f"{self.staging.display}/{METHOD_CHECKPOINT}", self.opts.storage)
            return state
        return None

    def regenerate_and_commit(self, state: dict | None, method, protection: dict) -> Manifest:
        """Algorithm 4 over every unit not yet in the ledger, then the manifest. ``method`` is the fitted
        method when this process has it; the Ray engine's actors load ``_staging/method.pt`` instead."""
        done = Ledger(self.staging).finished()
        t0 = time.perf_counter()
        job, pool = self.job(), {}
        try:
            if self.engine.ray_regen:
                new, pool = self._regenerate_ray(job, done, protection["method"])
                results = [*done.values(), *new]
            else:
                device = resolve_device(self.opts.device)
                if method is None:
                    method = method_from_state(state, device)
                results = list(regenerate_local(method, self.inp, job, done, device))
                new = [r for r in results if r.index not in done]
        except BadRecord:
            self.writer.clear()  # nothing half-written under OUT; the input is never touched
            raise
        seconds = time.perf_counter() - t0
        images = sum(r.rows for r in new)
        regen = {"engine": "ray-data" if self.engine.ray_regen else "in-process",
                 "actors": self.engine.regen_actors or 1, "gpus_per_actor": self.engine.gpus_per_worker,
                 "cpus_per_actor": self.engine.cpus_per_worker if self.engine.ray_regen else None,
                 "images": images, "seconds": seconds, "images_per_s": images / seconds if seconds > 0 else None,
                 **pool}
        timings = {**protection.pop("timings", {}), "regenerate_s": seconds,
                   "total_s": time.perf_counter() - self.t_start}
        protection = {**protection, "regeneration": regen, "timings": timings,
                      "resumed": bool(self.opts.resume and self.state is OutputState.PARTIAL)}
        return commit(self.writer, self.inp.info, results, protection, self.opts.keep_noise)

    def job(self) -> RegenJob:
        """The regeneration job as any worker (or this process) runs it: URIs without secrets."""
        staging, inp, opts = worker_uri(self.staging), self.inp, self.opts
        source = ({"plan": inp.plan, "image": inp.image} if inp.plan is not None else
                  {"input_uri": worker_uri(inp.split.location)} if inp.canonical else {})
        return RegenJob(out_uri=worker_uri(self.out), staging_uri=staging,
                        method_uri=f"{staging}/{METHOD_CHECKPOINT}",
                        s3_endpoint=opts.storage.s3_endpoint, s3_profile=opts.storage.s3_profile,
                        keep_noise=opts.keep_noise, on_bad_record=opts.on_bad_record, shard_rows=opts.shard_rows,
                        **source)

    def _regenerate_ray(self, job: RegenJob, done: dict[int, UnitResult], method: str
                        ) -> tuple[list[UnitResult], dict]:
        """The new results and the pool's timings: its start-up, and images/s of the work after it. The
        stage's one progress bar counts the images of finished units (Ray Data's own bars only with
        ``--verbose``, see ``distributed.logs``)."""
        from .distributed.cluster import connect
        from .distributed.logs import native_stderr_to_log, progress_bars
        from .distributed.regen_stages import RayRegenOptions, RayRegenStats, run_units
        from .runtime.progress import bar

        timeout = {} if self.engine.resource_timeout_s is None else {"resource_timeout_s":
                                                                     self.engine.resource_timeout_s}
        opts = RayRegenOptions(actors=self.engine.regen_actors, gpus_per_actor=self.engine.gpus_per_worker,
                               cpus_per_actor=self.engine.cpus_per_worker, address=self.engine.address,
                               progress=progress_bars(), **timeout)
        stats = RayRegenStats()
        pending = pending_units(unit_count(self.inp, self.opts.shard_rows), done)
        if pending:  # Ray's start-up lines come before the bar, not through it
            connect(opts.address)
        new, actors = [], max(1, min(opts.actors, len(pending)))
        with native_stderr_to_log(), bar(self.inp.info.count, f"{method}: protect (Alg. 4, Ray Data × {actors})",
                                         unit="img") as pb:
            pb.update(sum(r.rows for r in done.values()))
            for result in run_units(job, pending, opts, stats):
                new.append(result)
                pb.update(result.rows)
        if not new:
            return new, {}
        images = sum(r.rows for r in new)
        return new, {"pool_startup_s": stats.startup_s,
                     "images_per_s_after_startup": images / stats.work_s if stats.work_s > 0 else None,
                     "stages": stats.stages()}


def _ray_regen_or_fallback(inp: Input, opts: OutputOptions, engine: Engine) -> Engine:
    """The engine for Algorithm 4. Ray Data runs units any worker can read on its own: a canonical input's
    shards, or a file-backed source's files/folders (``unit_count``), through URIs without secrets (workers
    get credentials from their own environment, never from the driver). When it was only implied by
    --workers/--address, other inputs fall back to this process with a note."""
    why = None
    if inp.canonical and opts.shard_rows is not None:
        why = "--shard-rows re-cuts the output, and on Ray each input shard is one unit (re-shard with convert)"
    elif unit_count(inp, opts.shard_rows) is None:
        why = (f"{inp.split.display} is read in this process (Ray reads canonical datasets, imagefolder:, "
               "parquet: and webdataset:; run `sem-dist convert` first)")
    if why is None:  # URIs with credentials never get here: open_location refuses them
        return engine
    if not engine.implied:
        raise DataError(f"Ray Data regeneration (--regen-actors): {why}")
    print(f"sem-dist: regenerating in this process: {why}", file=sys.stderr)
    return Engine(engine.workers, None, engine.gpus_per_worker, engine.address,
                  cpus_per_worker=engine.cpus_per_worker)


def worker_uri(loc: Location) -> str:
    """``loc`` as a URI a Ray worker can open: absolute for local paths, redacted for object stores."""
    return os.path.abspath(loc.path) if loc.is_local else loc.display


def checkpoint_location(req: ProtectRequest, out: Location) -> str:
    """Where the generator checkpoints go: ``--checkpoint-dir``, else ``OUT/_staging/checkpoint`` on the
    output's own storage (every node of a cluster sees a remote OUT; removed with the staging area)."""
    from .distributed.storage import default_checkpoint_uri

    return req.checkpoint_dir or default_checkpoint_uri(out.display)


def protect(req: ProtectRequest) -> Manifest:
    from .distributed.algorithm1 import uses_ray_train

    t_start = time.perf_counter()
    inp = open_input(req.data, req.storage)
    cfg = resolve_config(req.method, inp.info.image_side, req.config_file, req.overrides)
    run = Run.open(inp, req.output(), req.engine(), t_start)
    engine, ckpt = run.engine, checkpoint_location(req, run.out)
    # how the fit will get the split: its refusals, and which paths Ray stages touch, before any write
    feed = choose_feed(cfg, inp, engine.workers, req.stream, uses_ray_train(engine.workers, ckpt))
    files = input_files(inp)
    fp = fingerprint(cfg, inp, run.opts, files)
    if run.state is OutputState.COMPLETE and req.resume:
        return already_done(run.writer, fp)
    run.check_cluster_paths(ckpt if feed != IN_PROCESS else None, feed == RAY_DATA, req.shared_fs)
    run.start(fp, files)
    t_loaded = time.perf_counter()

    state, method, metrics = run.staged_method(), None, {}
    device = resolve_device(run.opts.device)
    if state is None:  # fit, unless a resumed run already has the fitted method
        plan = FitPlan(engine.workers, engine.gpus_per_worker, engine.address, req.resume, ckpt, req.storage,
                       req.cpus_per_worker, req.resource_timeout_s, req.shared_fs, req.stream)
        try:
            method, metrics = fit(cfg, inp, device, plan, BadRecordPolicy(req.on_bad_record))
        except (BadRecord, SplitTooLarge):  # nothing worth resuming: the next run starts afresh
            run.writer.clear()
            raise
        state = method_state(method)
        save_method(state, run.staging)
    t_fit = time.perf_counter()

    protection = {
        "method": cfg.method, "config": cfg.to_dict(), "seed": cfg.seed, "rng": {"scheme": RNG_SCHEME},
        "layout": trainer_layout(cfg.trainer, device, inp.info.shape),
        "workers": engine.workers, "gpus_per_worker": engine.gpus_per_worker, "device": str(device),
        "train_workers": int(metrics.get("workers", 1)), "train_feed": metrics.get("feed"),
        "train_steps_per_s": metrics.get("steps_per_s"),
        "train_resumed_from_step": metrics.get("resumed_from"), "fingerprint": fp,
        "timings": {"load_s": t_loaded - t_start, "fit_s": t_fit - t_loaded},
    }
    return run.regenerate_and_commit(state, method, protection)


def regenerate_dataset(req: RegenerateRequest) -> Manifest:
    """Algorithm 4 alone: a generator fitted earlier applied to (new) data."""
    t_start = time.perf_counter()
    inp = open_input(req.data, req.storage)
    run = Run.open(inp, req.output(), req.engine(), t_start)
    raw, sha = read_checkpoint(req.generator, req.storage)
    info = inp.info
    state = as_method_state(raw, len(info.classes), info.channels, info.image_side, redact_uri(req.generator))
    cfg = ProtectConfig.from_dict(state["config"])
    files = input_files(inp)
    fp = fingerprint(cfg, inp, run.opts, files, generator_sha256=sha)
    if run.state is OutputState.COMPLETE and req.resume:
        return already_done(run.writer, fp)
    run.check_cluster_paths(None, False, req.shared_fs)
    run.start(fp, files)
    save_method(state, run.staging)
    protection = {"method": cfg.method, "config": cfg.to_dict(), "seed": cfg.seed, "rng": {"scheme": RNG_SCHEME},
                  "fingerprint": fp,
                  "generator": {"uri": redact_uri(req.generator), "sha256": sha}, "device": run.opts.device,
                  "timings": {"load_s": time.perf_counter() - t_start}}
    return run.regenerate_and_commit(state, None, protection)
