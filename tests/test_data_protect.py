"""``sem-dist protect`` on local disk: exact protected round trip, manifest contents, refusals, resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sem_dist.data import load_dataset, save_dataset
from sem_dist.runtime.device import cpu_bf16_kernels
from sem_dist.runtime.rng import RNG_SCHEME

# CPU-test scale: a handful of generator steps on a small CNN (the paper's settings are for GPUs)
TINY = ["--arch", "small_cnn", "--steps", "2", "--ku", "2", "--samples", "1", "--ka", "1", "--batch-size", "16",
        "--rho-a", "2/255", "--device", "cpu"]


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def small_data(tmp_path, tiny_digits):
    train, _ = tiny_digits
    save_dataset(train, str(tmp_path / "data"), shard_rows=16)
    return train, tmp_path / "data"


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_protect_round_trip_and_manifest(tmp_path, cli, small_data):
    train, data = small_data
    before = snapshot(data)
    code, out, err = cli("protect", "--data", data, "--out", tmp_path / "prot", *TINY, "--seed", "3",
                         "--rho-u", "8/255", "--keep-noise")
    assert code == 0, err
    assert "protected 40 images with sem" in out and snapshot(data) == before
    got = load_dataset(str(tmp_path / "prot"))
    assert got.ids == train.ids and np.array_equal(got.labels, train.labels)
    assert np.array_equal(got.clean_images(), train.images)  # protected − noise is the input, exactly
    assert 0 < np.abs(got.noise.astype(int)).max() <= 8
    assert np.array_equal(got.images, np.clip(train.images.astype(int) + got.noise, 0, 255))
    m = json.loads((tmp_path / "prot" / "manifest.json").read_text())
    p = m["protection"]
    assert p["method"] == "sem" and p["seed"] == 3 and p["config"]["seed"] == 3
    assert p["config"]["trainer"]["steps"] == 2 and p["config"]["budget"]["rho_u"] == pytest.approx(8 / 255)
    assert p["config"]["budget"]["rho_a"] == pytest.approx(2 / 255) and p["config"]["trainer"]["arch"] == "small_cnn"
    assert p["workers"] == 1 and p["train_workers"] == 1 and p["gpus_per_worker"] == 0
    assert p["rng"] == {"scheme": RNG_SCHEME}
    # 2 steps: no compile; a CPU runs input-gradient passes as chunks of 128 images at 32×32, without CUDA graphs,
    # and in bf16 where its kernels compute bf16 in hardware (amp auto)
    assert p["layout"] == {"memory_format": "channels_last", "compile": False, "pass_chunk": 128, "graphs": "off",
                           "amp": cpu_bf16_kernels()}
    assert p["noise"]["linf_levels"] == np.abs(got.noise.astype(int)).max()
    assert p["noise"]["mean_abs_levels"] == pytest.approx(np.abs(got.noise.astype(int)).mean())
    assert set(p["timings"]) >= {"fit_s", "regenerate_s", "total_s"}
    assert m["source"]["uri"] == str(data) and m["count"] == 40 and [s["rows"] for s in m["shards"]] == [16, 16, 8]
    assert m["skipped"] == [] and sorted(x.name for x in (tmp_path / "prot").iterdir()) == [
        "manifest.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]

    # without --keep-noise the published copy carries no noise column (it would undo the protection);
    # noise depends only on (seed, id), so the images are the same bytes
    code, _, err = cli("protect", "--data", data, "--out", tmp_path / "pub", *TINY, "--seed", "3")
    assert code == 0, err
    pub = load_dataset(str(tmp_path / "pub"))
    assert pub.noise is None and np.array_equal(pub.images, got.images)

    code, _, err = cli("export", tmp_path / "pub", tmp_path / "png")
    assert code == 0, err
    from PIL import Image

    first = tmp_path / "png" / str(train.labels[0]) / f"{train.ids[0]}.png"
    assert np.array_equal(np.asarray(Image.open(first)), pub.images[0, 0])


def test_protect_refusals_leave_everything_untouched(tmp_path, cli, small_data):
    _, data = small_data
    before = snapshot(data)
    for out, expect in ((data, "the same as"), (data / "inside", "inside")):
        code, _, err = cli("protect", "--data", data, "--out", out, *TINY)
        assert code == 1 and expect in error_line(err)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    for flags in ((), ("--resume",), ("--overwrite",)):
        code, _, err = cli("protect", "--data", data, "--out", tmp_path / "busy", *TINY, *flags)
        assert code == 1 and "not empty" in error_line(err)
    assert snapshot(tmp_path / "busy") == {Path("notes.txt"): b"mine"}
    code, _, err = cli("protect", "--data", data, "--out", tmp_path / "o", *TINY, "--rho-u", "eight")
    assert code == 1 and "eight" in error_line(err)
    code, _, err = cli("protect", "--data", data, "--out", tmp_path / "o", *TINY, "--rho-u", "300/255")
    assert code == 1 and "outside [0, 1]" in error_line(err)
    assert snapshot(data) == before and not (tmp_path / "o").exists()


def test_protect_bad_record_skip(tmp_path, cli, tiny_digits):
    train, _ = tiny_digits
    bad = train.subset(range(12))
    bad.labels[5] = 99
    # save_dataset checks labels, so the bad shard is written with the per-shard API
    from sem_dist.data import open_location
    from sem_dist.data.canonical import Manifest, write_shard

    folder = open_location(str(tmp_path / "data"))
    info = write_shard(folder, "part-00000.parquet", bad.ids, bad.images, bad.labels)
    folder.write_bytes("manifest.json", Manifest(12, 1, 32, 32, bad.classes, [info]).to_json().encode())
    code, _, err = cli("protect", "--data", tmp_path / "data", "--out", tmp_path / "p", *TINY)
    assert code == 1 and repr(bad.ids[5]) in error_line(err) and "part-00000.parquet" in err
    code, out, err = cli("protect", "--data", tmp_path / "data", "--out", tmp_path / "p", *TINY,
                         "--on-bad-record", "skip")
    assert code == 0, err
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["count"] == 11 and [s["id"] for s in m["skipped"]] == [bad.ids[5]]
    assert bad.ids[5] not in load_dataset(str(tmp_path / "p")).ids


def test_interrupted_protect_resumes(tmp_path, cli, small_data, monkeypatch):
    _, data = small_data
    import sem_dist.engine.local as stage

    original, calls = stage.protect_chunk, {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(stage, "protect_chunk", crash_on_third)
    code, _, err = cli("protect", "--data", data, "--out", tmp_path / "p", *TINY, "--keep-noise")
    assert code == 1 and "simulated crash" in err
    assert not (tmp_path / "p" / "manifest.json").exists()  # looks incomplete, not done
    code, _, err = cli("protect", "--data", data, "--out", tmp_path / "p", *TINY, "--keep-noise")
    assert code == 1 and "--resume" in error_line(err)
    code, _, err = cli("protect", "--data", data, "--out", tmp_path / "p", *TINY, "--resume", "--seed", "9")
    assert code == 1 and "other settings" in error_line(err)

    calls["n"] = 0
    code, _, err = cli("protect", "--data", data, "--out", tmp_path / "p", *TINY, "--keep-noise", "--resume")
    assert code == 0, err
    assert calls["n"] == 1  # only the missing shard was regenerated
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["protection"]["resumed"] is True and not (tmp_path / "p" / "_staging").exists()
    resumed = load_dataset(str(tmp_path / "p"))

    monkeypatch.undo()
    code, _, err = cli("protect", "--data", data, "--out", tmp_path / "fresh", *TINY, "--keep-noise")
    assert code == 0, err
    assert np.array_equal(load_dataset(str(tmp_path / "fresh")).noise, resumed.noise)
    code, _, err = cli("protect", "--data", data, "--out", tmp_path / "p", *TINY, "--keep-noise", "--resume")
    assert code == 0 and "already complete" in err
