"""The commit can stop anywhere: `sem-dist protect` (S3 → S3 on the loopback moto server) SIGKILLs itself at a
named point of its commit (``SEM_DIST_STOP_AT``, sem_dist/testing/stop.py), then the same command with
``--resume`` completes it: every id once, the bytes of an uninterrupted run, nothing regenerated twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sem_dist.data import load_dataset, save_dataset
from sem_dist.data.storage import DataError
from test_distributed_regenerate import TINY, s3_objects, shard_ids

WT = str(Path(__file__).resolve().parents[1])
UNITS, ROWS = 4, 10  # 40 images in 4 input shards: one unit each


CKPT = "--checkpoint-dir"  # a local checkpoint folder keeps Algorithm 1 in this process (no Ray Train start-up)


@pytest.fixture
def flags(tmp_path) -> list[str]:
    return [*TINY, "--keep-noise", CKPT, str(tmp_path / "ckpt")]


def killed_protect(data: str, out: str, point: str, flags: list[str], env: dict | None = None) -> None:
    """Run the driver in its own process until it kills itself at ``point``."""
    cmd = [sys.executable, "-m", "sem_dist", "protect", "--data", data, "--out", out, *flags]
    run = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": WT, "SEM_DIST_STOP_AT": point, **(env or {})},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]


@pytest.fixture
def reference(s3_env, cli, tiny_digits, flags):
    """Input shards and the output of an uninterrupted run."""
    _, bucket = s3_env
    save_dataset(tiny_digits[0], f"s3://{bucket}/data", shard_rows=ROWS)
    code, _, err = cli("protect", "--data", f"s3://{bucket}/data", "--out", f"s3://{bucket}/ref", *flags)
    assert code == 0, err
    return bucket, s3_objects(bucket, "ref/")


def check_same_as_reference(bucket: str, ref: dict[str, bytes], expected_ids: list[str]) -> dict:
    done = s3_objects(bucket, "out/")
    assert sorted(done) == sorted(ref)  # no _staging, no stray shard, no temp file
    assert all(done[k] == ref[k] for k in ref if k.endswith(".parquet"))  # the same bytes, shard by shard
    ids = shard_ids(done)
    assert sorted(ids) == sorted(expected_ids) and len(ids) == len(set(ids))
    m, m_ref = json.loads(done["manifest.json"]), json.loads(ref["manifest.json"])
    assert m["shards"] == m_ref["shards"] and m["protection"]["noise"] == m_ref["protection"]["noise"]
    return m


@pytest.mark.parametrize("point, final_shards, regenerated", [
    ("unit:2", 2, 20),  # two units' shards are at their final keys, two to go
    ("before-manifest", UNITS, 0),  # every shard final, no manifest yet
])
def test_a_commit_killed_before_its_manifest_resumes(reference, cli, tiny_digits, flags, point, final_shards,
                                                     regenerated):
    bucket, ref = reference
    data, out = f"s3://{bucket}/data", f"s3://{bucket}/out"
    killed_protect(data, out, point, flags)
    left = s3_objects(bucket, "out/")
    assert "manifest.json" not in left
    assert sorted(k for k in left if k.endswith(".parquet") and "/" not in k) == [
        f"part-{i:05d}.parquet" for i in range(final_shards)]
    assert len([k for k in left if k.startswith("_staging/done/")]) == final_shards
    with pytest.raises(DataError, match="incomplete"):  # readers refuse shards without a manifest
        load_dataset(out)

    code, _, err = cli("protect", "--data", data, "--out", out, *flags)
    assert code == 1 and "--resume" in err  # an interrupted run is not overwritten by accident
    code, _, err = cli("protect", "--data", data, "--out", out, *flags, "--resume")
    assert code == 0, err
    m = check_same_as_reference(bucket, ref, tiny_digits[0].ids)
    assert m["protection"]["resumed"] is True
    assert m["protection"]["regeneration"]["images"] == regenerated  # finished units were not redone


def test_a_commit_killed_after_its_manifest_is_complete(reference, cli, tiny_digits, flags):
    bucket, ref = reference
    data, out = f"s3://{bucket}/data", f"s3://{bucket}/out"
    killed_protect(data, out, "after-manifest", flags)
    left = s3_objects(bucket, "out/")
    assert "manifest.json" in left and any(k.startswith("_staging/") for k in left)
    assert sorted(load_dataset(out).ids) == sorted(tiny_digits[0].ids)  # complete: the leftover is harmless

    code, _, err = cli("protect", "--data", data, "--out", out, *flags, "--resume")
    assert code == 0 and "already complete" in err
    check_same_as_reference(bucket, ref, tiny_digits[0].ids)  # and the leftover is gone


def test_a_ray_data_commit_killed_before_its_manifest_resumes(ray_cluster, reference, cli, tiny_digits, flags):
    bucket, ref = reference
    data, out = f"s3://{bucket}/data", f"s3://{bucket}/out"
    killed_protect(data, out, "before-manifest", [*flags, "--regen-actors", "2"],
                   env={"RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "SEM_DIST_PROGRESS": "0"})
    assert "manifest.json" not in s3_objects(bucket, "out/")
    code, _, err = cli("protect", "--data", data, "--out", out, *flags, "--resume", "--regen-actors", "2")
    assert code == 0, err
    assert check_same_as_reference(bucket, ref, tiny_digits[0].ids)["protection"]["regeneration"]["images"] == 0


def test_resume_refuses_an_input_file_that_changed(s3_env, cli, flags):
    """Content identity: an image folder on S3 whose file changed (same name, new bytes: new ETag) after the
    run was killed is refused on --resume with one line naming the file; the output is left as it was."""
    import boto3

    from test_sources_scale import png

    _, bucket = s3_env
    s3 = boto3.client("s3")
    for c in ("cat", "dog"):
        for i in range(3):
            s3.put_object(Bucket=bucket, Key=f"tree/{c}/{i}.png", Body=png(10 * len(c) + i))
    data, out = f"imagefolder:s3://{bucket}/tree", f"s3://{bucket}/out"
    killed_protect(data, out, "unit:1", flags)
    left = s3_objects(bucket, "out/")
    s3.put_object(Bucket=bucket, Key="tree/dog/1.png", Body=png(99))
    code, _, err = cli("protect", "--data", data, "--out", out, *flags, "--resume")
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 1 and len(lines) == 1 and f"s3://{bucket}/tree/dog/1.png: changed" in lines[0], err
    assert s3_objects(bucket, "out/") == left


def test_a_killed_convert_resumes(tmp_path, cli):
    """In process: `convert` SIGKILLed after its second shard; the refusal's --resume finishes it with the
    bytes of an uninterrupted convert, and the recorded shards are not written again."""
    args = ["convert", "digits", str(tmp_path / "out"), "--shard-rows", "400"]
    run = subprocess.run([sys.executable, "-m", "sem_dist", *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": WT, "SEM_DIST_STOP_AT": "unit:2"})
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    train = tmp_path / "out" / "train"
    left = {p.name: p.stat().st_mtime_ns for p in train.glob("part-*")}
    assert sorted(left) == ["part-00000.parquet", "part-00001.parquet"]
    code, _, err = cli(*args)
    assert code == 1 and "pass --resume to continue it" in err
    code, _, err = cli(*args, "--resume")
    assert code == 0, err
    code, _, err = cli("convert", "digits", tmp_path / "ref", "--shard-rows", "400")
    assert code == 0, err
    for split in ("train", "test"):
        done, ref = tmp_path / "out" / split, tmp_path / "ref" / split
        assert sorted(p.name for p in done.iterdir()) == sorted(p.name for p in ref.iterdir())  # no _staging
        assert all(p.read_bytes() == (ref / p.name).read_bytes() for p in done.glob("part-*"))
        m, m_ref = (json.loads((d / "manifest.json").read_text()) for d in (done, ref))
        assert m["shards"] == m_ref["shards"] and m["count"] == m_ref["count"]
    assert {n: (train / n).stat().st_mtime_ns for n in left} == left
