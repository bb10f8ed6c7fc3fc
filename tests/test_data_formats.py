"""Sources: digits, MNIST IDX, CIFAR python batches (restricted unpickler), image folders and the mode policy."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from sem_dist.data import load_dataset
from sem_dist.data.sources.cifar import restricted_load
from sem_dist.data.storage import DataError


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_digits_convert_round_trip(tmp_path, cli, digits):
    code, out, _ = cli("convert", "digits", tmp_path / "d", "--shard-rows", "500")
    assert code == 0 and "train: 1437 images" in out and "test: 360 images" in out
    for split, ref in zip(("train", "test"), digits):
        got = load_dataset(str(tmp_path / "d"), split)
        assert got.ids == ref.ids and np.array_equal(got.images, ref.images) and np.array_equal(got.labels, ref.labels)
        assert got.classes == ref.classes and got.noise is None
    manifest = json.loads((tmp_path / "d" / "train" / "manifest.json").read_text())
    assert manifest["count"] == 1437 and [s["rows"] for s in manifest["shards"]] == [500, 500, 437]
    assert manifest["source"] == {"uri": "digits?split=train", "split": "train", "options": {}}
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])


# ---- MNIST ---------------------------------------------------------------------------------------------

def idx_bytes(arr: np.ndarray) -> bytes:
    return b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_mnist(folder, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        arrays[prefix] = (images, labels)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("kind,layout,gz", [("mnist", "MNIST/raw", True), ("fashion-mnist", "", False)])
def test_mnist_idx_round_trip(tmp_path, cli, kind, layout, gz):
    arrays = write_mnist(tmp_path / "src" / layout if layout else tmp_path / "src", gz=gz)
    code, out, err = cli("convert", f"{kind}:{tmp_path / 'src'}", tmp_path / "out")
    assert code == 0, err
    for split, prefix in (("train", "train"), ("test", "t10k")):
        got = load_dataset(str(tmp_path / "out" / split))
        images, labels = arrays[prefix]
        assert np.array_equal(got.images[:, 0], images) and np.array_equal(got.labels, labels)
        assert got.ids[0] == f"{kind}-{split}-00000" and len(got.classes) == 10


def test_mnist_truncated_file_is_named(tmp_path, cli):
    write_mnist(tmp_path / "src", gz=False)
    path = tmp_path / "src" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    code, _, err = cli("convert", f"mnist:{tmp_path / 'src'}", tmp_path / "out")
    assert code == 1 and "train-images-idx3-ubyte" in error_line(err) and "truncated" in err
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()


# ---- CIFAR ---------------------------------------------------------------------------------------------

def write_cifar10(folder, per_batch=3, seed=0):
    """Tiny batches shaped like the official files: Python-2 style bytes keys, protocol 2 pickles."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        lab = [int(v) for v in rng.integers(0, 10, per_batch)]
        (folder / name).write_bytes(pickle.dumps({b"batch_label": b"x", b"labels": lab, b"data": data,
                                                  b"filenames": [b"f.png"] * per_batch}, protocol=2))
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    names = [f"class{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2))
    return np.concatenate(images[:5]), np.concatenate(labels[:5]), images[5], np.asarray(labels[5])


def test_cifar10_round_trip(tmp_path, cli):
    train_x, train_y, test_x, test_y = write_cifar10(tmp_path / "c" / "cifar-10-batches-py")
    code, _, err = cli("convert", f"cifar10:{tmp_path / 'c'}", tmp_path / "out")
    assert code == 0, err
    train, test = load_dataset(str(tmp_path / "out"), "train"), load_dataset(str(tmp_path / "out"), "test")
    assert np.array_equal(train.images, train_x) and np.array_equal(train.labels, train_y)
    assert np.array_equal(test.images, test_x) and np.array_equal(test.labels, test_y)
    assert train.classes == [f"class{i}" for i in range(10)] and len(set(train.ids)) == 15


def test_cifar100_round_trip(tmp_path, cli):
    rng = np.random.default_rng(1)
    folder = tmp_path / "c100"
    folder.mkdir()
    ref = {}
    for split in ("train", "test"):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, 4)]
        (folder / split).write_bytes(pickle.dumps({"data": data, "fine_labels": fine, "coarse_labels": [0] * 4}))
        ref[split] = (data.reshape(-1, 3, 32, 32), fine)
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    assert cli("convert", f"cifar100:{folder}", tmp_path / "out")[0] == 0
    got = load_dataset(str(tmp_path / "out" / "test"))
    assert np.array_equal(got.images, ref["test"][0]) and got.labels.tolist() == ref["test"][1]
    assert got.classes[99] == "c99"


