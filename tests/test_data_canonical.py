"""The canonical format: exact round trips, per-shard checks, bad records, commit-last semantics."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sem_dist.data import (ArrayDataset, BadRecordPolicy, DataError, iter_batches, load_dataset, open_location,
                           read_manifest, read_shard, save_dataset)
from sem_dist.data.canonical import IMAGE_TYPE, DatasetWriter, Manifest, ShardInfo
from sem_dist.data.images import encode_png


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def edge_arrays(n=10, channels=3, seed=0) -> ArrayDataset:
    """Images that touch 0 and 255 and noise at ±8: round trips must be bit-exact."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, channels, 6, 5), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    noise = rng.integers(-8, 9, images.shape).astype(np.int8)
    return ArrayDataset([f"s{i}" for i in range(n)], images, rng.integers(0, 3, n), ["a", "b", "c"], noise)


def test_round_trip_with_noise_is_exact(tmp_path):
    data = edge_arrays()
    manifest = save_dataset(data, str(tmp_path / "ds"), shard_rows=4)
    assert [s.rows for s in manifest.shards] == [4, 4, 2] and manifest.noise_column
    got = load_dataset(str(tmp_path / "ds"))
    assert got.ids == data.ids and got.classes == data.classes
    assert np.array_equal(got.images, data.images) and np.array_equal(got.noise, data.noise)
    assert np.array_equal(got.labels, data.labels)
    assert got.meta["manifest"]["count"] == 10
    table = pq.read_table(tmp_path / "ds" / "part-00000.parquet")
    assert table.schema.field("image").type == IMAGE_TYPE and table.schema.field("label").type == pa.int64()


def test_streaming_reader_yields_bounded_batches(tmp_path):
    save_dataset(edge_arrays(n=9, channels=1), str(tmp_path / "ds"), shard_rows=5)
    folder = open_location(str(tmp_path / "ds"))
    manifest = read_manifest(folder)
    chunks = [c for info in manifest.shards for c in read_shard(folder, info, manifest, BadRecordPolicy(), 2)]
    assert [len(c) for c in chunks] == [2, 2, 1, 2, 2] and chunks[0].images.dtype == np.uint8
    assert chunks[0].labels.dtype == np.int64 and chunks[0].images.shape[1:] == (1, 6, 5)
    batches = list(iter_batches(str(tmp_path / "ds"), batch_size=4))  # re-batched across shards
    assert [len(ids) for ids, _, _ in batches] == [4, 4, 1]
    ids, images, labels = batches[1]
    assert ids == [f"s{i}" for i in range(4, 8)] and images.shape == (4, 1, 6, 5) and labels.dtype == np.int64


def test_changed_shard_is_detected(tmp_path, cli):
    save_dataset(edge_arrays(), str(tmp_path / "ds"), shard_rows=4)
    shard = tmp_path / "ds" / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes() + b"x")
    code, _, err = cli("export", tmp_path / "ds", tmp_path / "png")
    assert code == 1 and "part-00001.parquet" in error_line(err) and "sha256" in err


def hand_written(tmp_path, rows: list[dict], shape=(1, 4, 4)) -> str:
    """A one-shard dataset with arbitrary (possibly bad) rows and a manifest that matches its bytes."""
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": pa.array([r["id"] for r in rows], pa.string()),
                             "image": pa.array([{"bytes": r["image"], "path": None} for r in rows], IMAGE_TYPE),
                             "label": pa.array([r["label"] for r in rows], pa.int64())}), buf)
    folder = open_location(str(tmp_path / "hand"))
    folder.write_bytes("part-00000.parquet", buf.getvalue())
    info = ShardInfo("part-00000.parquet", len(rows), hashlib.sha256(buf.getvalue()).hexdigest(), len(buf.getvalue()))
    folder.write_bytes("manifest.json", Manifest(len(rows), *shape, ["a", "b"], [info]).to_json().encode())
    return str(tmp_path / "hand")


GOOD = encode_png(np.zeros((1, 4, 4), np.uint8))


@pytest.mark.parametrize("bad,expect", [
    ({"id": "r9", "image": b"not an image", "label": 0}, "undecodable"),
    ({"id": "r9", "image": encode_png(np.zeros((1, 5, 4), np.uint8)), "label": 0}, "mixed sizes"),
    ({"id": "r9", "image": GOOD, "label": 7}, "outside [0, 2)"),
    ({"id": "r9", "image": GOOD, "label": None}, "label missing"),
    ({"id": "r0", "image": GOOD, "label": 1}, "duplicate id"),
])
def test_bad_records_fail_or_skip(tmp_path, cli, bad, expect):
    uri = hand_written(tmp_path, [{"id": "r0", "image": GOOD, "label": 0}, bad, {"id": "r2", "image": GOOD, "label": 1}])
    code, _, err = cli("convert", uri, tmp_path / "out")
    line = error_line(err)
    assert code == 1 and "part-00000.parquet" in line and repr(bad["id"]) in line and expect in line
    assert not (tmp_path / "out" / "manifest.json").exists()
    code, _, _ = cli("convert", uri, tmp_path / "out", "--on-bad-record", "skip")
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["count"] == 2 and [s["id"] for s in manifest["skipped"]] == [bad["id"]]
    assert expect in manifest["skipped"][0]["reason"]


