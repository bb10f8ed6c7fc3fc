"""Algorithm 4 on Ray Data (real local Ray, loopback S3): byte-identical to the in-process engine, a killed
driver resumed with --resume writes every id exactly once, corrupt records, ``sem-dist regenerate``,
and image rows from ``read_rows``."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sem_dist.data import load_dataset, open_location, save_dataset
from sem_dist.data.canonical import Manifest, ShardInfo, encode_shard, read_manifest

TINY = ["--arch", "small_cnn", "--steps", "2", "--ku", "2", "--samples", "1", "--ka", "1", "--batch-size", "16",
        "--rho-a", "2/255", "--device", "cpu"]
WT = str(Path(__file__).resolve().parents[1])


def s3_keys(bucket: str, prefix: str) -> list[str]:
    import boto3

    return [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def s3_objects(bucket: str, prefix: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3")
    return {k[len(prefix):]: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in s3_keys(bucket, prefix)}


def shard_ids(objects: dict[str, bytes]) -> list[str]:
    return [i for name, data in sorted(objects.items()) if name.endswith(".parquet")
            for i in pq.read_table(io.BytesIO(data), columns=["id"]).column("id").to_pylist()]


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_s3_to_s3_ray_data_equals_in_process(ray_cluster, s3_env, cli, tiny_digits):
    _, bucket = s3_env
    save_dataset(tiny_digits[0], f"s3://{bucket}/data", shard_rows=16)
    before = s3_objects(bucket, "data/")
    runs = {"local": [], "ray": ["--regen-actors", "2"]}
    for name, flags in runs.items():
        code, out, err = cli("protect", "--data", f"s3://{bucket}/data", "--out", f"s3://{bucket}/{name}", *TINY,
                             "--seed", "5", "--keep-noise", *flags)
        assert code == 0, err
    local, ray_out = s3_objects(bucket, "local/"), s3_objects(bucket, "ray/")
    shards = sorted(k for k in local if k.endswith(".parquet"))
    assert shards == sorted(k for k in ray_out if k.endswith(".parquet")) and len(shards) == 3
    assert all(local[k] == ray_out[k] for k in shards)  # the same bytes, shard by shard
    m_local, m_ray = (json.loads(o["manifest.json"]) for o in (local, ray_out))
    assert m_local["shards"] == m_ray["shards"] and m_local["protection"]["noise"] == m_ray["protection"]["noise"]
    regen = m_ray["protection"]["regeneration"]
    assert regen["engine"] == "ray-data" and regen["actors"] == 2 and regen["images"] == 40
    assert regen["images_per_s"] > 0 and m_local["protection"]["regeneration"]["engine"] == "in-process"
    # read, noise (the model) and write ran as separate stages; each reports how busy its workers were
    assert sorted(regen["stages"]) == ["noise", "read", "write"] and regen["cpus_per_actor"] == 1
    assert all(0 < s["busy_share"] <= 1 and s["busy_s"] > 0 for s in regen["stages"].values()), regen["stages"]
    assert regen["stages"]["noise"]["workers"] <= 2
    got = load_dataset(f"s3://{bucket}/ray")
    assert np.array_equal(got.clean_images(), tiny_digits[0].images) and 0 < np.abs(got.noise.astype(int)).max() <= 8
    assert s3_objects(bucket, "data/") == before


def test_killed_regeneration_resumes_every_id_once(ray_cluster, s3_env, cli, digits, tmp_path):
    """`sem-dist regenerate` on Ray Data from a saved generator, its driver SIGKILLed after a shard is in the
    ledger; --resume completes it, each id exactly once, the same bytes protect wrote in-process."""
    _, bucket = s3_env
    data = digits[0].subset(range(200))
    save_dataset(data, f"s3://{bucket}/data", shard_rows=10)
    # in-process reference; its Algorithm-1 checkpoint (generator.pt) is the saved generator
    code, _, err = cli("protect", "--data", f"s3://{bucket}/data", "--out", f"s3://{bucket}/ref", *TINY,
                       "--ku", "10", "--samples", "5", "--checkpoint-dir", tmp_path / "ckpt")
    assert code == 0, err
    cmd = [sys.executable, "-m", "sem_dist", "regenerate", "--generator", str(tmp_path / "ckpt" / "generator.pt"),
           "--data", f"s3://{bucket}/data", "--out", f"s3://{bucket}/out", "--regen-actors", "1"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "SEM_DIST_PROGRESS": "0",
           "PYTHONPATH": WT}
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600  # generous: CI machines can be slow to start Ray actors
        while not s3_keys(bucket, "out/_staging/done/"):  # wait for a shard in the ledger
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait()
    partial = s3_objects(bucket, "out/")
    recorded = [k for k in partial if k.startswith("_staging/done/")]
    assert "manifest.json" not in partial and 1 <= len(recorded) < 20, sorted(partial)

    code, out, err = cli("regenerate", "--generator", tmp_path / "ckpt" / "generator.pt", "--data",
                         f"s3://{bucket}/data", "--out", f"s3://{bucket}/out", "--regen-actors", "2", "--resume")
    assert code == 0, err
    done, ref = s3_objects(bucket, "out/"), s3_objects(bucket, "ref/")
    ids = shard_ids(done)
    assert sorted(ids) == sorted(data.ids) and len(ids) == len(set(ids)) == 200
    assert not any(k.startswith("_staging") for k in done)
    m, m_ref = json.loads(done["manifest.json"]), json.loads(ref["manifest.json"])
    assert m["protection"]["resumed"] is True and m["protection"]["regeneration"]["images"] <= 200 - len(recorded)
    assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in m_ref["shards"]]

    # a completed output answers --resume from its manifest alone: the input's shards are not read
    import boto3

    s3 = boto3.client("s3")
    for key in [k for k in s3_objects(bucket, "data/") if k.endswith(".parquet")]:
        s3.delete_object(Bucket=bucket, Key=f"data/{key}")
    code, _, err = cli("regenerate", "--generator", tmp_path / "ckpt" / "generator.pt", "--data",
                       f"s3://{bucket}/data", "--out", f"s3://{bucket}/out", "--regen-actors", "2", "--resume")
    assert code == 0 and "already complete" in err


@pytest.fixture
def untrained_generator(tmp_path, tiny_digits):
    """A method checkpoint of an (unfitted) small-CNN SEM generator for the digits' shape: enough for
    Algorithm 4 to run; no training needed to test the data plane."""
    from sem_dist.config import resolve_config
    from sem_dist.perturb.methods import get_method, method_state

    train = tiny_digits[0]
    cfg = resolve_config("sem", train.image_side, overrides={"trainer.arch": "small_cnn", "solver.steps": 2,
                                                            "solver.samples": 1})
    method = get_method(cfg, train.num_classes, train.in_channels, train.image_side, torch.device("cpu"))
    path = tmp_path / "method.pt"
    torch.save(method_state(method), path)
    return path


def write_corrupt(uri: str, data, bad: int) -> str:
    """A one-shard canonical dataset whose record ``bad`` has undecodable image bytes; returns its id."""
    import pyarrow as pa

    raw = pq.read_table(io.BytesIO(encode_shard(data.ids, data.images, data.labels)))
    images = raw.column("image").to_pylist()
    images[bad] = {"bytes": b"\x89PNG not really", "path": None}
    buf = io.BytesIO()
    pq.write_table(raw.set_column(1, "image", pa.array(images, raw.schema.field("image").type)), buf)
    shard = buf.getvalue()
    folder = open_location(uri)
    folder.write_bytes("part-00000.parquet", shard)
    info = ShardInfo("part-00000.parquet", len(data), hashlib.sha256(shard).hexdigest(), len(shard))
    folder.write_bytes("manifest.json", Manifest(len(data), 1, 32, 32, list(data.classes), [info]).to_json().encode())
    return data.ids[bad]


@pytest.mark.parametrize("engine", [[], ["--regen-actors", "1"]], ids=["in-process", "ray-data"])
def test_corrupt_record_fails_or_is_skipped(ray_cluster, s3_env, cli, tiny_digits, untrained_generator, engine):
    _, bucket = s3_env
    bad_id = write_corrupt(f"s3://{bucket}/data", tiny_digits[0].subset(range(12)), 5)
    before = s3_objects(bucket, "data/")
    args = ["regenerate", "--generator", untrained_generator, "--data", f"s3://{bucket}/data",
            "--out", f"s3://{bucket}/out", *engine]
    code, _, err = cli(*args)
    assert code == 1 and repr(bad_id) in error_line(err) and "undecodable" in err
    assert s3_objects(bucket, "out/") == {}  # nothing half-written
    code, out, err = cli(*args, "--on-bad-record", "skip")
    assert code == 0, err
    m = read_manifest(open_location(f"s3://{bucket}/out"))
    assert m.count == 11 and [s["id"] for s in m.skipped] == [bad_id]
    assert bad_id not in shard_ids(s3_objects(bucket, "out/"))
    assert s3_objects(bucket, "data/") == before


def test_regenerate_from_saved_generator(tmp_path, cli, tiny_digits, untrained_generator):
    """In process: a method checkpoint applied to new data; refusals for data of another shape."""
    from sem_dist.data.arrays import ArrayDataset

    train, test = tiny_digits
    save_dataset(test, str(tmp_path / "new"))
    code, out, err = cli("regenerate", "--generator", untrained_generator, "--data", tmp_path / "new",
                         "--out", tmp_path / "out", "--keep-noise")
    assert code == 0, err and "protected 20 images" in out
    got = load_dataset(str(tmp_path / "out"))
    assert got.ids == test.ids and np.array_equal(got.clean_images(), test.images)
    assert 0 < np.abs(got.noise.astype(int)).max() <= 8
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["protection"]["generator"]["uri"] == str(untrained_generator)

    rgb = ArrayDataset(test.ids, np.repeat(test.images, 3, axis=1), test.labels, test.classes)
    save_dataset(rgb, str(tmp_path / "rgb"))
    code, _, err = cli("regenerate", "--generator", untrained_generator, "--data", tmp_path / "rgb",
                       "--out", tmp_path / "out2")
    assert code == 1 and "in_channels" in error_line(err) and not (tmp_path / "out2").exists()


def test_read_rows_flags_bad_records(ray_cluster, s3_env, tiny_digits):
    from sem_dist.data.storage import StorageOptions
    from sem_dist.distributed.dataset import read_rows

    _, bucket = s3_env
    data = tiny_digits[0].subset(range(12))
    bad_id = write_corrupt(f"s3://{bucket}/data", data, 5)
    ds, info = read_rows(f"s3://{bucket}/data", StorageOptions())
    assert info.count == 12 and (info.channels, info.height, info.width) == (1, 32, 32) and info.manifest
    rows = {r["id"]: r for r in ds.take_all()}
    assert sorted(rows) == sorted(data.ids) and "undecodable" in rows[bad_id]["error"]
    for i, rid in enumerate(data.ids):
        if rid != bad_id:
            assert rows[rid]["error"] == "" and np.array_equal(rows[rid]["image"], data.images[i])
            assert rows[rid]["label"] == data.labels[i]
