"""Device choice, memory layout, compilation and mixed precision: the GPU paths, used by the same code
that runs on CPU. The layout and compile rules are measured choices (numbers in docs/performance.md)."""
from __future__ import annotations

import contextlib

import torch

from .config import COMPILE_MODES, MEMORY_FORMATS, parse_pass_chunk

# torch.compile makes the CIFAR ResNet-18's input-gradient pass 1.68× faster on a 2-core CPU after ≈ 50 s
# of compilation per graph, and small_cnn's 0.66× as fast (measured for issue #13). Algorithm 1 compiles
# three graphs (eval at J·B, eval at B, train at B): ≈ 150 s. On a CPU a ResNet-18 step takes minutes, so
# that is repaid in a step or two; on a GPU, with steps of about a second and ~40 % saved, after a few
# hundred (an estimate: no GPU measured). Hence: compile from this many steps on.
COMPILE_MIN_STEPS = 500
COMPILE_SLOWER = frozenset({"small_cnn"})  # measured slower compiled: auto never compiles these


# On a CPU, with the allocator settings of ``allocator.py``, an input-gradient pass over Algorithm 1's J·B = 640
# rows costs 4–9 % more per image whole than in chunks of 128 (small_cnn 0.134 vs 0.123 s, CIFAR ResNet-18 3.34
# vs 3.22 s; 64 and 32 rows are slower again). Without those settings a whole pass paid up to 2.5× in page
# faults, which an earlier stop took for cache spills. ``pass_chunk: auto`` therefore runs a CPU pass as chunks
# of about this many pixels (128 images at 32×32); a GPU, which wants big batches, runs the pass whole.
# Numbers: docs/performance.md.
CPU_CHUNK_PIXELS = 128 * 32 * 32
MIN_CHUNK_ROWS = 8  # large images: fewer rows would leave the per-pass overhead unpaid


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU. Asking for CUDA on a machine without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the device supports it (CPUs, CUDA GPUs from Ampere on); ``None``: no autocast there
    (fp16 would need loss scaling to keep small input gradients from underflowing)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" else None


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when enabled and supported; a no-op context otherwise."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_memory_format(setting: str = "auto") -> str:
    """``auto`` → ``channels_last``: faster for every pass of the convolutional models on CUDA and on this
    CPU too (input-gradient pass 1.47× for the CIFAR ResNet-18, 1.41–1.7× for small_cnn)."""
    if setting not in MEMORY_FORMATS:
        raise ValueError(f"memory format {setting!r}: choose one of {', '.join(MEMORY_FORMATS)}")
    return "channels_last" if setting == "auto" else setting


def resolve_compile(setting: str, arch: str, steps: int) -> bool:
    """``auto`` → compile when the run is long enough to repay the compile time (see COMPILE_MIN_STEPS)
    and the model is not one measured slower compiled."""
    if setting not in COMPILE_MODES:
        raise ValueError(f"compile {setting!r}: choose one of {', '.join(COMPILE_MODES)}")
    if setting == "auto":
        return arch not in COMPILE_SLOWER and steps >= COMPILE_MIN_STEPS
    return setting == "on"


def resolve_pass_chunk(setting: str | int, device: torch.device, image_shape: tuple[int, ...]) -> int | None:
    """Rows per chunk of an input-gradient pass over images of ``image_shape`` (…, H, W) on ``device``;
    ``None``: one pass over all rows. ``auto`` → chunks of CPU_CHUNK_PIXELS on a CPU, whole on a GPU."""
    setting = parse_pass_chunk(setting)
    if setting == "off" or (setting == "auto" and device.type != "cpu"):
        return None
    if setting == "auto":
        return max(MIN_CHUNK_ROWS, CPU_CHUNK_PIXELS // (image_shape[-2] * image_shape[-1]))
    return setting


def prepare_model(model: torch.nn.Module, device: torch.device, memory_format: str = "auto",
                  compile: bool = False, backend: str = "inductor") -> torch.nn.Module:
    """Move to ``device`` in ``memory_format`` (4-D weights; convolutions then run in that layout) and
    compile in place when asked (``Module.compile``: parameter names and state dicts stay as they are)."""
    model = model.to(device)
    if resolve_memory_format(memory_format) == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.compile(backend=backend)
    return model


def trainer_layout(trainer, device: torch.device | None = None, image_shape: tuple[int, ...] | None = None) -> dict:
    """The resolved layout of a run's passes from its ``trainer`` config (recorded in manifests); with the
    device and image shape also the rows per input-gradient chunk (``"off"``: whole passes)."""
    out = {"memory_format": resolve_memory_format(trainer.memory_format),
           "compile": resolve_compile(trainer.compile, trainer.arch, trainer.steps)}
    if device is not None and image_shape is not None:
        out["pass_chunk"] = resolve_pass_chunk(trainer.pass_chunk, device, image_shape) or "off"
    return out


def prepare_for(trainer, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``prepare_model`` with the layout a ``trainer`` config resolves to."""
    layout = trainer_layout(trainer)
    return prepare_model(model, device, layout["memory_format"], layout["compile"])
