"""``imagefolder:``, ``parquet:`` and ``webdataset:`` sources as Ray Data *image rows* (see SCHEMA: ``id``,
``image`` uint8 C×H×W at the working size, ``label`` int64, ``error`` "" or the reason a record is bad).

The driver builds the source's plan (top-level listing, class names, the first image's size when not
resizing): metadata only. Each work unit (class folder, Parquet file, tar shard) becomes one Ray task that
lists/reads it; image-per-file sources are then re-blocked so that fetching and decoding spread over the
cluster in batches of ``DECODE_ROWS``. Decoding and the resize/crop run in those tasks with the very
function the in-process sources use (``sem_dist.data.sources.plan.decode_records``), so both give the same pixels.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np

from ..data.info import DatasetInfo
from ..data.sources.plan import DECODE_ROWS, ImageSpec, RawRecord, SourcePlan, batched, decode_records
from ..data.storage import DataError, StorageOptions

if TYPE_CHECKING:
    import ray.data

    from ..data.sources.registry import SourceSpec


def read_source_rows(spec: "SourceSpec", storage: StorageOptions | None, split: str | None = None
                     ) -> tuple["ray.data.Dataset", DatasetInfo]:
    """The split of a plan source (``split`` wins over the spec's ``?split=``) as image rows."""
    from ..data.sources.registry import PLAN_KINDS, open_source

    if spec.kind not in PLAN_KINDS:
        raise DataError(f"{spec.display}: Ray reads {', '.join(k + ':' for k in PLAN_KINDS)} sources here "
                        "(canonical datasets through read_rows)")
    source = open_source(spec, storage)
    plan = source.plan(source.resolve_split(split or spec.split))
    image = plan.image_spec()
    return plan_rows(plan, image), plan.info(image)


def plan_rows(plan: SourcePlan, image: ImageSpec) -> "ray.data.Dataset":
    import ray.data

    reader, num_classes = plan.reader, len(plan.classes)
    units = ray.data.from_items([{"unit": u} for u in plan.units], override_num_blocks=max(1, len(plan.units)))
    if not reader.fetches:  # records carry their bytes: read and decode in the unit's task
        def read_and_decode(batch: dict) -> Iterator[dict]:
            for unit in batch["unit"]:
                for records in batched(reader.records(unit), DECODE_ROWS):
                    yield decode_records(records, reader.fetch, image, num_classes)

        return units.map_batches(read_and_decode, batch_size=1, batch_format="numpy")

    def list_unit(batch: dict) -> Iterator[dict]:
        for unit in batch["unit"]:
            for records in batched(reader.records(unit), DECODE_ROWS):
                yield _raw_columns(records)

    def fetch_and_decode(batch: dict) -> dict:
        return decode_records(_raw_records(batch), reader.fetch, image, num_classes)

    listed = units.map_batches(list_unit, batch_size=1, batch_format="numpy")
    return (listed.repartition(target_num_rows_per_block=DECODE_ROWS)
            .map_batches(fetch_and_decode, batch_size=DECODE_ROWS, batch_format="numpy"))


_RAW_FIELDS = ("id", "label", "ref", "where", "error")  # what a listing passes on (no bytes: it fetches)


def _raw_columns(records: list[RawRecord]) -> dict[str, np.ndarray]:
    cols = {f: np.asarray([getattr(r, f) for r in records], dtype=object) for f in _RAW_FIELDS}
    cols["label"] = cols["label"].astype(np.int64)
    return cols


def _raw_records(batch: dict) -> list[RawRecord]:
    return [RawRecord(str(i), int(lab), ref=str(ref), where=str(w), error=str(e))
            for i, lab, ref, w, e in zip(*(batch[f] for f in _RAW_FIELDS))]

