"""Sources at scale: image folders, Hugging Face-style Parquet and WebDataset tars, read in this process
and through Ray Data (real local Ray, loopback moto_server, real JPEG/PNG codecs)."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from sem_dist.data import load_dataset

WT = str(Path(__file__).resolve().parents[1])


def error_line(err: str) -> str:
    return [line for line in err.splitlines() if "error:" in line][-1]


def jpeg(seed: int, w: int, h: int) -> bytes:
    rng = np.random.default_rng(seed)
    # smooth content, so JPEG keeps it recognisable, plus noise
    base = np.linspace(0, 255, w * h * 3).reshape(h, w, 3) + rng.integers(0, 40, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png(seed: int, side: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def jpeg_tree(root, classes=("ant", "bee", "cow"), per_class=4, corrupt: str | None = None):
    """Mixed-size JPEGs (40–130 px a side), one class per folder; ``corrupt`` names a file to truncate."""
    sizes = [(40, 90), (130, 60), (75, 75), (101, 47), (64, 120)]
    for c, name in enumerate(classes):
        for i in range(per_class):
            w, h = sizes[(c + i) % len(sizes)]
            path = root / name / f"{i:02d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = jpeg(10 * c + i, w, h)
            path.write_bytes(data[:len(data) // 3] if f"{name}/{i:02d}.jpg" == corrupt else data)
    return root


def test_imagefolder_of_mixed_jpegs_through_ray_at_64(ray_cluster, tmp_path, cli):
    root = jpeg_tree(tmp_path / "tree")
    code, out, err = cli("convert", f"imagefolder:{root}?size=64", tmp_path / "ray", "--ray", "--shard-rows", "5")
    assert code == 0, err
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["count"] == 12 and (manifest["channels"], manifest["height"], manifest["width"]) == (3, 64, 64)
    assert manifest["source"]["resize"]["size"] == 64 and "centre" in manifest["source"]["resize"]["rule"]
    assert [s["rows"] for s in manifest["shards"]] and sum(s["rows"] for s in manifest["shards"]) == 12
    got = load_dataset(str(tmp_path / "ray"))
    assert got.classes == ["ant", "bee", "cow"]
    assert dict(zip(got.ids, got.labels.tolist())) == {f"{c}/{i:02d}.jpg": k for k, c in enumerate(got.classes)
                                                       for i in range(4)}
    # the in-process reader decodes and resizes the same files to the same pixels
    local = load_dataset(f"imagefolder:{root}?size=64")
    assert got.ids == local.ids and np.array_equal(got.images, local.images)
    assert got.images.std() > 10  # real image content survived the resize


def test_corrupt_jpeg_in_the_middle_on_ray(ray_cluster, tmp_path, cli):
    """--on-bad-record fail leaves nothing; skip lists the record; a killed convert --ray resumes."""
    root = jpeg_tree(tmp_path / "tree", corrupt="bee/01.jpg")
    code, _, err = cli("convert", f"imagefolder:{root}?size=32", tmp_path / "out", "--ray", "--shard-rows", "3")
    line = error_line(err)
    assert code == 1 and "'bee/01.jpg'" in line and "undecodable" in line
    out = tmp_path / "out"  # nothing half-written: no manifest, no shard outside the (removed) staging area
    assert not (out / "manifest.json").exists() and not list(out.glob("part-*"))

    code, out, err = cli("convert", f"imagefolder:{root}?size=32", tmp_path / "out", "--ray", "--on-bad-record",
                         "skip")
    assert code == 0 and "1 bad records skipped" in out, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["id"] for s in manifest["skipped"]] == ["bee/01.jpg"] and manifest["count"] == 11
    names = sorted(p.name for p in (tmp_path / "out").iterdir())  # shard K of unit (class folder) N
    assert names == ["manifest.json", "part-00000-00000.parquet", "part-00001-00000.parquet",
                     "part-00002-00000.parquet"] == ["manifest.json", *(s["name"] for s in manifest["shards"])]

    # a convert killed after its second unit resumes: the same bytes, finished units not written again
    args = ["-m", "sem_dist", "convert", f"imagefolder:{root}?size=32", str(tmp_path / "again"), "--ray",
            "--on-bad-record", "skip"]
    killed = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env={
        **os.environ, "PYTHONPATH": WT, "SEM_DIST_STOP_AT": "unit:2", "SEM_DIST_PROGRESS": "0",
        "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    recorded = sorted(p.name.split(".")[0] for p in (tmp_path / "again" / "_staging" / "done").iterdir())
    assert recorded == ["part-00000", "part-00001"] and not (tmp_path / "again" / "manifest.json").exists()
    left = {f"{u}-00000.parquet": (tmp_path / "again" / f"{u}-00000.parquet").stat().st_mtime_ns for u in recorded}
    code, _, err = cli(*args[2:])
    assert code == 1 and "pass --resume to continue it" in error_line(err)
    code, _, err = cli(*args[2:], "--resume")
    assert code == 0, err
    again = tmp_path / "again"
    assert sorted(p.name for p in again.iterdir()) == names  # no _staging left
    assert all((again / n).read_bytes() == (tmp_path / "out" / n).read_bytes() for n in names[1:])
    assert {n: (again / n).stat().st_mtime_ns for n in left} == left
    assert json.loads((again / "manifest.json").read_text())["shards"] == manifest["shards"]


# ---- Hugging Face-style Parquet -------------------------------------------------------------------------

def hf_parquet(path, images, labels, *, struct=True, image_col="image", label_col="label", ids=None, names=None,
               row_group_size=4):
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())]) if struct else pa.binary()
    values = [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)] if struct else images
    cols = {image_col: pa.array(values, image_type), label_col: pa.array(labels, pa.int64())}
    if ids is not None:
        cols = {"id": pa.array(ids, pa.string()), **cols}
    table = pa.table(cols)
    if names is not None:  # what `datasets` stores for a ClassLabel feature
        meta = {"info": {"features": {label_col: {"names": names, "_type": "ClassLabel"},
                                      image_col: {"_type": "Image"}}}}
        table = table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)


def test_hf_parquet_struct_and_bytes_columns_convert_and_round_trip(ray_cluster, tmp_path, cli, monkeypatch):
    hub = tmp_path / "hub"
    labels = [0, 2, 1, 2, 0, 1, 1]
    hf_parquet(hub / "data" / "train-00000-of-00002.parquet", [png(i) for i in range(4)], labels[:4],
               names=["cat", "dog", "eel"], row_group_size=2)
    hf_parquet(hub / "data" / "train-00001-of-00002.parquet", [png(i) for i in range(4, 7)], labels[4:],
               names=["cat", "dog", "eel"], row_group_size=2)
    hf_parquet(hub / "data" / "test-00000-of-00001.parquet", [png(9), png(10)], [1, 0], names=["cat", "dog", "eel"])

    # without a manifest the folder is not a canonical dataset, and the refusal says how to read it
    code, _, err = cli("convert", hub / "data", tmp_path / "nope")
    assert code == 1 and f"parquet:{hub / 'data'}" in error_line(err)

    code, out, err = cli("convert", f"parquet:{hub}", tmp_path / "canon")
    assert code == 0, err
    train = load_dataset(str(tmp_path / "canon" / "train"))
    assert train.classes == ["cat", "dog", "eel"] and train.labels.tolist() == labels
    assert train.ids[0] == "data/train-00000-of-00002.parquet#0" and len(set(train.ids)) == 7
    assert np.array_equal(train.images[5], np.asarray(Image.open(io.BytesIO(png(5)))).transpose(2, 0, 1))
    assert load_dataset(str(tmp_path / "canon" / "test")).labels.tolist() == [1, 0]

    # the Ray reader gives the same rows; files above UNIT_BYTES are split by row groups (here: every file,
    # 2 + 2 row groups), one unit each, so a big file spreads over the workers
    import sem_dist.data.sources.hfparquet as hfparquet

    monkeypatch.setattr(hfparquet, "UNIT_BYTES", 1)
    code, _, err = cli("convert", f"parquet:{hub}?split=train", tmp_path / "canon-ray", "--ray")
    assert code == 0, err
    ray_train = load_dataset(str(tmp_path / "canon-ray"))
    assert ray_train.ids == train.ids and np.array_equal(ray_train.images, train.images)
    shards = json.loads((tmp_path / "canon-ray" / "manifest.json").read_text())["shards"]
    assert [s["name"] for s in shards] == [f"part-{u:05d}-00000.parquet" for u in range(4)]

    # plain bytes, other column names (options), an id column, classes from the label statistics
    plain = tmp_path / "plain"
    hf_parquet(plain / "shard.parquet", [png(i) for i in range(5)], [3, 0, 3, 1, 2], struct=False,
               image_col="img", label_col="fine_label", ids=[f"s{i}" for i in range(5)])
    code, _, err = cli("convert", f"parquet:{plain}", tmp_path / "x")
    assert code == 1 and "no column(s) image, label" in error_line(err)
    code, _, err = cli("convert", f"parquet:{plain}?image=img&label=fine_label", tmp_path / "canon2")
    assert code == 0, err
    got = load_dataset(str(tmp_path / "canon2"))
    assert got.ids == [f"s{i}" for i in range(5)] and got.labels.tolist() == [3, 0, 3, 1, 2]
    assert got.classes == ["0", "1", "2", "3"]
    # classes=N keeps the first N classes (an ImageNet-100-style subset)
    code, _, err = cli("convert", f"parquet:{plain}?image=img&label=fine_label&classes=2", tmp_path / "canon3")
    assert code == 0, err
    assert load_dataset(str(tmp_path / "canon3")).ids == ["s1", "s3"]


# ---- WebDataset -------------------------------------------------------------------------------------------

def wds_tar(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_webdataset_tars_on_s3_convert_through_ray(ray_cluster, s3_env, cli):
    import s3fs

    endpoint, bucket = s3_env
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    expected = {}
    for shard in range(2):
        samples = []
        for j in range(5):
            key = f"{shard}{j:03d}"
            label = (shard + j) % 3
            image = {"jpg": jpeg(shard * 10 + j, 50 + 7 * j, 60)} if j % 2 else {"png": png(shard * 10 + j, 60)}
            samples.append((key, {**image, "cls": str(label).encode()}))
            expected[key] = label
        fs.pipe(f"{bucket}/wds/train-{shard:06d}.tar", wds_tar(samples))
    code, out, err = cli("convert", f"webdataset:s3://{bucket}/wds?size=48&classes=3", f"s3://{bucket}/canon",
                         "--ray", "--shard-rows", "4")
    assert code == 0, err
    got = load_dataset(f"s3://{bucket}/canon/train")
    assert dict(zip(got.ids, got.labels.tolist())) == expected and got.images.shape == (10, 3, 48, 48)
    local = load_dataset(f"webdataset:s3://{bucket}/wds?size=48&classes=3&split=train")
    assert local.ids == got.ids and np.array_equal(local.images, got.images)
    # classes discovered from the label members when not given
    assert load_dataset(f"webdataset:s3://{bucket}/wds?size=48&split=train").classes == ["0", "1", "2"]


# ---- protect / regenerate straight from these sources on Ray Data ----------------------------------------

TINY = ["--arch", "small_cnn", "--steps", "2", "--ku", "2", "--samples", "1", "--ka", "1", "--batch-size", "4",
        "--rho-a", "2/255", "--device", "cpu"]


def test_jpeg_folder_protected_at_64_on_ray_equals_in_process(ray_cluster, tmp_path, cli):
    """protect reads a mixed-size JPEG tree itself (no convert): Ray Data actors list, decode, resize to 64 px
    and protect one class folder each; the output equals the in-process protect of the same folder."""
    root = jpeg_tree(tmp_path / "tree")
    spec = f"imagefolder:{root}?size=64"
    for name, flags in {"local": [], "ray": ["--regen-actors", "2"]}.items():
        code, out, err = cli("protect", "--data", spec, "--out", tmp_path / name, *TINY, "--seed", "3",
                             "--keep-noise", "--shard-rows", "3", *flags)
        assert code == 0, err
    local = sorted((tmp_path / "local").glob("part-*.parquet"))
    assert [p.name for p in local] == [p.name for p in sorted((tmp_path / "ray").glob("part-*.parquet"))]
    assert len(local) == 6  # 3 class folders of 4 images, cut into shards of 3 within each folder
    assert all(p.read_bytes() == (tmp_path / "ray" / p.name).read_bytes() for p in local)
    m = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert (m["count"], m["channels"], m["height"], m["width"]) == (12, 3, 64, 64)
    assert m["source"]["resize"] == {"size": 64, "rule": m["source"]["resize"]["rule"]}
    assert "centre" in m["source"]["resize"]["rule"]
    regen = m["protection"]["regeneration"]
    assert regen["engine"] == "ray-data" and regen["actors"] == 2 and regen["images"] == 12
    got, clean = load_dataset(str(tmp_path / "ray")), load_dataset(spec)
    assert got.images.shape == (12, 3, 64, 64) and got.ids == clean.ids
    assert np.array_equal(got.clean_images(), clean.images)  # protected = clip(resized original + noise)
    assert 0 < np.abs(got.noise.astype(int)).max() <= 8  # ρ_u = 8/255


def generator_for(path, side: int, channels: int, classes: int):
    """An unfitted small-CNN SEM method checkpoint: enough for Algorithm 4 to run over data of that shape."""
    import torch

    from sem_dist.config import resolve_config
    from sem_dist.perturb.methods import get_method, method_state

    cfg = resolve_config("sem", side, overrides={"trainer.arch": "small_cnn", "solver.steps": 2, "solver.samples": 1})
    torch.save(method_state(get_method(cfg, classes, channels, side, torch.device("cpu"))), path)
    return path


def test_webdataset_on_s3_regenerated_on_ray_and_repeated_keys_refused(ray_cluster, s3_env, cli, tmp_path):
    import s3fs

    endpoint, bucket = s3_env
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    tars = [wds_tar([(f"k{s}{j}", {"jpg": jpeg(10 * s + j, 40 + 9 * j, 50), "cls": str(j % 3).encode()})
                     for j in range(4)]) for s in range(2)]
    for s, data in enumerate(tars):
        fs.pipe(f"{bucket}/wds/shard{s}.tar", data)
    gen = generator_for(tmp_path / "method.pt", 32, 3, 3)
    spec = f"webdataset:s3://{bucket}/wds?size=32&classes=3"
    for name, flags in {"local": [], "ray": ["--regen-actors", "2"]}.items():
        code, out, err = cli("regenerate", "--generator", gen, "--data", spec, "--out", f"s3://{bucket}/{name}",
                             "--device", "cpu", *flags)
        assert code == 0, err
    local = {p: fs.cat(p) for p in fs.glob(f"{bucket}/local/part-*")}
    assert len(local) == 2 and all(fs.cat(p.replace("/local/", "/ray/")) == v for p, v in local.items())
    assert load_dataset(f"s3://{bucket}/ray").images.shape == (8, 3, 32, 32)

    # a key that is in both tars: each tar is written by its own actor; the commit finds the repeat
    fs.pipe(f"{bucket}/wds/shard1.tar", wds_tar([("k02", {"jpg": jpeg(99, 40, 40), "cls": b"1"})]))
    code, _, err = cli("regenerate", "--generator", gen, "--data", spec, "--out", f"s3://{bucket}/dup",
                       "--device", "cpu", "--regen-actors", "2")
    assert code == 1 and "'k02'" in error_line(err) and "duplicate id" in error_line(err)
    assert not fs.exists(f"{bucket}/dup/manifest.json") and not fs.glob(f"{bucket}/dup/part-*")
