"""Noise other tools can read (export --format npz | pickle-int8) and noise from them (import-noise): exact
round trips, and refusals of noise that is too large, the wrong shape, or a pickle that is not an array."""
from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from sem_dist.data import load_dataset, save_dataset
from test_victims_options import noisy


@pytest.fixture(scope="module")
def stored(tiny_digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    train, _ = tiny_digits
    save_dataset(train, str(root / "clean"))
    save_dataset(noisy(train), str(root / "protected"))  # noise column stored, as with --keep-noise
    return root


def _noise_of(uri) -> np.ndarray:
    return load_dataset(str(uri)).noise


def test_npz_round_trip_exact(stored, tmp_path, cli):
    code, out, err = cli("export", stored / "protected", tmp_path / "n.npz", "--format", "npz")
    assert code == 0, err
    with np.load(tmp_path / "n.npz", allow_pickle=False) as z:
        original = load_dataset(str(stored / "protected"))
        np.testing.assert_array_equal(z["images"], original.images)  # NCHW uint8
        np.testing.assert_array_equal(z["noise"], original.noise)
        assert z["noise"].dtype == np.int8 and list(z["ids"]) == original.ids and str(z["layout"]) == "NCHW"
    code, out, err = cli("import-noise", "--data", stored / "clean", "--noise", tmp_path / "n.npz",
                         "--out", tmp_path / "imported", "--keep-noise")
    assert code == 0, err
    back = load_dataset(str(tmp_path / "imported"))
    np.testing.assert_array_equal(back.noise, original.noise)
    np.testing.assert_array_equal(back.images, original.images)
    imported = back.meta["manifest"]["protection"]["imported"]
    assert imported["format"] == "npz" and imported["matched_by"] == "ids" and imported["clipped_values"] == 0


def test_pickle_int8_round_trip_and_official_loader(stored, tmp_path, cli):
    code, _, err = cli("export", stored / "protected", tmp_path / "noise.pkl", "--format", "pickle-int8")
    assert code == 0, err
    raw = (tmp_path / "noise.pkl").read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw  # NumPy 1.x (the official scripts') can resolve it
    official = pickle.loads(raw)  # what their --noise-path loader does (our own file, so this is safe here)
    assert isinstance(official, np.ndarray) and official.dtype == np.int8
    np.testing.assert_array_equal(official, _noise_of(stored / "protected"))
    code, out, err = cli("import-noise", "--data", stored / "clean", "--noise", tmp_path / "noise.pkl",
                         "--out", tmp_path / "imported", "--keep-noise")
    assert code == 0, err
    assert "matched by row order" in out
    np.testing.assert_array_equal(_noise_of(tmp_path / "imported"), official)


def test_export_without_noise_needs_clean(stored, tmp_path, cli):
    bare = tmp_path / "bare"
    protected = load_dataset(str(stored / "protected"))
    save_dataset(protected.with_images(protected.images, None), str(bare))  # protected without --keep-noise
    code, _, err = cli("export", bare, tmp_path / "n.pkl", "--format", "pickle-int8")
    assert code == 1 and "--clean" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("export", bare, tmp_path / "n.pkl", "--format", "pickle-int8", "--clean", stored / "clean")
    assert code == 0, err
    np.testing.assert_array_equal(pickle.loads((tmp_path / "n.pkl").read_bytes()), protected.noise)
    code, _, err = cli("export", bare, tmp_path / "n.pkl", "--format", "pickle-int8", "--clean", stored / "clean")
    assert code == 1 and "already exists" in err  # never replaced


def _import(cli, stored, tmp_path, payload: bytes, name="n.npy", *extra):
    path = tmp_path / name
    path.write_bytes(payload)
    code, out, err = cli("import-noise", "--data", stored / "clean", "--noise", path, "--out", tmp_path / "out",
                         *extra)
    return code, err.strip().splitlines()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_over_radius_refused(stored, tmp_path, cli, tiny_digits):
    n = len(tiny_digits[0])
    noise = np.zeros((n, 1, 32, 32), np.int8)
    noise[7, 0, 3, 4] = -9
    code, err = _import(cli, stored, tmp_path, _npy(noise))
    assert code == 1 and len(err) == 1
    assert "n.npy" in err[0] and "'digits-" in err[0] and "(row 7)" in err[0] and "-9 grey levels" in err[0]
    assert not (tmp_path / "out").exists()
    code, err = _import(cli, stored, tmp_path, _npy(noise), "n.npy", "--rho-u", "9/255")  # a larger declared radius
    assert code == 0, err
    floats = np.full((n, 1, 32, 32), 8.0, np.float32)  # grey levels written as floats: read as [0,1] units
    code, err = _import(cli, stored, tmp_path, _npy(floats), "f.npy", "--overwrite")
    assert code == 1 and "store grey levels as integers" in err[0]


def test_shape_and_count_mismatch_refused(stored, tmp_path, cli, tiny_digits):
    n = len(tiny_digits[0])
    code, err = _import(cli, stored, tmp_path, _npy(np.zeros((n, 1, 30, 30), np.int8)))
    assert code == 1 and len(err) == 1 and "shape [40, 1, 30, 30]" in err[0] and "[40, 1, 32, 32]" in err[0]
    code, err = _import(cli, stored, tmp_path, _npy(np.zeros((n - 1, 1, 32, 32), np.int8)))
    assert code == 1 and "39 samples, the dataset 40" in err[0]
    assert not (tmp_path / "out").exists()


class _Evil:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_code_refused_without_running_it(stored, tmp_path, cli):
    evil = _Evil()
    evil.marker = tmp_path / "pwned"
    code, err = _import(cli, stored, tmp_path, pickle.dumps(evil), "evil.pkl")
    assert code == 1 and len(err) == 1 and "refused to load" in err[0] and "system" in err[0]
    assert not evil.marker.exists()
    code, err = _import(cli, stored, tmp_path, pickle.dumps({"noise": [1, 2]}), "dict.pkl")
    assert code == 1 and "expected a NumPy array of noise, found dict" in err[0]


def test_nhwc_and_id_matching(stored, tmp_path, cli, tiny_digits):
    protected = load_dataset(str(stored / "protected"))
    order = np.random.default_rng(1).permutation(len(protected))
    buf = io.BytesIO()
    np.savez(buf, noise=protected.noise[order].transpose(0, 2, 3, 1), ids=np.asarray(protected.ids)[order])
    code, err = _import(cli, stored, tmp_path, buf.getvalue(), "perm.npz", "--keep-noise")
    assert code == 0, err
    back = load_dataset(str(tmp_path / "out"))
    np.testing.assert_array_equal(back.noise, protected.noise)
    assert back.meta["manifest"]["protection"]["imported"]["layout"] == "NHWC"
    code, _, err = cli("import-noise", "--data", stored / "protected", "--noise", tmp_path / "perm.npz",
                       "--out", tmp_path / "again")
    assert code == 1 and "already protected" in err
