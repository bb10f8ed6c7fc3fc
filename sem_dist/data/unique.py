"""Unique ids across shards written in parallel: each writer hands back 8-byte hashes of its ids, and the
driver (which never holds the ids) finds repeats among them before it commits.

Used by ``convert --ray`` and by regeneration of plan sources (a Parquet id column or WebDataset keys can
repeat across files, and each file is written by its own task).
"""
from __future__ import annotations

import base64
import hashlib

import numpy as np

from .canonical import Manifest, read_shard
from .records import BadRecordPolicy
from .storage import DataError, Location


def id_hashes(ids: list[str]) -> np.ndarray:
    """8-byte digests of ids: enough to find repeats among billions without holding the ids."""
    return np.asarray([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
                       for i in ids], dtype=np.uint64)


def hashes_text(ids: list[str]) -> str:
    """:func:`id_hashes` as ASCII, for a JSON ledger entry."""
    return base64.b64encode(id_hashes(ids).tobytes()).decode()


def hashes_from_text(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.uint64)


def refuse_repeated_ids(folder: Location, manifest: Manifest, hashes: list[np.ndarray]) -> None:
    """Ids must be unique; a repeat found by its hash (``hashes[i]`` belongs to ``manifest.shards[i]``, a file
    in ``folder``) is named by reading the ids of the shards it is in."""
    every = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    values, counts = np.unique(every, return_counts=True)
    if (counts == 1).all():
        return
    for twice in values[counts > 1]:  # usually one; a mere hash collision is not a repeat
        found = []
        for info, h in zip(manifest.shards, hashes):
            if twice in h:
                for chunk in read_shard(folder, info, manifest, BadRecordPolicy("fail")):
                    found += [i for i, v in zip(chunk.ids, id_hashes(chunk.ids)) if v == twice]
        if len(set(found)) < len(found):
            repeat = next(i for i in found if found.count(i) > 1)
            raise DataError(f"{manifest.source['uri']}: record {repeat!r}: duplicate id (ids must be unique; a "
                            "repeat in another file or shard is not skippable)")
