"""Protect a dataset where it lives: read the input, fit the method (Algorithm 1), regenerate noise for
every sample shard by shard (Algorithm 4), and commit a protected canonical dataset.

The two seams the Ray layers plug into: :func:`fit_method` (Ray Train when ``workers > 1`` or when the
checkpoints go to object storage) and
:func:`protect_shard` (one Ray Data task per shard, writing into the staging area; the driver commits
the :class:`ShardInfo` list). Until then both run in this process.

Resumability: the generator checkpoint and every finished shard live in ``OUT/_staging`` on the output's
storage (see :func:`checkpoint_location`); ``progress.json`` there
lists finished shards with their sha256 and noise totals, so ``--resume`` redoes only what is missing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ProtectConfig, resolve_config
from .data.arrays import ArrayDataset
from .data.canonical import DatasetWriter, Manifest, ShardInfo, read_manifest, shard_name, write_shard
from .data.convert import new_manifest, shards_of, source_record
from .data.output import OutputState, check_not_nested, prepare_output
from .data.records import BadRecordPolicy, Chunk
from .data.sources import collect, open_source, parse_spec
from .data.storage import DataError, Location, StorageOptions, open_location
from .device import resolve_device
from .perturb.methods import NoiseMethod
from .perturb.regenerate import apply_noise, regenerate
from .pipeline import NoiseStats, fit_method
from .progress import bar

PROGRESS = "progress.json"


@dataclass
class ProtectRequest:
    data: str
    out: str
    method: str = "sem"
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted config keys, e.g. {"trainer.steps": 100}
    config_file: str | None = None
    device: str = "auto"
    workers: int = 1  # > 1: Algorithm 1 on Ray Train with this many DDP workers
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    resource_timeout_s: float | None = None  # None: distributed.resources.DEFAULT_RESOURCE_TIMEOUT_S
    shared_fs: bool = False  # a local --checkpoint-dir that every node of a multi-node cluster mounts
    address: str | None = None  # Ray cluster to join (default: $RAY_ADDRESS, else an embedded local Ray)
    resume: bool = False
    overwrite: bool = False
    on_bad_record: str = "fail"
    shard_rows: int | None = None
    keep_noise: bool = False  # an int8 noise column lets anyone undo the protection: research use only
    checkpoint_dir: str | None = None
    storage: StorageOptions = field(default_factory=StorageOptions)


@dataclass
class StagedProgress:
    """Finished shards of an interrupted run; valid only for the same fingerprint."""

    fingerprint: str
    shards: dict[int, dict] = field(default_factory=dict)  # index -> {"info": ShardInfo dict, "noise": totals}

    def save(self, staging: Location) -> None:
        staging.write_bytes(PROGRESS, json.dumps(dataclasses.asdict(self)).encode())

    @classmethod
    def load(cls, staging: Location, fingerprint: str) -> "StagedProgress":
        if not staging.exists(PROGRESS):
            return cls(fingerprint)
        raw = json.loads(staging.read_bytes(PROGRESS))
        if raw["fingerprint"] != fingerprint:
            raise DataError(f"{staging.display}: the interrupted run there used other settings or input; "
                            "pass --overwrite to start over")
        shards = {int(k): v for k, v in raw["shards"].items()}
        present = set(staging.names())
        return cls(fingerprint, {i: v for i, v in shards.items() if v["info"]["name"] in present})


def fingerprint(cfg: ProtectConfig, source: dict, input_manifest: Manifest | None, req: ProtectRequest) -> str:
    """Everything that decides the output's bytes; a resumed run must match it exactly."""
    shas = [s.sha256 for s in input_manifest.shards] if input_manifest else None
    blob = json.dumps({"config": cfg.to_dict(), "source": source, "input_shards": shas,
                       "shard_rows": req.shard_rows, "keep_noise": req.keep_noise,
                       "on_bad_record": req.on_bad_record}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def checkpoint_location(req: ProtectRequest, out: Location) -> str:
    """Where the generator checkpoints go: ``--checkpoint-dir``, else ``OUT/_staging/checkpoint`` on the
    output's own storage (every node of a cluster sees a remote OUT; removed with the staging area)."""
    from .distributed.storage import default_checkpoint_uri

    return req.checkpoint_dir or default_checkpoint_uri(out.display)


def protect_shard(method: NoiseMethod, chunk: Chunk, device: torch.device, staging: Location, index: int,
                  keep_noise: bool) -> tuple[ShardInfo, NoiseStats]:
    """Algorithm 4 over one shard, then write its protected images (and noise) to the staging area."""
    data = ArrayDataset(chunk.ids, chunk.images, chunk.labels, [])
    noise = np.empty(chunk.images.shape, dtype=np.int8)
    pos = 0
    for ids, part in regenerate(method, data.iter_batches(method.regen_batch_size()), device):
        noise[pos:pos + len(ids)] = part
        pos += len(ids)
    info = write_shard(staging, shard_name(index), chunk.ids, apply_noise(chunk.images, noise), chunk.labels,
                       noise if keep_noise else None)
    return info, NoiseStats().update(noise)


def protect(req: ProtectRequest) -> Manifest:
    t_start = time.perf_counter()
    parsed = parse_spec(req.data)
    source = open_source(parsed, req.storage)
    out = open_location(req.out, req.storage)
    check_not_nested(source.location, out, "--data", "--out")
    state = prepare_output(out, "--out", req.resume, req.overwrite)
    default_split = "train" if "train" in source.split_names() else None
    sp = source.split(source.resolve_split(parsed.split or default_split))

    policy = BadRecordPolicy(req.on_bad_record)
    loaded = collect(sp.records(policy))
    data = ArrayDataset(loaded.ids, loaded.images, loaded.labels, sp.classes)
    cfg = resolve_config(req.method, data.image_side, req.config_file, req.overrides)
    src = source_record(sp, parsed.options)
    fp = fingerprint(cfg, src, sp.manifest, req)
    if state is OutputState.COMPLETE and req.resume:
        return _already_done(out, fp)

    writer = DatasetWriter(out)
    if req.resume:
        progress = StagedProgress.load(writer.staging, fp)
    else:
        writer.abandon()
        progress = StagedProgress(fp)
    progress.save(writer.staging)  # before fitting, so a run interrupted in Algorithm 1 is tied to its settings
    ckpt = checkpoint_location(req, out)
    device = resolve_device(req.device)
    t_loaded = time.perf_counter()

    train_metrics: dict = {}
    from .distributed.train import uses_ray_train

    if uses_ray_train(req.workers, ckpt):
        from .distributed.train import RayTrainOptions, fit_method_distributed

        timeout = {} if req.resource_timeout_s is None else {"resource_timeout_s": req.resource_timeout_s}
        opts = RayTrainOptions(workers=req.workers, gpus_per_worker=req.gpus_per_worker,
                               cpus_per_worker=req.cpus_per_worker, shared_fs=req.shared_fs, resume=req.resume,
                               storage=ckpt, s3_endpoint=req.storage.s3_endpoint, **timeout)
        method, train_metrics = fit_method_distributed(cfg, data, device, opts, req.address)
    else:
        method = fit_method(cfg, data, device, checkpoint_dir=Path(ckpt), resume=req.resume)
    t_fit = time.perf_counter()
    count, shape = len(data), data.images.shape[1:]
    del data, loaded  # regeneration streams the input again, one shard at a time

    shards: list[ShardInfo] = []
    totals = NoiseStats()
    with bar(count, f"{cfg.method}: protect (Alg. 4)", unit="img") as pb:
        for i, chunk in enumerate(shards_of(sp, BadRecordPolicy(req.on_bad_record), req.shard_rows)):
            if i in progress.shards:
                done = progress.shards[i]
                info, stats = ShardInfo(**done["info"]), NoiseStats(**done["noise"])
            else:
                info, stats = protect_shard(method, chunk, device, writer.staging, i, req.keep_noise)
                progress.shards[i] = {"info": dataclasses.asdict(info), "noise": dataclasses.asdict(stats)}
                progress.save(writer.staging)
            shards.append(info)
            totals = totals.merge(stats)
            pb.update(len(chunk))
    t_regen = time.perf_counter()

    protection = {
        "method": cfg.method, "config": cfg.to_dict(), "seed": cfg.seed, "noise": totals.result(),
        "workers": req.workers, "gpus_per_worker": req.gpus_per_worker, "device": str(device),
        "train_workers": int(train_metrics.get("workers", 1)),
        "train_steps_per_s": train_metrics.get("steps_per_s"),
        "train_resumed_from_step": train_metrics.get("resumed_from"),
        "fingerprint": fp, "resumed": bool(req.resume and state is OutputState.PARTIAL),
        "timings": {"load_s": t_loaded - t_start, "fit_s": t_fit - t_loaded, "regenerate_s": t_regen - t_fit,
                    "total_s": time.perf_counter() - t_start},
    }
    manifest = new_manifest(sp, shards, shape, src, policy, protection=protection, noise_column=req.keep_noise)
    writer.commit(manifest)
    return manifest


def _already_done(out: Location, fp: str) -> Manifest:
    existing = read_manifest(out)
    if (existing.protection or {}).get("fingerprint") != fp:
        raise DataError(f"--out {out.display} already holds a complete dataset made with other settings or input; "
                        "pass --overwrite to replace it")
    print(f"{out.display}: already complete (same settings); nothing to do", file=sys.stderr)
    return existing
