"""Inputs ``protect`` takes as documented: bundled sources with ``--workers`` (loaded here, put in Ray's
object store, regenerated here, each step said on stderr), and which split a source without ``?split=``
gives (its only split, else train, else a one-line error naming the source)."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sem_dist.data import load_dataset

TINY = ["--arch", "small_cnn", "--steps", "2", "--ku", "1", "--samples", "1", "--ka", "1", "--batch-size", "16",
        "--device", "cpu"]


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def png(seed: int, side: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def hf_files(folder, names: list[str], rows: int = 12) -> list[int]:
    """Hugging Face-style Parquet files (image struct + label), ``rows`` each; returns every label."""
    labels = []
    for k, name in enumerate(names):
        lab = [(k * rows + i) % 3 for i in range(rows)]
        images = [{"bytes": png(k * rows + i), "path": f"{i}.png"} for i in range(rows)]
        table = pa.table({"image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                          "label": pa.array(lab, pa.int64())})
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / name, row_group_size=8)
        labels += lab
    return labels


def test_bundled_digits_with_workers_train_on_ray_from_the_object_store(ray_cluster, cli, tmp_path):
    code, out, err = cli("protect", "--data", "digits", "--out", tmp_path / "prot", "--workers", "2", *TINY)
    assert code == 0, err
    # the plan printed is the plan run: fit on Ray Train from one in-memory copy, regeneration in this process
    assert "Algorithm 1 on Ray Train (2 worker(s)): digits?split=train loaded in this process and put in " \
           "Ray's object store once" in err
    assert "regenerating in this process: digits?split=train" in err
    p = json.loads((tmp_path / "prot" / "manifest.json").read_text())["protection"]
    assert p["train_workers"] == 2 and p["train_feed"] == "object-store"
    assert p["regeneration"]["engine"] == "in-process"
    assert "protected 1437 images with sem" in out

    # --stream cannot stream what Ray Data does not read: one line naming the source, before any work
    code, _, err = cli("protect", "--data", "digits", "--out", tmp_path / "nope", "--workers", "2", "--stream", *TINY)
    line = error_line(err)
    assert code == 1 and "--stream: digits?split=train cannot stream" in line and "sem-dist convert" in line
    assert not (tmp_path / "nope").exists()


def test_one_worker_streams_a_split_above_the_threshold_and_what_cannot_stream_is_refused(ray_cluster, cli, tmp_path,
                                                                                           tiny_digits, monkeypatch):
    """--workers 1 (the default) with a local checkpoint folder: a split at or above the threshold (lowered
    here to 1,000 bytes; 40 digits hold 40 KiB) trains on Ray Train with one worker streaming it through Ray
    Data, never in the driver. A split that cannot stream is refused in one line naming the way out, before
    anything is written (known size), or as soon as the read passes the threshold (unknown size)."""
    from sem_dist.data import save_dataset

    save_dataset(tiny_digits[0], str(tmp_path / "data"))
    monkeypatch.setenv("SEM_DIST_STREAM_MIN_BYTES", "1000")
    code, out, err = cli("protect", "--data", tmp_path / "data", "--out", tmp_path / "one", *TINY)
    assert code == 0, err
    assert f"Algorithm 1 on Ray Train (1 worker(s)): {tmp_path / 'data'} (0.0 MiB of pixels) streamed from " \
           "storage through Ray Data" in err
    p = json.loads((tmp_path / "one" / "manifest.json").read_text())["protection"]
    assert (p["train_feed"], p["train_workers"]) == ("ray-data", 1) and "protected 40 images" in out

    for flags, named in ((["--method", "tap"], "--method tap fits on the whole split and cannot stream; pass "
                                               "--no-stream to load it anyway"),
                         (["--workers", "3"], "streaming needs --batch-size 16 to split evenly among --workers 3")):
        code, _, err = cli("protect", "--data", tmp_path / "data", "--out", tmp_path / "nope", *TINY, *flags)
        line = error_line(err)
        assert code == 1 and "holds 0.0 MiB of pixels, at or above the 0.0 MiB loaded into one process " \
            "($SEM_DIST_STREAM_MIN_BYTES)" in line and named in line, line
        assert not (tmp_path / "nope").exists()
    code, _, err = cli("protect", "--data", "digits", "--out", tmp_path / "digits", *TINY)
    line = error_line(err)
    assert code == 1 and "digits?split=train holds more than 0.0 MiB of pixels (stopped reading there)" in line
    assert "`sem-dist convert` it to a canonical dataset, which streams" in line


def test_a_hugging_face_parquet_folder_is_protected_from_its_train_split_on_ray(ray_cluster, cli, tmp_path):
    """The Hub layout `train-0000k-of-00002.parquet` (+ a test split): protect takes the train split without
    ?split=, on Ray too (Algorithm 1 streamed through Ray Data, Algorithm 4 on Ray Data), as --help and
    docs/data.md say. The Ray readers get the split the driver chose, not the bare spec."""
    hub = tmp_path / "hf"
    hf_files(hub, ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"])
    hf_files(hub, ["test-00000-of-00001.parquet"], rows=5)

    code, out, err = cli("protect", "--data", f"parquet:{hub}", "--out", tmp_path / "ray", "--workers", "2", *TINY)
    assert code == 0, err
    assert f"Algorithm 1 on Ray Train (2 worker(s)): parquet:{hub}?split=train streamed from storage" in err
    m = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert m["count"] == 24 and m["protection"]["train_feed"] == "ray-data"
    # Ray Data's reads need a CPU beside the workers: a cluster without one is refused at once, not hung
    code, _, err = cli("protect", "--data", f"parquet:{hub}", "--out", tmp_path / "full", "--workers", "4", *TINY)
    line = error_line(err)
    assert code == 1 and "Algorithm 1 streamed through Ray Data (--workers 4 × 1 CPU + 1 CPU for its reads) " \
        "needs 5 CPUs" in line and "--no-stream" in line
    assert m["protection"]["regeneration"]["engine"] == "ray-data"
    got = load_dataset(str(tmp_path / "ray"))
    assert sorted(got.ids) == sorted(f"train-0000{k}-of-00002.parquet#{i}" for k in range(2) for i in range(12))


def test_which_split_a_source_without_split_gives(tmp_path, cli):
    # only train (the layout): every reader takes it without ?split=
    only_train = tmp_path / "train-only"
    labels = hf_files(only_train, ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"], rows=3)
    assert load_dataset(f"parquet:{only_train}").labels.tolist() == labels
    code, out, err = cli("protect", "--data", f"parquet:{only_train}", "--out", tmp_path / "p", *TINY)
    assert code == 0 and "protected 6 images" in out, err

    # train among others: protect takes train (documented); the data commands that need one split ask
    both = tmp_path / "both"
    train = hf_files(both, ["train-00000-of-00001.parquet"], rows=4)
    hf_files(both, ["test-00000-of-00001.parquet"], rows=3)
    from sem_dist.data.storage import StorageOptions
    from sem_dist.engine.input import open_input

    inp = open_input(f"parquet:{both}", StorageOptions())
    assert inp.split.name == "train" and len(inp.plan.units) == 1
    with pytest.raises(Exception, match=r"has splits test, train; choose one \(e\.g\. \?split=test\)"):
        load_dataset(f"parquet:{both}")
    assert load_dataset(f"parquet:{both}?split=train").labels.tolist() == train

    # a source whose only split is not train is that split
    only = tmp_path / "only-valid"
    hf_files(only, ["validation-00000-of-00001.parquet"], rows=4)
    assert open_input(f"parquet:{only}", StorageOptions()).split.name == "validation"

    # several splits, none of them train: one line naming the source and its splits, nothing written
    two = tmp_path / "two"
    hf_files(two, ["a-00000-of-00001.parquet", "b-00000-of-00001.parquet"], rows=2)
    code, _, err = cli("protect", "--data", f"parquet:{two}", "--out", tmp_path / "out", *TINY)
    line = error_line(err)
    assert code == 1 and line.endswith(f"parquet:{two}: has splits a, b; choose one (e.g. ?split=a)")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_train_only_parquet_prefix_on_s3_reads_on_ray_without_a_split(ray_cluster, s3_env, tmp_path):
    """The S3 form of the same layout (parquet:s3://bucket/hf): listed, split resolved and read by Ray Data."""
    import boto3

    from sem_dist.data.storage import StorageOptions
    from sem_dist.distributed.dataset import read_rows

    endpoint, bucket = s3_env
    local = tmp_path / "hf"
    labels = hf_files(local, ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"], rows=5)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for f in sorted(local.iterdir()):
        s3.upload_file(str(f), bucket, f"hf/{f.name}")
    ds, info = read_rows(f"parquet:s3://{bucket}/hf", StorageOptions())
    rows = ds.take_all()
    assert sorted(r["label"] for r in rows) == sorted(labels) and info.channels == 3
    assert not any(r["error"] for r in rows)
