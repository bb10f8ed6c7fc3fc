"""Refusals that protect the user's data before anything is written: an output equal to or inside the
input (or the reverse), and a non-empty output without ``--resume`` / ``--overwrite``.

``--overwrite`` only ever replaces what sem-dist wrote (manifest, shards, the run's ``_staging`` area, temp
files of its writes, split folders holding those); a folder with anything else in it is refused untouched.
"""
from __future__ import annotations

from enum import Enum

from .canonical import MANIFEST, STAGING, is_shard_name
from .storage import DataError, Location, is_temp_name


class OutputState(Enum):
    EMPTY = "empty"  # nothing there: write fresh
    PARTIAL = "partial"  # an interrupted run: shards and/or its _staging, no manifest; --resume continues it
    COMPLETE = "complete"  # a committed dataset


def check_not_nested(inp: Location | None, out: Location, in_flag: str, out_flag: str) -> None:
    if inp is None:
        return
    if inp.contains(out):
        raise DataError(f"{out_flag} {out.display} is {'the same as' if out.contains(inp) else 'inside'} "
                        f"{in_flag} {inp.display}; write the output somewhere else")
    if out.contains(inp):
        raise DataError(f"{in_flag} {inp.display} is inside {out_flag} {out.display}; write the output somewhere else")


def _ours(loc: Location, names: list[str], depth: int = 1) -> list[str]:
    """Entries under ``loc`` that sem-dist did not write (split folders are looked into once)."""
    foreign = []
    for name in names:
        if name in (MANIFEST, STAGING) or is_shard_name(name) or is_temp_name(name):
            continue
        sub = loc.child(name)
        sub_names = sub.names() if depth > 0 and loc.fs.isdir(sub.path) else None
        if sub_names and (MANIFEST in sub_names or STAGING in sub_names):
            foreign += [f"{name}/{n}" for n in _ours(sub, sub_names, depth - 1)]
        else:
            foreign.append(name)
    return foreign


def prepare_output(out: Location, flag: str, resume: bool = False, overwrite: bool = False) -> OutputState:
    """Classify ``out`` and refuse unless the flags allow writing there. Nothing is deleted here."""
    if resume and overwrite:
        raise DataError("--resume and --overwrite exclude each other")
    names = out.names()
    if not names:
        return OutputState.EMPTY
    foreign = _ours(out, names)
    if foreign:
        hint = " (it holds files sem-dist did not write)" if overwrite else ""
        raise DataError(f"{flag} {out.display} is not empty (e.g. {foreign[0]!r}); refusing to write there{hint}")
    state = OutputState.COMPLETE if MANIFEST in names else OutputState.PARTIAL
    if overwrite or resume:
        return state
    what = "a complete dataset" if state is OutputState.COMPLETE else "an interrupted run"
    raise DataError(f"{flag} {out.display} already holds {what}; pass --resume to continue it or --overwrite "
                    "to replace it")
