"""Fit stage (Algorithm 1, or whatever the method learns): in this process (``pipeline.fit_method``) or
on Ray Train (``distributed.train.fit_method_distributed``) — same inputs, same fitted method.

The split reaches the fit one of three ways (:func:`choose_feed`, one line on stderr says which):
- ``ray-data``: Ray Train workers (one with ``--workers 1``) stream it from storage through Ray Data
  (``distributed.dataset.read_rows``), so neither the driver nor any worker holds the whole split
  (docs/ray-train.md). Algorithm-1 methods take it for inputs of ``data.info.stream_min_bytes()`` of pixels
  or more, for inputs of unknown size on Ray Train, and with ``--stream``;
- ``in-process`` / ``object-store``: the split is loaded into this process (and, on Ray Train, put into the
  object store once), exactly as the in-process loop samples it. Only below the threshold, or with an
  explicit ``--no-stream``: a split known to be larger that cannot stream (TAP, SC, NTGA; a batch size the
  workers cannot split evenly; digits and mnist:/cifar: files) is refused in one line before anything is
  written, and a split of unknown size stops loading at the threshold with the same kind of line.

The fitted method is then saved as one small checkpoint (:func:`save_method`) next to the output's
staging area: regeneration workers load it from there, and ``--resume`` skips fitting when it exists.
"""
from __future__ import annotations

import hashlib
import io
import posixpath
from dataclasses import dataclass

import torch

from ..config import ProtectConfig
from ..data.info import STREAM_MIN_BYTES_ENV, SplitTooLarge, mib, stream_min_bytes
from ..data.records import BadRecordPolicy
from ..data.storage import DataError, Location, StorageOptions, open_location
from ..perturb.methods import NoiseMethod
from ..perturb.in_memory import fit_method
from .read import Input, load_arrays

METHOD_CHECKPOINT = "method.pt"
IN_PROCESS, OBJECT_STORE, RAY_DATA = "in-process", "object-store", "ray-data"  # the feeds (manifest train_feed)
NOT_RAY_READABLE = ("Ray Data reads canonical datasets, imagefolder:, parquet: and webdataset:; bundled digits "
                    "and mnist:/cifar: files are small and read here")


@dataclass
class FitPlan:
    workers: int = 1  # > 1: Ray Train with this many DDP workers
    gpus_per_worker: float = 0.0
    address: str | None = None
    resume: bool = False
    checkpoint_dir: str = ""  # Algorithm 1's own checkpoints (local folder, or s3:// for Ray Train)
    storage: StorageOptions = StorageOptions()
    cpus_per_worker: float = 1.0
    resource_timeout_s: float | None = None  # None: distributed.resources.DEFAULT_RESOURCE_TIMEOUT_S
    shared_fs: bool = False  # a local checkpoint folder every node of a multi-node cluster mounts
    stream: bool | None = None  # Ray Train fed by Ray Data: None = by size (see choose_feed)


def fit(cfg: ProtectConfig, inp: Input, device: torch.device, plan: FitPlan,
        policy: BadRecordPolicy) -> tuple[NoiseMethod, dict]:
    """The fitted method and the training metrics (workers, steps/s, resumed-from step, feed)."""
    from ..distributed.algorithm1 import uses_ray_train

    ray_train = uses_ray_train(plan.workers, plan.checkpoint_dir)
    feed = choose_feed(cfg, inp, plan.workers, plan.stream, ray_train)
    _say_feed(cfg, inp, plan.workers, plan.stream, feed)
    # an explicit --no-stream loads whatever the size; otherwise a split of unknown size stops at the threshold
    cap = None if plan.stream is False else stream_min_bytes()
    if feed == IN_PROCESS:
        data = load_arrays(inp, policy, cap, _stream_hint(cfg, inp, plan.workers))
        method = fit_method(cfg, data, device, checkpoint_dir=plan.checkpoint_dir, resume=plan.resume)
        return method, {"workers": 1, "feed": IN_PROCESS}
    from ..distributed.algorithm1 import RayTrainOptions, fit_method_distributed
    from ..runtime.progress import enabled

    timeout = {} if plan.resource_timeout_s is None else {"resource_timeout_s": plan.resource_timeout_s}
    opts = RayTrainOptions(workers=plan.workers, gpus_per_worker=plan.gpus_per_worker,
                           cpus_per_worker=plan.cpus_per_worker, shared_fs=plan.shared_fs, resume=plan.resume,
                           storage=plan.checkpoint_dir, s3_endpoint=plan.storage.s3_endpoint,
                           s3_profile=plan.storage.s3_profile, on_bad_record=policy.mode, progress=enabled(),
                           **timeout)
    if feed == RAY_DATA:
        from ..distributed.cluster import connect
        from ..distributed.dataset import read_rows

        connect(plan.address)  # before Ray Data's first call, which would otherwise start a default Ray itself
        # the split open_input chose (?split=, the only one, or train), not the spec's bare default
        ds, info = read_rows(inp.spec, plan.storage, inp.split.name or None)
        method, metrics = fit_method_distributed(cfg, ds, device, opts, plan.address, info=info)
        return method, {**metrics, "feed": RAY_DATA}
    data = load_arrays(inp, policy, cap, _stream_hint(cfg, inp, plan.workers))
    method, metrics = fit_method_distributed(cfg, data, device, opts, plan.address)
    return method, {**metrics, "feed": OBJECT_STORE}


