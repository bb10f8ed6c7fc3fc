"""Finished units of Algorithm 4 as the run's ledger records them (``data.ledger``): what the commit needs of
each unit (its shards, noise totals, skipped records, and for plan units the 8-byte hashes of its ids)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..data.canonical import ShardInfo
from ..data.ledger import Ledger as RunLedger
from ..perturb.algorithm4 import NoiseStats


@dataclass
class UnitResult:
    """One finished unit, as its ledger entry records it."""

    index: int
    shards: list[ShardInfo] = field(default_factory=list)  # in order; none if every record was skipped
    noise: NoiseStats = field(default_factory=NoiseStats)
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    id_hashes: list[str] = field(default_factory=list)  # per shard, for plan units (see the module docstring)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def add(self, info: ShardInfo, noise: NoiseStats, id_hash: str | None) -> None:
        """One more output shard, in order (``id_hash``: its ids' hashes, for plan units)."""
        self.shards.append(info)
        self.noise = self.noise.merge(noise)
        if id_hash is not None:
            self.id_hashes.append(id_hash)

    @classmethod
    def from_dict(cls, raw: dict) -> "UnitResult":
        return cls(raw["index"], [ShardInfo(**s) for s in raw["shards"]], NoiseStats(**raw["noise"]),
                   raw["skipped"], raw["seconds"], raw["id_hashes"])


class Ledger(RunLedger):
    """The run's ledger (``data.ledger``) with :class:`UnitResult` entries."""

    def finished(self) -> dict[int, UnitResult]:
        return {i: UnitResult.from_dict(e) for i, e in self.entries().items()}

    def record(self, result: UnitResult) -> None:
        super().record(dataclasses.asdict(result))
