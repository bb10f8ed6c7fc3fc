"""Fit stage (Algorithm 1, or whatever the method learns): in this process (``pipeline.fit_method``) or
on Ray Train (``distributed.train.fit_method_distributed``) — same inputs, same fitted method.

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


def fit(cfg: ProtectConfig, inp: Input, device: torch.device, plan: FitPlan,
        policy: BadRecordPolicy) -> tuple[NoiseMethod, dict]:
    """The fitted method and the training metrics (workers, steps/s, resumed-from step)."""
    data = load_arrays(inp, policy)
    from ..distributed.train import uses_ray_train

    if uses_ray_train(plan.workers, plan.checkpoint_dir):
        from ..distributed.train import RayTrainOptions, fit_method_distributed

        timeout = {} if plan.resource_timeout_s is None else {"resource_timeout_s": plan.resource_timeout_s}
        opts = RayTrainOptions(workers=plan.workers, gpus_per_worker=plan.gpus_per_worker,
                               cpus_per_worker=plan.cpus_per_worker, shared_fs=plan.shared_fs, resume=plan.resume,
                               storage=plan.checkpoint_dir, s3_endpoint=plan.storage.s3_endpoint,
                               s3_profile=plan.storage.s3_profile, **timeout)
        return fit_method_distributed(cfg, data, device, opts, plan.address)
    return fit_method(cfg, data, device, checkpoint_dir=plan.checkpoint_dir, resume=plan.resume), {"workers": 1}


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
