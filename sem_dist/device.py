"""Device choice and mixed precision: the GPU paths, used by the same code that runs on CPU."""
from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU. Asking for CUDA on a machine without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when enabled (CUDA or CPU); a no-op context otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move to device; channels_last on CUDA where convolutions prefer it."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model