def test_empty_and_incomplete_datasets(tmp_path, cli):
    uri = hand_written(tmp_path, [])
    code, _, err = cli("convert", uri, tmp_path / "out")
    assert code == 1 and "empty" in error_line(err)
    # shards without a manifest: an interrupted write, never read as a dataset
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "part-00000.parquet").write_bytes(b"")
    code, _, err = cli("export", tmp_path / "partial", tmp_path / "png")
    assert code == 1 and "incomplete" in error_line(err)
    code, _, err = cli("export", tmp_path / "nothing-here", tmp_path / "png")
    assert code == 1 and "no such dataset" in error_line(err)


def test_interrupted_write_never_looks_complete(tmp_path, monkeypatch):
    """--overwrite withdraws the old dataset (manifest first) before writing any shard, so a failure after
    some shards were written leaves no manifest: never the old manifest over new shards; --overwrite later
    replaces it all, and a commit leaves nothing the manifest does not list."""
    data = edge_arrays(n=8)
    save_dataset(data, str(tmp_path / "ds"), shard_rows=3)

    calls = {"n": 0}
    original = DatasetWriter.write_shard

    def crash_on_second(self, index, chunk, noise=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return original(self, index, chunk, noise)

    monkeypatch.setattr(DatasetWriter, "write_shard", crash_on_second)
    with pytest.raises(RuntimeError):
        save_dataset(data.subset(range(6)), str(tmp_path / "ds"), shard_rows=3, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["_staging", "part-00000.parquet"]  # resumable
    with pytest.raises(DataError, match="incomplete"):
        load_dataset(str(tmp_path / "ds"))
    monkeypatch.undo()
    (tmp_path / "ds" / ".part-00001.parquet.tmp-0123abcd").write_bytes(b"")  # a write killed before its rename
    save_dataset(data.subset(range(6)), str(tmp_path / "ds"), shard_rows=3, overwrite=True)
    got = load_dataset(str(tmp_path / "ds"))
    assert got.ids == data.ids[:6] and sorted(p.name for p in (tmp_path / "ds").iterdir()) == [
        "manifest.json", "part-00000.parquet", "part-00001.parquet"]


def test_convert_refuses_non_empty_dest_and_nesting(tmp_path, cli):
    save_dataset(edge_arrays(), str(tmp_path / "ds"))
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "mine.txt").write_text("keep me")
    code, _, err = cli("convert", tmp_path / "ds", tmp_path / "dest")
    assert code == 1 and "not empty" in error_line(err)
    code, _, err = cli("convert", tmp_path / "ds", tmp_path / "dest", "--overwrite")
    assert code == 1 and "did not write" in error_line(err)
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["mine.txt"]
    assert (tmp_path / "dest" / "mine.txt").read_text() == "keep me"
    code, _, err = cli("convert", tmp_path / "ds", tmp_path / "ds" / "sub")
    assert code == 1 and "inside" in error_line(err)


def test_export_tree(tmp_path, cli):
    data = edge_arrays(n=4)
    data.ids[2] = "odd/name with space"
    data.classes[1] = "T-shirt/top"
    save_dataset(data, str(tmp_path / "ds"))
    code, out, err = cli("export", tmp_path / "ds", tmp_path / "png")
    assert code == 0, err
    record = json.loads((tmp_path / "png" / "export.json").read_text())
    assert record["count"] == 4
    from PIL import Image

    files = sorted(p for p in (tmp_path / "png").rglob("*.png"))
    assert len(files) == 4 and not (tmp_path / "png" / "_staging").exists()
    for rid, image, label in zip(data.ids, data.images, data.labels):
        folder = tmp_path / "png" / record["classes"][data.classes[label]]
        match = [f for f in folder.iterdir() if f.name.startswith(rid.replace("/", "_").replace(" ", "_"))]
        assert len(match) == 1
        assert np.array_equal(np.asarray(Image.open(match[0])).transpose(2, 0, 1), image)
    code, _, err = cli("export", tmp_path / "ds", tmp_path / "png")
    assert code == 1 and "not empty" in error_line(err)