class _Payload:
    """Unpickling this would run os.system; the restricted unpickler must refuse it first."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_without_running(tmp_path, cli):
    write_cifar10(tmp_path / "c")
    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2], b"x": _Payload(marker)}
    (tmp_path / "c" / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    code, _, err = cli("convert", f"cifar10:{tmp_path / 'c'}", tmp_path / "out")
    line = error_line(err)
    assert code == 1 and "data_batch_3" in line and "refused" in line and "system" in line
    assert not marker.exists()
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()
    with pytest.raises(DataError, match="refused to load builtins.eval"):
        restricted_load(b"cbuiltins\neval\n(S'1+1'\ntR.", "inline")


def test_cifar_garbage_bytes(tmp_path, cli):
    write_cifar10(tmp_path / "c")
    (tmp_path / "c" / "test_batch").write_bytes(b"\x80\x02not a pickle")
    code, _, err = cli("convert", f"cifar10:{tmp_path / 'c'}?split=test", tmp_path / "out")
    assert code == 1 and "test_batch" in error_line(err)


# ---- image folders and the mode policy ----------------------------------------------------------------

def save(img: Image.Image, path, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


def rgb(seed, size=(8, 8)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


def test_imagefolder_modes_and_options(tmp_path, cli):
    root = tmp_path / "faces"
    save(rgb(0), root / "alice" / "a.png")
    save(rgb(1).convert("L"), root / "alice" / "gray.png")  # grayscale in an RGB set: replicated
    save(rgb(2).convert("P", palette=Image.ADAPTIVE), root / "bob" / "pal.png")  # palette: expanded
    rgba = rgb(3).convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited over black
    save(rgba, root / "bob" / "clear.png")
    save(rgb(4).convert("CMYK"), root / "carol" / "c.jpg", "JPEG")
    (root / "carol" / "notes.txt").write_text("not an image")
    save(rgb(5), root / "dave" / "d.png")

    code, _, err = cli("convert", f"imagefolder:{root}?classes=3", tmp_path / "out")
    assert code == 0, err
    assert "ignored 1 file" in err and "notes.txt" in err
    got = load_dataset(str(tmp_path / "out"))
    assert got.classes == ["alice", "bob", "carol"] and got.images.shape == (5, 3, 8, 8)
    by_id = dict(zip(got.ids, got.images))
    assert np.array_equal(by_id["alice/a.png"], np.asarray(rgb(0)).transpose(2, 0, 1))
    gray = np.asarray(rgb(1).convert("L"))
    assert all(np.array_equal(by_id["alice/gray.png"][c], gray) for c in range(3))
    pal = rgb(2).convert("P", palette=Image.ADAPTIVE)
    assert np.array_equal(by_id["bob/pal.png"], np.asarray(pal.convert("RGB")).transpose(2, 0, 1))
    assert not by_id["bob/clear.png"].any()
    assert got.labels.tolist() == [0, 0, 1, 1, 2]

    code, _, err = cli("convert", f"imagefolder:{root}?size=4&mode=L", tmp_path / "small")
    assert code == 0, err
    assert load_dataset(str(tmp_path / "small")).images.shape == (6, 1, 4, 4)


@pytest.mark.parametrize("make,expect", [
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n garbage"), "undecodable"),
    (lambda p: save(Image.fromarray(np.full((8, 8), 40000, np.uint16)), p), "16/32-bit"),
    (lambda p: save(rgb(9, (9, 8)), p), "mixed sizes"),
])
def test_imagefolder_bad_record_fail_or_skip(tmp_path, cli, make, expect):
    root = tmp_path / "src"
    for i in range(3):
        save(rgb(i), root / "k" / f"ok{i}.png")
    make(root / "k" / "zz-bad.png")
    code, _, err = cli("convert", f"imagefolder:{root}", tmp_path / "out")
    line = error_line(err)
    assert code == 1 and "k/zz-bad.png" in line and expect in line
    assert not (tmp_path / "out" / "manifest.json").exists()

    code, out, err = cli("convert", f"imagefolder:{root}", tmp_path / "out2", "--on-bad-record", "skip")
    assert code == 0 and "1 bad records skipped" in out
    manifest = json.loads((tmp_path / "out2" / "manifest.json").read_text())
    assert [s["id"] for s in manifest["skipped"]] == ["k/zz-bad.png"] and manifest["count"] == 3


def test_imagefolder_file_without_class_and_empty(tmp_path, cli):
    root = tmp_path / "src"
    save(rgb(0), root / "stray.png")
    code, _, err = cli("convert", f"imagefolder:{root}", tmp_path / "out")
    assert code == 1 and "stray.png" in error_line(err) and "no label" in err
    code, _, err = cli("convert", f"imagefolder:{root}", tmp_path / "out", "--on-bad-record", "skip")
    assert code == 1 and "empty" in error_line(err)
