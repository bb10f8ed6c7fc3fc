"""``protect`` and ``regenerate`` as compositions of the stages, the one place that chooses their engines:

protect:     read → fit (Algorithm 1) → regenerate (Algorithm 4) → commit
regenerate:  read → load a fitted generator → regenerate (Algorithm 4) → commit

Each gets one :class:`~sem_dist.engine.spec.RunSpec`, passed whole. Fit runs on Ray Train when
``--workers > 1`` (or its checkpoints go to object storage, or it streams); regeneration on Ray Data whenever a
Ray flag (``--workers``, ``--regen-actors``, ``--address``) is given and the input is one Ray reads. Small local
runs keep the plain in-process default. What the run writes, and how a killed run resumes: :mod:`.output`.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time

from ..config import ProtectConfig, resolve_config
from ..data.canonical import Manifest
from ..data.info import SplitTooLarge
from ..data.records import BadRecord
from ..data.storage import DataError, redact_uri
from ..distributed.algorithm1 import uses_ray_train
from ..distributed.engine import RayEngine
from ..distributed.storage import check_cluster_visible
from ..engine.base import Engine, Fitted
from ..engine.checkpoint import read_checkpoint
from ..engine.input import Input, input_files
from ..engine.local import LocalEngine
from ..engine.spec import RunSpec
from ..engine.units import unit_count
from ..perturb.methods import as_method_state, method_state
from ..runtime.device import resolve_device, trainer_layout
from ..runtime.rng import RNG_SCHEME
from . import fit, read, regenerate
from .commit import commit
from .output import Output


def protect(spec: RunSpec) -> Manifest:
    t_start = time.perf_counter()
    inp = read.read(spec)
    cfg = resolve_config(spec.method, inp.info.image_side, spec.config_file, spec.overrides)
    output = Output(spec, inp)
    regen_engine = _regeneration_engine(spec, inp)
    # how the fit will get the split: its refusals, and which paths Ray stages touch, before any write
    feed = fit.choose_feed(cfg, inp, spec.engine, uses_ray_train(spec.engine.train_workers, output.checkpoint))
    fit_engine = LocalEngine() if feed == fit.IN_PROCESS else RayEngine()
    files = input_files(inp)
    fp = fingerprint(cfg, inp, spec, files)
    if output.complete and spec.resume:
        return output.already_done(fp)
    _check_cluster_paths(spec, inp, output, output.checkpoint if feed != fit.IN_PROCESS else None,
                         ray_reads=isinstance(regen_engine, RayEngine) or feed == fit.RAY_DATA,
                         ray_writes=isinstance(regen_engine, RayEngine))
    output.start(fp, files)
    t_loaded = time.perf_counter()

    state, method, metrics = output.staged_method(), None, {}
    device = resolve_device(spec.device_here)
    if state is None:  # fit, unless a resumed run already has the fitted method
        try:
            method, metrics = fit.fit(spec, cfg, inp, fit_engine, feed, device, output.checkpoint)
        except (BadRecord, SplitTooLarge):  # nothing worth resuming: the next run starts afresh
            output.clear()
            raise
        state = method_state(method)
        output.save_method(state)
    t_fit = time.perf_counter()

    protection = {
        "method": cfg.method, "config": cfg.to_dict(), "seed": cfg.seed, "rng": {"scheme": RNG_SCHEME},
        "layout": trainer_layout(cfg.trainer, device, inp.info.shape),
        "workers": spec.engine.train_workers, "gpus_per_worker": spec.engine.gpus_per_worker,
        "device": str(device), "train_workers": int(metrics.get("workers", 1)), "train_feed": metrics.get("feed"),
        "train_steps_per_s": metrics.get("steps_per_s"),
        "train_resumed_from_step": metrics.get("resumed_from"), "fingerprint": fp,
    }
    timings = {"load_s": t_loaded - t_start, "fit_s": t_fit - t_loaded}
    return _regenerate_and_commit(output, regen_engine, Fitted(state, method), protection, timings, t_start)


def regenerate_dataset(spec: RunSpec) -> Manifest:
    """Algorithm 4 alone: the generator fitted earlier (``spec.generator``) applied to (new) data."""
    if not spec.generator:
        raise ValueError("regenerate needs --generator (a method.pt or generator.pt)")
    t_start = time.perf_counter()
    inp = read.read(spec)
    output = Output(spec, inp)
    regen_engine = _regeneration_engine(spec, inp)
    raw, sha = read_checkpoint(spec.generator, spec.storage)
    info = inp.info
    state = as_method_state(raw, len(info.classes), info.channels, info.image_side, redact_uri(spec.generator))
    cfg = ProtectConfig.from_dict(state["config"])
    files = input_files(inp)
    fp = fingerprint(cfg, inp, spec, files, generator_sha256=sha)
    if output.complete and spec.resume:
        return output.already_done(fp)
    ray = isinstance(regen_engine, RayEngine)
    _check_cluster_paths(spec, inp, output, None, ray_reads=ray, ray_writes=ray)
    output.start(fp, files)
    output.save_method(state)
    protection = {"method": cfg.method, "config": cfg.to_dict(), "seed": cfg.seed, "rng": {"scheme": RNG_SCHEME},
                  "fingerprint": fp,
                  "generator": {"uri": redact_uri(spec.generator), "sha256": sha}, "device": spec.device_here}
    timings = {"load_s": time.perf_counter() - t_start}
    return _regenerate_and_commit(output, regen_engine, Fitted(state), protection, timings, t_start)


def fingerprint(cfg: ProtectConfig, inp: Input, spec: RunSpec, files: dict[str, list] | None, **more) -> str:
    """Everything that decides the output's bytes; a resumed run must match it exactly."""
    m = inp.info.manifest
    blob = json.dumps({"config": cfg.to_dict(), "rng": RNG_SCHEME, "source": inp.info.source,
                       "input_shards": [s.sha256 for s in m.shards] if m else None, "input_files": files,
                       "shard_rows": spec.shard_rows,
                       "keep_noise": spec.keep_noise, "on_bad_record": spec.on_bad_record, **more}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _regeneration_engine(spec: RunSpec, inp: Input) -> Engine:
    """The engine for Algorithm 4. Ray Data runs units any worker can read on its own: a canonical input's
    shards, or a file-backed source's files/folders (``unit_count``), through URIs without secrets (workers
    get credentials from their own environment, never from the driver). When it was only implied by
    --workers/--address, other inputs fall back to this process with a note."""
    if spec.engine.actors is None:
        return LocalEngine()
    why = None
    if inp.canonical and spec.shard_rows is not None:
        why = "--shard-rows re-cuts the output, and on Ray each input shard is one unit (re-shard with convert)"
    elif unit_count(inp, spec.shard_rows) is None:
        why = (f"{inp.split.display} is read in this process (Ray reads canonical datasets, imagefolder:, "
               "parquet: and webdataset:; run `sem-dist convert` first)")
    if why is None:  # URIs with credentials never get here: open_location refuses them
        return RayEngine()
    if not spec.engine.implied:
        raise DataError(f"Ray Data regeneration (--regen-actors): {why}")
    print(f"sem-dist: regenerating in this process: {why}", file=sys.stderr)
    return LocalEngine()


def _check_cluster_paths(spec: RunSpec, inp: Input, output: Output, checkpoint: str | None, ray_reads: bool,
                         ray_writes: bool) -> None:
    """Refuse, before anything is written, a path only this machine has that a Ray stage of this run touches
    while the cluster has, or may autoscale to, several nodes: the input when Ray reads it (regeneration
    actors, a streamed fit), the output (shards and ledger) when Ray Data regenerates, ``checkpoint`` when
    Ray Train fits (None otherwise)."""
    check_cluster_visible({"--data": inp.location if ray_reads else None,
                           "--out": output.out if ray_writes else None,
                           "checkpoint folder": checkpoint}, spec.engine.shared_fs, address=spec.engine.address)


def _regenerate_and_commit(output: Output, engine: Engine, fitted: Fitted, protection: dict, timings: dict,
                           t_start: float) -> Manifest:
    results, regen = regenerate.regenerate(output, engine, fitted)
    timings = {**timings, "regenerate_s": regen["seconds"], "total_s": time.perf_counter() - t_start}
    protection = {**protection, "regeneration": regen, "timings": timings, "resumed": output.resumed}
    return commit(output, output.inp.info, results, protection)
