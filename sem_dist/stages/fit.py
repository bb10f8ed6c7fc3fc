"""Fit stage (Algorithm 1, or whatever the method learns): in this process (``pipeline.fit_method``) or
on Ray Train (``distributed.train.fit_method_distributed``) — same inputs, same fitted method.

On Ray Train the data reaches the workers one of two ways: small inputs (below ``stream_min_bytes`` of
pixels) are loaded once and put into the object store, exactly as the in-process loop samples them;
larger ones (or any, with ``--stream``) stream from storage through Ray Data (``distributed.dataset.
read_rows``), so neither the driver nor any worker ever holds the whole split (docs/ray-train.md).
Sources Ray Data cannot read (bundled digits, ``mnist:``/``cifar10:``/``cifar100:`` files, all small) always
take the object store. Either way one line on stderr says which.

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
from ..data.records import BadRecordPolicy
from ..data.storage import DataError, Location, StorageOptions, open_location
from ..perturb.methods import NoiseMethod
from ..pipeline import fit_method
from .read import Input, load_arrays

METHOD_CHECKPOINT = "method.pt"
STREAM_MIN_BYTES = 256 << 20  # pixels below this go into the object store once; above, they stream
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
    stream: bool | None = None  # Ray Train fed by Ray Data: None = when the input has >= stream_min_bytes
    stream_min_bytes: int = STREAM_MIN_BYTES


def fit(cfg: ProtectConfig, inp: Input, device: torch.device, plan: FitPlan,
        policy: BadRecordPolicy) -> tuple[NoiseMethod, dict]:
    """The fitted method and the training metrics (workers, steps/s, resumed-from step)."""
    from ..distributed.train import uses_ray_train

    if not uses_ray_train(plan.workers, plan.checkpoint_dir):
        data = load_arrays(inp, policy)
        method = fit_method(cfg, data, device, checkpoint_dir=plan.checkpoint_dir, resume=plan.resume)
        return method, {"workers": 1, "feed": "in-process"}
    from ..distributed.train import RayTrainOptions, fit_method_distributed
    from ..progress import enabled

    timeout = {} if plan.resource_timeout_s is None else {"resource_timeout_s": plan.resource_timeout_s}
    opts = RayTrainOptions(workers=plan.workers, gpus_per_worker=plan.gpus_per_worker,
                           cpus_per_worker=plan.cpus_per_worker, shared_fs=plan.shared_fs, resume=plan.resume,
                           storage=plan.checkpoint_dir, s3_endpoint=plan.storage.s3_endpoint,
                           s3_profile=plan.storage.s3_profile, on_bad_record=policy.mode, progress=enabled(),
                           **timeout)
    stream = streams(cfg, inp, plan)
    _say_feed(cfg, inp, plan, stream)
    if stream:
        from ..distributed.cluster import connect
        from ..distributed.dataset import read_rows

        connect(plan.address)  # before Ray Data's first call, which would otherwise start a default Ray itself
        # the split open_input chose (?split=, the only one, or train), not the spec's bare default
        ds, info = read_rows(inp.spec, plan.storage, inp.split.name or None)
        method, metrics = fit_method_distributed(cfg, ds, device, opts, plan.address, info=info)
        return method, {**metrics, "feed": "ray-data"}
    method, metrics = fit_method_distributed(cfg, load_arrays(inp, policy), device, opts, plan.address)
    return method, {**metrics, "feed": "object-store"}


def _say_feed(cfg: ProtectConfig, inp: Input, plan: FitPlan, stream: bool) -> None:
    """One line saying how Ray Train gets the data (methods without a generator say so themselves)."""
    import sys

    from ..perturb.methods import MinMinMax

    if cfg.method not in MinMinMax.names:
        return
    how = ("streamed from storage through Ray Data" if stream else
           "loaded in this process and put in Ray's object store once")
    why = "" if stream or inp.ray_readable else f" ({NOT_RAY_READABLE})"
    print(f"sem-dist: Algorithm 1 on Ray Train ({plan.workers} worker(s)): {inp.split.display} {how}{why}",
          file=sys.stderr)


def check_stream(inp: Input, stream: bool | None) -> None:
    """``--stream`` of a source Ray Data cannot read: one line naming it (called before anything is written)."""
    if stream and not inp.ray_readable:
        raise DataError(f"--stream: {inp.split.display} cannot stream ({NOT_RAY_READABLE}; "
                        "run `sem-dist convert` first)")


def streams(cfg: ProtectConfig, inp: Input, plan: FitPlan) -> bool:
    """Whether Ray Train reads the input through Ray Data rather than from one in-memory copy. Only the
    Algorithm-1 generators stream, with a global batch the workers split evenly (see distributed.stream)."""
    from ..perturb.methods import MinMinMax

    ok = cfg.method in MinMinMax.names and cfg.trainer.batch_size % plan.workers == 0
    if not inp.ray_readable:  # bundled digits, mnist:, cifar10:, cifar100: files are small and read here
        check_stream(inp, plan.stream)
        return False
    if plan.stream is not None:
        if plan.stream and not ok:
            raise ValueError(f"--stream needs an Algorithm-1 method and a batch size divisible by --workers "
                             f"({cfg.method}, B = {cfg.trainer.batch_size}, {plan.workers} workers)")
        return plan.stream
    info = inp.info
    size = None if info.count is None else info.count * info.channels * info.height * info.width
    return ok and (size is None or size >= plan.stream_min_bytes)


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
