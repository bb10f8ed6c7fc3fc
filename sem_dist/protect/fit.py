"""Fit stage (Algorithm 1, or whatever the method learns), on the engine the composer chose: in this process
(``engine.local``) or on Ray Train (``distributed.engine``) — same inputs, same fitted method.

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

The fitted method is then saved as one small checkpoint (``engine.checkpoint``) in the output's staging
area: regeneration workers load it from there, and ``--resume`` skips fitting when it exists.
"""
from __future__ import annotations

import sys

import torch

from ..config import ProtectConfig
from ..data.info import STREAM_MIN_BYTES_ENV, SplitTooLarge, mib, stream_min_bytes
from ..data.records import BadRecordPolicy
from ..data.storage import DataError
from ..engine.base import Engine
from ..engine.input import Input, load_arrays
from ..engine.spec import EngineSpec, RunSpec
from ..perturb.methods import MinMinMax, NoiseMethod

IN_PROCESS, OBJECT_STORE, RAY_DATA = "in-process", "object-store", "ray-data"  # the feeds (manifest train_feed)
NOT_RAY_READABLE = ("Ray Data reads canonical datasets, imagefolder:, parquet: and webdataset:; bundled digits "
                    "and mnist:/cifar: files are small and read here")


def fit(spec: RunSpec, cfg: ProtectConfig, inp: Input, engine: Engine, feed: str, device: torch.device,
        checkpoint: str) -> tuple[NoiseMethod, dict]:
    """The fitted method and the training metrics (workers, steps/s, resumed-from step, feed)."""
    _say_feed(cfg, inp, spec.engine, feed)
    if feed == RAY_DATA:
        data = inp
    else:  # an explicit --no-stream loads whatever the size; otherwise a split of unknown size stops at the threshold
        cap = None if spec.engine.stream is False else stream_min_bytes()
        data = load_arrays(inp, BadRecordPolicy(spec.on_bad_record), cap,
                           _stream_hint(cfg, inp, spec.engine.train_workers))
    method, metrics = engine.fit(spec, cfg, data, device, checkpoint)
    return method, {**metrics, "feed": feed}


def _streamable(cfg: ProtectConfig, workers: int) -> bool:
    """Only the Algorithm-1 generators stream, with a global batch the workers split evenly (distributed.stream)."""
    return cfg.method in MinMinMax.names and cfg.trainer.batch_size % workers == 0


def choose_feed(cfg: ProtectConfig, inp: Input, engine: EngineSpec, ray_train: bool) -> str:
    """How the fit gets the split: ``RAY_DATA``, ``OBJECT_STORE`` (Ray Train from one in-memory copy) or
    ``IN_PROCESS``. Streams an Algorithm-1 input of ``stream_min_bytes()`` or more (on Ray Train: of unknown
    size too); a larger split that cannot stream is refused in one line naming the way out, unless
    ``--no-stream`` asked for the load. Reads no pixels, so ``protect`` calls it before writing anything."""
    size, limit = inp.info.pixel_bytes, stream_min_bytes()
    big = size is not None and size >= limit
    workers, stream = engine.train_workers, engine.stream
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
    anyway = "or pass --no-stream to load it anyway"
    if not inp.ray_readable:
        return f"`sem-dist convert` it to a canonical dataset, which streams, {anyway}"
    if cfg.method not in MinMinMax.names:
        return f"--method {cfg.method} fits on the whole split and cannot stream; pass --no-stream to load it anyway"
    if cfg.trainer.batch_size % workers:
        return (f"streaming needs --batch-size {cfg.trainer.batch_size} to split evenly among --workers {workers}; "
                f"choose --workers dividing it, {anyway}")
    return f"pass --stream (Ray Train fed by Ray Data), {anyway}"


def _say_feed(cfg: ProtectConfig, inp: Input, engine: EngineSpec, feed: str) -> None:
    """One line on stderr saying where the split goes (TAP/SC/NTGA on Ray Train say it themselves)."""
    size, limit = inp.info.pixel_bytes, stream_min_bytes()
    workers, stream = engine.train_workers, engine.stream
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
