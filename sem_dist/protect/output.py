"""The output of one run, and the only way the stages reach its storage: OUT, its ``_staging`` area (``run.json``
tying it to the run's fingerprint, ``method.pt``, the ledger of finished units, Algorithm 1's default
checkpoints) and the commit that makes the shards a dataset.

Shards are written at their final keys as units finish; the manifest, written last and atomically
(``data.canonical.DatasetWriter``), is what makes them a dataset, and ``_staging`` goes with the commit. Until
then every reader refuses the folder as incomplete, and a kill at any moment leaves something ``--resume``
finishes (docs/data-plane.md).
"""
from __future__ import annotations

import os
import sys

from ..data.canonical import DatasetWriter, Manifest, read_manifest
from ..data.output import OutputState, check_not_nested, prepare_output
from ..data.records import BadRecordPolicy
from ..data.storage import DataError, Location, open_location
from ..data.unique import hashes_from_text, refuse_repeated_ids
from ..distributed.storage import default_checkpoint_uri
from ..engine.checkpoint import METHOD_CHECKPOINT, read_checkpoint, save_method
from ..engine.input import Input
from ..engine.ledger import Ledger, UnitResult
from ..engine.spec import RunSpec
from ..engine.units import RegenJob


class Output:
    """OUT for ``spec``: refused before anything is written when it is inside the input (or the reverse), or
    holds something other than what sem-dist wrote, or an earlier run without ``--resume``/``--overwrite``."""

    def __init__(self, spec: RunSpec, inp: Input):
        self.spec, self.inp = spec, inp
        self.out = open_location(spec.out, spec.storage)
        check_not_nested(inp.location, self.out, "--data", "--out")
        self.state = prepare_output(self.out, "--out", spec.resume, spec.overwrite)
        BadRecordPolicy(spec.on_bad_record)  # validates the mode before anything is written
        self.writer = DatasetWriter(self.out)

    @property
    def staging(self) -> Location:
        return self.writer.staging

    @property
    def complete(self) -> bool:
        return self.state is OutputState.COMPLETE

    @property
    def resumed(self) -> bool:
        """Whether this run continues an interrupted one."""
        return self.spec.resume and self.state is OutputState.PARTIAL

    @property
    def checkpoint(self) -> str:
        """Where Algorithm 1's checkpoints go: ``--checkpoint-dir``, else ``OUT/_staging/checkpoint`` on the
        output's own storage (every node of a cluster sees a remote OUT; removed with the staging area)."""
        return self.spec.checkpoint_dir or default_checkpoint_uri(self.out.display)

    def already_done(self, fingerprint: str) -> Manifest:
        """``--resume`` on a committed output: its manifest, if the same settings and input made it (what a
        kill after the manifest left behind is removed)."""
        existing = read_manifest(self.out)
        if (existing.protection or {}).get("fingerprint") != fingerprint:
            raise DataError(f"--out {self.out.display} already holds a complete dataset made with other settings or "
                            "input; pass --overwrite to replace it")
        self.writer.tidy(existing)
        print(f"{self.out.display}: already complete (same settings); nothing to do", file=sys.stderr)
        return existing

    def start(self, fingerprint: str, files: dict[str, list] | None) -> None:
        """A fresh output (or the interrupted one with ``--resume``), tied to the fingerprint."""
        if not self.spec.resume:
            self.writer.clear()
        root = self.inp.location.display if self.inp.location is not None else ""
        Ledger(self.staging).open(fingerprint, self.spec.resume, files, root)

    def staged_method(self) -> dict | None:
        """The method a resumed run already fitted (None: fit it)."""
        if self.spec.resume and self.staging.exists(METHOD_CHECKPOINT):
            state, _ = read_checkpoint(f"{self.staging.display}/{METHOD_CHECKPOINT}", self.spec.storage)
            return state
        return None

    def save_method(self, state: dict) -> None:
        save_method(state, self.staging)

    def finished(self) -> dict[int, UnitResult]:
        """The units an interrupted run finished (their ledger entries)."""
        return Ledger(self.staging).finished()

    def job(self) -> RegenJob:
        """The regeneration job as any worker (or this process) runs it: URIs without secrets."""
        staging, inp, spec = worker_uri(self.staging), self.inp, self.spec
        source = ({"plan": inp.plan, "image": inp.image} if inp.plan is not None else
                  {"input_uri": worker_uri(inp.split.location)} if inp.canonical else {})
        return RegenJob(out_uri=worker_uri(self.out), staging_uri=staging,
                        method_uri=f"{staging}/{METHOD_CHECKPOINT}",
                        storage=spec.storage,
                        keep_noise=spec.keep_noise, on_bad_record=spec.on_bad_record, shard_rows=spec.shard_rows,
                        **source)

    def commit(self, manifest: Manifest, id_hashes: list[str]) -> Manifest:
        """Write the manifest, last. ``id_hashes`` (per shard, for plan units: ids no manifest vouches for,
        written by separate workers) are checked first: a repeated id is refused and nothing is kept."""
        if id_hashes:
            try:
                refuse_repeated_ids(self.out, manifest, [hashes_from_text(h) for h in id_hashes])
            except DataError:
                self.clear()  # a rerun would meet the same input: nothing of this one is kept
                raise
        self.writer.commit(manifest)
        return manifest

    def clear(self) -> None:
        """Remove what this run wrote (its shards and staging area); the input is never touched."""
        self.writer.clear()


def worker_uri(loc: Location) -> str:
    """``loc`` as a URI a Ray worker can open: absolute for local paths, redacted for object stores."""
    return os.path.abspath(loc.path) if loc.is_local else loc.display