def _streamable(cfg: ProtectConfig, workers: int) -> bool:
    """Only the Algorithm-1 generators stream, with a global batch the workers split evenly (distributed.stream)."""
    from ..perturb.methods import MinMinMax

    return cfg.method in MinMinMax.names and cfg.trainer.batch_size % workers == 0


def choose_feed(cfg: ProtectConfig, inp: Input, workers: int, stream: bool | None, ray_train: bool) -> str:
    """How the fit gets the split: ``RAY_DATA``, ``OBJECT_STORE`` (Ray Train from one in-memory copy) or
    ``IN_PROCESS``. Streams an Algorithm-1 input of ``stream_min_bytes()`` or more (on Ray Train: of unknown
    size too); a larger split that cannot stream is refused in one line naming the way out, unless
    ``--no-stream`` asked for the load. Reads no pixels, so ``protect`` calls it before writing anything."""
    size, limit = inp.info.pixel_bytes, stream_min_bytes()
    big = size is not None and size >= limit
    check_stream(inp, stream)
    if stream and not _streamable(cfg, workers):
        raise ValueError(f"--stream needs an Algorithm-1 method and a batch size divisible by --workers "
                         f"({cfg.method}, B = {cfg.trainer.batch_size}, {workers} workers)")
    if stream or (stream is None and inp.ray_readable and _streamable(cfg, workers)
                  and (big or (size is None and ray_train))):
        return RAY_DATA
    if big and stream is None:
        raise SplitTooLarge(f"{inp.split.display} holds {mib(size)} of pixels, at or above the {mib(limit)} "
                        f"loaded into one process (${STREAM_MIN_BYTES_ENV}); {_stream_hint(cfg, inp, workers)}")
    return OBJECT_STORE if ray_train else IN_PROCESS


def _stream_hint(cfg: ProtectConfig, inp: Input, workers: int) -> str:
    """What streams this split instead of loading it (the end of a refusal's line)."""
    from ..perturb.methods import MinMinMax

    anyway = "or pass --no-stream to load it anyway"
    if not inp.ray_readable:
        return f"`sem-dist convert` it to a canonical dataset, which streams, {anyway}"
    if cfg.method not in MinMinMax.names:
        return f"--method {cfg.method} fits on the whole split and cannot stream; pass --no-stream to load it anyway"
    if cfg.trainer.batch_size % workers:
        return (f"streaming needs --batch-size {cfg.trainer.batch_size} to split evenly among --workers {workers}; "
                f"choose --workers dividing it, {anyway}")
    return f"pass --stream (Ray Train fed by Ray Data), {anyway}"


def _say_feed(cfg: ProtectConfig, inp: Input, workers: int, stream: bool | None, feed: str) -> None:
    """One line on stderr saying where the split goes (TAP/SC/NTGA on Ray Train say it themselves)."""
    import sys

    from ..perturb.methods import MinMinMax

    size, limit = inp.info.pixel_bytes, stream_min_bytes()
    if feed == RAY_DATA:
        how, why = "streamed from storage through Ray Data", ""
    else:
        how = "loaded in this process" + (" and put in Ray's object store once" if feed == OBJECT_STORE else "")
        why = (" (--no-stream)" if stream is False else f" ({NOT_RAY_READABLE})" if not inp.ray_readable
               else f" (size unknown: loading stops at {mib(limit)})" if size is None
               else f" (below the {mib(limit)} that stream)")
    if feed == IN_PROCESS:
        where = f"{cfg.method} fit in this process"
    elif cfg.method in MinMinMax.names:
        where = f"Algorithm 1 on Ray Train ({workers} worker(s))"
    else:
        return
    what = inp.split.display + ("" if size is None else f" ({mib(size)} of pixels)")
    print(f"sem-dist: {where}: {what} {how}{why}", file=sys.stderr)


def check_stream(inp: Input, stream: bool | None) -> None:
    """``--stream`` of a source Ray Data cannot read: one line naming it (called before anything is written)."""
    if stream and not inp.ray_readable:
        raise DataError(f"--stream: {inp.split.display} cannot stream ({NOT_RAY_READABLE}; "
                        "run `sem-dist convert` first)")


def save_method(state: dict, folder: Location) -> None:
    """Write a :func:`~sem_dist.perturb.methods.method_state` dict as ``folder/method.pt`` (whole or not at all)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    folder.write_bytes(METHOD_CHECKPOINT, buf.getvalue())


def read_checkpoint(uri: str, storage: StorageOptions, device: torch.device | str = "cpu") -> tuple[dict, str]:
    """(state dict, sha256 of the file) of a checkpoint at a local path or any storage URI; loaded with
    ``weights_only=True`` (plain tensors and builtins, nothing unpickled freely)."""
    folder = open_location(posixpath.dirname(uri.rstrip("/")) or ".", storage)
    name = posixpath.basename(uri.rstrip("/"))
    data = folder.read_bytes(name)
    try:
        state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as exc:  # not a torch file, or one holding more than tensors and builtins
        raise DataError(f"{folder.child(name).display}: not a loadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise DataError(f"{folder.child(name).display}: not a checkpoint (a {type(state).__name__})")
    return state, hashlib.sha256(data).hexdigest()
