"""What one ``protect`` or ``regenerate`` run is, built once (from the CLI's flags or by a Python caller) and
passed whole to every stage and engine: :class:`RunSpec`, with :class:`EngineSpec` saying where the stages run.
Nothing else copies these fields; a stage reads what it needs from the spec it is given."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..data.storage import StorageOptions

DEFAULT_RESOURCE_TIMEOUT_S = 600.0  # how long an autoscaler gets to add what a Ray stage asks for


@dataclass(frozen=True)
class EngineSpec:
    """Where the stages run. ``workers`` > 1 → Algorithm 1 on Ray Train (also one worker whose checkpoints go
    to object storage, or a streamed fit); ``regen_actors`` → Algorithm 4 on Ray Data with that many model
    actors. ``--workers``/``--address`` alone imply Ray Data regeneration with ``max(workers, 1)`` actors,
    which falls back to this process for inputs Ray cannot read (``implied``). GPUs and CPUs per worker apply
    to Ray Train workers and regeneration actors alike."""

    workers: int | None = None  # None: not given (one, in this process)
    regen_actors: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0  # also each Ray worker's torch threads
    address: str | None = None  # Ray cluster to join (default: $RAY_ADDRESS, else an embedded local Ray)
    resource_timeout_s: float = DEFAULT_RESOURCE_TIMEOUT_S
    shared_fs: bool = False  # local --data/--out/--checkpoint-dir are on a file system every node mounts
    stream: bool | None = None  # Ray Train fed through Ray Data (None: by size, see protect.fit)

    def __post_init__(self) -> None:
        for name in ("workers", "regen_actors"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker:g}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker:g}")
        if self.resource_timeout_s < 0:
            raise ValueError(f"--resource-timeout must be >= 0 seconds, got {self.resource_timeout_s:g}")

    @property
    def train_workers(self) -> int:
        return self.workers or 1

    @property
    def implied(self) -> bool:
        """Ray Data regeneration only because --workers/--address were given: it may fall back in-process."""
        return self.regen_actors is None and (self.workers is not None or self.address is not None)

    @property
    def actors(self) -> int | None:
        """Algorithm 4's Ray Data actors (None: in this process)."""
        return max(self.workers or 1, 1) if self.implied else self.regen_actors

    @property
    def on_ray(self) -> bool:
        return self.train_workers > 1 or self.actors is not None

    def driver_device(self, requested: str) -> str:
        """The device of work left in this process. On Ray every GPU used is one Ray allocated, so the
        driver's own (unallocated) GPU is not taken by ``auto``; an explicit ``--device`` still is."""
        return "cpu" if self.on_ray and requested == "auto" else requested


@dataclass(frozen=True)
class RunSpec:
    """One ``protect`` (fit, then regenerate) or, with ``generator``, one ``regenerate`` run."""

    data: str  # the source spec to protect (any storage URI)
    out: str  # the output folder: new or empty, not inside ``data``
    method: str = "sem"
    overrides: Mapping[str, Any] = field(default_factory=dict)  # dotted config keys, e.g. {"trainer.steps": 100}
    config_file: str | None = None
    generator: str | None = None  # regenerate only: a method.pt or an Algorithm-1 generator.pt, any storage URI
    device: str = "auto"  # in-process stages: auto (CUDA when available), cpu or cuda[:N]
    engine: EngineSpec = EngineSpec()
    storage: StorageOptions = StorageOptions()
    checkpoint_dir: str | None = None  # Algorithm 1's checkpoints (default: OUT/_staging/checkpoint)
    resume: bool = False
    overwrite: bool = False
    on_bad_record: str = "fail"
    shard_rows: int | None = None
    keep_noise: bool = False  # an int8 noise column lets anyone undo the protection: research use only

    def __post_init__(self) -> None:
        if self.shard_rows is not None and self.shard_rows < 1:
            raise ValueError("--shard-rows must be >= 1")

    @property
    def device_here(self) -> str:
        """The device of the stages that run in this process (see :meth:`EngineSpec.driver_device`)."""
        return self.engine.driver_device(self.device)
