"""Device choice, memory layout, compilation, mixed precision and CUDA graphs: the GPU paths, used by the same
code that runs on CPU. The layout and compile rules are measured choices (numbers in docs/performance.md)."""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import warnings
from typing import Callable

import torch

from ..config import COMPILE_MODES, GRAPH_MODES, MEMORY_FORMATS, parse_amp, parse_pass_chunk

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


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which bf16 convolutions and matmuls still run in hardware; any other
# cap (AVX2, what the AVX2 kernel set of the Makefile sets) makes bf16 an emulation slower than fp32
ONEDNN_BF16_ISAS = frozenset({"ALL", "AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                              "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16"})


@functools.cache
def cpu_bf16_kernels() -> bool:
    """Whether this process's CPU kernels compute in bf16 in hardware: the CPU has AMX tiles or avx512_bf16,
    and neither ATen's capability (ATEN_CPU_CAPABILITY) nor oneDNN's ISA (ONEDNN_MAX_CPU_ISA) is capped below
    them, as they are where an AVX2 machine's kernels are emulated."""
    cpu = torch.cpu
    if not (cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported()):
        return False
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return False
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").strip().upper()
    return cap in ONEDNN_BF16_ISAS


def resolve_amp(setting: str | bool, device: torch.device) -> bool:
    """``trainer.amp`` on ``device``: ``on`` wherever the device has bf16 (:func:`amp_dtype`), ``off`` never,
    ``auto`` on a CPU whose kernels compute bf16 in hardware (:func:`cpu_bf16_kernels`). There a SEM step ran
    1.6× (small_cnn) and 1.9× (ResNet-18) faster than fp32, and victims' accuracy on its noise stayed within the
    seed spread of fp32 noise (docs/performance.md). ``auto`` stays off on a GPU: on an H200 the bf16 SEM step
    was no faster (issue #21's 0.220 s against 0.210 s fp32), the passes there being bound by kernel launches,
    not arithmetic."""
    setting = parse_amp(setting)
    if setting == "auto":
        return device.type == "cpu" and cpu_bf16_kernels()
    return setting == "on" and amp_dtype(device) is not None


def cpu_summary() -> dict:
    """The CPU and the kernels torch uses on it (figures move with both: docs/evidence.md)."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    return {"model": model, "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "amx": torch.cpu._is_amx_tile_supported(), "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
            "bf16_kernels": cpu_bf16_kernels(),
            "kernel_env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                       "MKL_ENABLE_INSTRUCTIONS") if k in os.environ}}


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when enabled and supported; a no-op context otherwise.

    Without autocast's cache of bf16 weight copies: every autocast region here holds one forward, so the cache
    saves nothing, and a CUDA graph (:class:`CapturedCall`) must cast the fp32 master weights afresh on each
    replay, after the optimizer has updated them (PyTorch requires ``cache_enabled=False`` under capture)."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)


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
    device and image shape also the rows per input-gradient chunk (``"off"``: whole passes) and how the
    fixed-shape work runs (:func:`graph_mode`)."""
    out = {"memory_format": resolve_memory_format(trainer.memory_format),
           "compile": resolve_compile(trainer.compile, trainer.arch, trainer.steps)}
    if device is not None and image_shape is not None:
        out["pass_chunk"] = resolve_pass_chunk(trainer.pass_chunk, device, image_shape) or "off"
        out["graphs"] = graph_mode(trainer.graphs, device)
        out["amp"] = resolve_amp(trainer.amp, device)
    return out


def prepare_for(trainer, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``prepare_model`` with the layout a ``trainer`` config resolves to."""
    layout = trainer_layout(trainer)
    return prepare_model(model, device, layout["memory_format"], layout["compile"])


# Eager calls of a new signature before it is recorded: cuDNN and cuBLAS create their handles and workspaces,
# the optimizer its momentum buffers and autograd its per-device state on first use, which a capture must not
# record. One call does all of that; PyTorch's own examples use up to three only for DDP, which we never capture.
GRAPH_WARMUP_CALLS = 1


def graph_mode(setting: str, device: torch.device) -> str:
    """How :class:`CapturedCall` runs fixed-shape work on ``device`` for ``trainer.graphs`` = ``setting``:
    ``cuda`` (recorded once as a CUDA graph, then replayed), ``static`` (through the same static buffers,
    eagerly: what ``on`` means where CUDA graphs do not exist, and how tests check the buffer plumbing on a
    CPU) or ``off`` (called directly). ``auto`` → ``cuda`` on a CUDA device, ``off`` elsewhere."""
    if setting not in GRAPH_MODES:
        raise ValueError(f"graphs {setting!r}: choose one of {', '.join(GRAPH_MODES)}")
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return "off"
    return "cuda" if device.type == "cuda" else "static"


class CapturedCall:
    """``fn(*inputs, **constants)`` over static copies of its tensor inputs, replayed as one CUDA graph.

    A CUDA graph records the kernels one call launches and replays all of them with one launch, so work that
    is bound by kernel launches and Python (Algorithm 1's thousands of small passes) runs at the GPU's pace.
    A graph reads and writes the addresses it was recorded with: every call copies its inputs into buffers
    allocated once per signature (input shapes, dtypes and devices, and the ``constants``); the first
    GRAPH_WARMUP_CALLS calls of a signature run eagerly on a side stream (as PyTorch requires before a
    capture), the next records the graph and every later one replays it. Once a graph exists, a single call
    of another signature runs eagerly; a second in a row starts over with the new signature (warm-up,
    record) and releases the previous graph.

    ``fn`` must launch the same kernels on every call of a signature: no host synchronisation (``.item()``,
    sizes read from the device), no draws from torch's generators, and every Python value that changes
    between calls passed as a constant. Our ``CounterStream`` draws are integer kernels over a key tensor, so
    keys passed as an input give each replay its own draws, bit for bit those of an eager call. Tensors that
    ``fn`` reads without taking them as inputs (a model's weights, optimizer state) are read in place: update
    them in place (``load_state_dict`` does) or call :meth:`reset`.

    ``setting`` is ``trainer.graphs`` (:func:`graph_mode`). With ``auto``, a failed capture warns once and
    the call runs eagerly from then on; with ``on`` it raises. Returns copies of ``fn``'s outputs (a tensor
    or a tuple of tensors), so a caller may keep them across calls.
    """

    def __init__(self, fn: Callable, setting: str = "auto"):
        graph_mode(setting, torch.device("cpu"))  # validate now, not at the first call
        self.fn, self.setting = fn, setting
        self.failed = False
        self.reset()

    def reset(self) -> None:
        """Forget buffers and graph; the next call warms up and records again."""
        self.signature, self.buffers, self.graph, self.outputs, self.warm_calls = None, (), None, None, 0
        self.pending = None  # a signature met once since the graph was recorded

    def mode(self, device: torch.device) -> str:
        return "off" if self.failed else graph_mode(self.setting, device)

    def __call__(self, *inputs: torch.Tensor, **constants):
        mode = self.mode(inputs[0].device)
        if mode == "off":
            return self.fn(*inputs, **constants)
        signature = (tuple((t.shape, t.dtype, t.device) for t in inputs), tuple(sorted(constants.items())))
        if signature != self.signature:
            if self.graph is not None and signature != self.pending:
                # a single call of another signature (Algorithm 4's last, partial batch of a shard) runs eagerly
                # and keeps the graph; a second one in a row (a new learning rate) adopts the new signature
                self.pending = signature
                return self.fn(*inputs, **constants)
            self.reset()
            self.signature = signature
            self.buffers = tuple(torch.empty_like(t) for t in inputs)
        self.pending = None
        for buffer, t in zip(self.buffers, inputs):
            buffer.copy_(t)
        if mode == "static":
            return self.fn(*self.buffers, **constants)
        if self.graph is None:
            if self.warm_calls < GRAPH_WARMUP_CALLS:
                self.warm_calls += 1
                return self._side_stream(constants)
            try:
                self._capture(constants)
            except Exception as exc:
                if self.setting == "on":
                    raise
                warnings.warn(f"CUDA graph capture failed, running eagerly instead: {exc}", RuntimeWarning)
                self.failed = True
                self.reset()
                return self.fn(*inputs, **constants)
        self.graph.replay()
        return _clone(self.outputs)

    def _side_stream(self, constants: dict):
        device = self.buffers[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            out = self.fn(*self.buffers, **constants)
        # once per signature: nothing allocated on the side stream is still in flight when the caller reuses it
        torch.cuda.synchronize(device)
        return out

    def _capture(self, constants: dict) -> None:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records only: the replay that follows runs this call
            outputs = self.fn(*self.buffers, **constants)
        self.graph, self.outputs = graph, outputs


def _clone(outputs):
    return tuple(t.clone() for t in outputs) if isinstance(outputs, tuple) else outputs.clone()
