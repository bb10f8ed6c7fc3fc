"""The fitted method as one small checkpoint, ``_staging/method.pt`` beside the output: regeneration workers
load it from there, and ``--resume`` skips fitting when it exists. Loaded with ``weights_only=True``."""
from __future__ import annotations

import hashlib
import io
import posixpath

import torch

from ..data.storage import DataError, Location, StorageOptions, open_location

METHOD_CHECKPOINT = "method.pt"


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
