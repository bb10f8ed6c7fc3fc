"""Hugging Face-style Parquet without a manifest (``parquet:URI``), what ``datasets`` and the Hub write.

An image column holding either the HF Image struct ``{bytes, path}`` or plain bytes, an integer label
column, and optionally an id column. Options: ``image=COL`` (default ``image``), ``label=COL`` (default
``label``), ``id=COL`` (default ``id`` when the files have it; otherwise ids are ``FILE#ROW``, stable for
the same files), ``names=a,b,c`` / ``classes=N`` (else the ``ClassLabel`` names the Hub stores in the
schema metadata, else ``0..max label``, read from the files' statistics), ``size=S``, ``mode=RGB|L``.
Work units are files, and a file larger than ``UNIT_BYTES`` is split into runs of its row groups of about
that size (``FILE::rgA-B``), so one big file still spreads over many workers; each unit is read in batches,
so memory stays bounded.
"""
from __future__ import annotations

import contextlib
import json
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .plan import DECODE_ROWS, RawRecord, SourcePlan, UnitReader, class_names, portable_uri

UNIT_BYTES = 64 << 20  # a unit of parallel work: a file, or a run of a bigger file's row groups of ~this size
_RANGE = "::rg"  # FILE::rgA-B: row groups [A, B) of FILE
from ..storage import DataError, Location, StorageOptions, storage_errors
from .shardfiles import ShardFilesSource


@contextlib.contextmanager
def _open(loc: Location, rel: str) -> Iterator[pq.ParquetFile]:
    where = loc.child(rel)
    with storage_errors(where), loc.fs.open(where.path, "rb") as fh:
        try:
            pf = pq.ParquetFile(fh)
        except pa.ArrowException as exc:
            raise DataError(f"{where.display}: not a readable Parquet file ({exc})") from None
        yield pf


class ParquetReader(UnitReader):
    def __init__(self, uri: str, storage: StorageOptions, location: Location | None, columns: dict[str, str | None],
                 keep_below: int | None):
        super().__init__(uri, storage, location)
        self.columns, self.keep_below = columns, keep_below

    def records(self, unit: str) -> Iterator[RawRecord]:
        rel, _, span = unit.partition(_RANGE)
        with _open(self.location, rel) as pf:
            first, stop = (int(g) for g in span.split("-")) if span else (0, pf.metadata.num_row_groups)
            yield from self._records(pf, rel, range(first, stop))

    def _records(self, pf: pq.ParquetFile, rel: str, groups: range) -> Iterator[RawRecord]:
        image, label, rid = self.columns["image"], self.columns["label"], self.columns["id"]
        check_columns(pf.schema_arrow, self.columns, self.location.child(rel).display)
        row = sum(pf.metadata.row_group(g).num_rows for g in range(groups.start))  # ids FILE#ROW count from 0
        for batch in pf.iter_batches(batch_size=DECODE_ROWS, row_groups=list(groups),
                                     columns=[c for c in (rid, image, label) if c]):
            for rec in batch.to_pylist():
                record_id = str(rec[rid]) if rid else f"{rel}#{row}"
                row += 1
                value, lab = rec[image], rec[label]
                data = value.get("bytes") if isinstance(value, dict) else value
                if isinstance(lab, int) and self.keep_below is not None and lab >= self.keep_below:
                    continue  # a class left out by ?classes=N
                error = ("image bytes missing" if not data else "" if isinstance(lab, int) else
                         "label missing" if lab is None else f"label {lab!r} is not an integer")
                if rid and rec[rid] is None:
                    error = "id missing"
                yield RawRecord(record_id, lab if isinstance(lab, int) else -1, data or b"",
                                where=rel if rid else "", error=error)


def check_columns(schema: pa.Schema, columns: dict[str, str | None], where: str) -> None:
    missing = [c for c in columns.values() if c and c not in schema.names]
    if missing:
        raise DataError(f"{where}: no column(s) {', '.join(missing)} (has {', '.join(schema.names)}; "
                        "name others with ?image=, ?label=, ?id=)")


def hf_class_names(schema: pa.Schema, label: str) -> list[str] | None:
    """The ``ClassLabel`` names the Hub keeps in ``schema.metadata[b"huggingface"]``, if any."""
    try:
        meta = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        names = meta["info"]["features"][label]["names"]
        return [str(n) for n in names] if isinstance(names, list) else None
    except (KeyError, TypeError, ValueError):
        return None


class HFParquetSource(ShardFilesSource):
    kind = "parquet"
    ext = ".parquet"
    extra_options = ("image", "label", "id")

    def plan(self, name: str) -> SourcePlan:
        files = self.split_files(name)
        display = self.split_display(name)
        with _open(self.location, files[0]) as pf:
            first = pf.schema_arrow
        columns = {"image": self.options.get("image", "image"), "label": self.options.get("label", "label"),
                   "id": self.options.get("id", "id" if "id" in first.names else None)}
        check_columns(first, columns, self.location.child(files[0]).display)
        found = hf_class_names(first, columns["label"])
        if found is None and "names" not in self.options and "classes" not in self.options:
            found = [str(i) for i in range(self._max_label(files, columns["label"]) + 1)]
        classes = class_names(self.options, found, display)
        keep = len(classes) if "classes" in self.options else None
        reader = ParquetReader(portable_uri(self.location), self.storage, self.location, columns, keep)
        units = [u for rel in files for u in self._units(rel)]
        return SourcePlan(display, name, classes, units, reader, self.channels, self.resize, dict(self.options))

    def _units(self, rel: str) -> list[str]:
        """``rel`` whole, or, when larger than ``UNIT_BYTES``, runs of its row groups of about that size (the
        footer is read only then)."""
        if self.sizes.get(rel, 0) <= UNIT_BYTES:
            return [rel]
        with _open(self.location, rel) as pf:
            meta = pf.metadata
        units, first, size = [], 0, 0
        for g in range(meta.num_row_groups):
            size += meta.row_group(g).total_byte_size
            if size >= UNIT_BYTES or g == meta.num_row_groups - 1:
                units.append(f"{rel}{_RANGE}{first}-{g + 1}")
                first, size = g + 1, 0
        return units if len(units) > 1 else [rel]

    def _max_label(self, files: list[str], label: str) -> int:
        """The largest label, from the files' row-group statistics (footers only, no data read)."""
        top = -1
        for rel in files:
            with _open(self.location, rel) as pf:
                meta = pf.metadata
            leaves = [meta.schema.column(i).path for i in range(meta.num_columns)]
            if label not in leaves:
                raise DataError(f"{self.location.child(rel).display}: no column {label!r} (name it with ?label=)")
            col = leaves.index(label)
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(col).statistics
                if stats is None or not stats.has_min_max or not isinstance(stats.max, int):
                    raise DataError(f"{self.display}: no label statistics to count the classes; "
                                    "give ?classes=N or ?names=a,b,c")
                top = max(top, stats.max)
        return top
