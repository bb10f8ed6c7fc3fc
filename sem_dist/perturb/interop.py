"""Noise other tools can read, and noise from other tools applied to our datasets.

Out (``sem-dist export --format``):
- ``npz``: a NumPy ``.npz`` (no pickles inside): ``images`` uint8 [N, C, H, W] (the dataset's images as
  stored, i.e. protected), ``labels`` int64 [N], ``ids`` str [N], ``classes`` str [K], ``layout`` "NCHW"
  and, when the noise is known, ``noise`` int8 [N, C, H, W] in grey levels, ``rho_u`` (float, [0,1] units)
  and ``method``.
- ``pickle-int8``: the pickled int8 NumPy array [N, C, H, W] in grey levels that the official REM/SEM
  training scripts load with ``--noise-path`` (they add it to the uint8 images and clip to 0..255).

In (``sem-dist import-noise``): ``.npz`` (key ``noise``; ``ids`` and ``rho_u`` used when present), ``.npy``,
or a pickle read through the restricted unpickler of ``cifar.py`` (nothing but NumPy arrays can be built, no
code runs). Integer arrays are grey levels; float arrays are [0,1] pixel units (δ, rounded to round(255·δ)).
Rows follow the dataset's id order, or the file's ``ids``. The noise must fit the declared radius and the
dataset's count and image shape; the result is a protected canonical dataset (manifest written last).
"""
from __future__ import annotations

import hashlib
import io
import pickle
import pickletools
import posixpath
from dataclasses import dataclass

import numpy as np

from ..data.arrays import ArrayDataset
from ..data.canonical import DatasetWriter, Manifest
from ..data.convert import default_shard_rows, new_manifest
from ..data.output import check_not_nested, prepare_output
from ..data.records import BadRecordPolicy, Chunk, rebatch
from ..data.sources.cifar import restricted_unpickle
from ..data.sources.registry import load_dataset, open_split, parse_spec
from ..data.sources.split import source_record
from ..data.storage import DataError, Location, StorageOptions, open_location
from .algorithm4 import apply_noise, max_level

EXPORT_FORMATS = ("png", "npz", "pickle-int8")
PICKLE_MAGIC = b"\x80"


def file_location(uri: str, storage: StorageOptions | None) -> tuple[Location, str]:
    """(folder, file name) of a file URI."""
    parent, name = posixpath.split(uri.rstrip("/"))
    if not name:
        raise DataError(f"{uri}: not a file name")
    return open_location(parent or ".", storage), name


def protection_radius(data: ArrayDataset) -> float | None:
    protection = (data.meta.get("manifest") or {}).get("protection") or {}
    return (protection.get("config") or {}).get("budget", {}).get("rho_u", protection.get("rho_u"))


def protection_method(data: ArrayDataset) -> str | None:
    return ((data.meta.get("manifest") or {}).get("protection") or {}).get("method")


# ---- out ------------------------------------------------------------------------------------------------

def npz_bytes(data: ArrayDataset) -> bytes:
    arrays = {"images": data.images, "labels": data.labels, "ids": np.asarray(data.ids, dtype=str),
              "classes": np.asarray(data.classes, dtype=str), "layout": np.asarray("NCHW")}
    if data.noise is not None:
        arrays["noise"] = data.noise
    if protection_radius(data) is not None:
        arrays["rho_u"] = np.asarray(float(protection_radius(data)))
    if protection_method(data):
        arrays["method"] = np.asarray(protection_method(data))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def pickle_int8_bytes(noise: np.ndarray) -> bytes:
    """Protocol 2 with numpy's pre-2.0 module name (``numpy.core``), so both NumPy 1.x — what the official
    scripts run — and NumPy 2 load it."""
    data = pickle.dumps(np.ascontiguousarray(noise, dtype=np.int8), protocol=2)
    out, last = [], 0
    for op, arg, pos in pickletools.genops(data):
        if op.name == "GLOBAL" and arg.startswith("numpy._core."):
            out += [data[last:pos], b"c" + arg.replace("numpy._core.", "numpy.core.", 1).replace(" ", "\n").encode()
                    + b"\n"]
            last = pos + 1 + len(arg) + 1  # opcode, "module name" with the space as a newline, newline
    return b"".join(out) + data[last:]


def export_arrays(uri: str, dest: str, fmt: str, clean: str | None = None,
                  storage: StorageOptions | None = None) -> dict:
    """Write ``uri`` (noise from the stored column, or as ``uri`` − ``clean``) as ``npz`` or
    ``pickle-int8`` to the file ``dest``; refuses to replace an existing file."""
    from ..victims.poisoning import NEEDS_ORIGINALS, attach_clean_originals

    data = load_dataset(uri, storage=storage)
    if clean:
        data = attach_clean_originals(data, load_dataset(clean, storage=storage))
    folder, name = file_location(dest, storage)
    if folder.exists(name):
        raise DataError(f"{folder.child(name).display} already exists; choose a new file name")
    if fmt == "npz":
        payload = npz_bytes(data)
    elif fmt == "pickle-int8":
        if data.noise is None:
            raise DataError(f"{uri}: --format pickle-int8 needs the noise, but " + NEEDS_ORIGINALS.replace(
                "sem-dist evaluate --clean", "sem-dist export --clean"))
        payload = pickle_int8_bytes(data.noise)
    else:
        raise DataError(f"unknown export format {fmt!r}; choose {', '.join(EXPORT_FORMATS)}")
    folder.write_bytes(name, payload)
    return {"count": len(data), "format": fmt, "file": folder.child(name).display, "bytes": len(payload),
            "has_noise": data.noise is not None}


# ---- in -------------------------------------------------------------------------------------------------

@dataclass
class NoiseFile:
    array: np.ndarray  # as found in the file
    ids: list[str] | None
    rho_u: float | None  # radius the file declares ([0,1] units)
    format: str  # npz | npy | pickle
    where: str  # redacted URI, for messages
    sha256: str


def read_noise_file(uri: str, storage: StorageOptions | None = None) -> NoiseFile:
    folder, name = file_location(uri, storage)
    where = folder.child(name).display
    raw = folder.read_bytes(name)
    digest = hashlib.sha256(raw).hexdigest()
    ids = rho = None
    if raw[:4] == b"PK\x03\x04":  # a zip: .npz
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                if "noise" not in z.files:
                    raise DataError(f"{where}: no 'noise' array in this .npz (has {', '.join(z.files)})")
                array = z["noise"]
                ids = [str(i) for i in z["ids"]] if "ids" in z.files else None
                rho = float(z["rho_u"]) if "rho_u" in z.files else None
        except DataError:
            raise
        except Exception as exc:  # object arrays (need pickles), corrupt zips
            raise DataError(f"{where}: not a readable .npz ({type(exc).__name__}: {str(exc)[:80]})") from None
        fmt = "npz"
    elif raw[:6] == b"\x93NUMPY":
        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except Exception as exc:
            raise DataError(f"{where}: not a readable .npy ({type(exc).__name__}: {str(exc)[:80]})") from None
        fmt = "npy"
    elif raw[:1] == PICKLE_MAGIC:
        array = restricted_unpickle(raw, where, "noise pickle")
        fmt = "pickle"
    else:
        raise DataError(f"{where}: not an .npz, .npy or pickle file")
    if not isinstance(array, np.ndarray):
        raise DataError(f"{where}: expected a NumPy array of noise, found {type(array).__name__}")
    return NoiseFile(array, ids, rho, fmt, where, digest)


def noise_levels(nf: NoiseFile) -> tuple[np.ndarray, str]:
    """The file's noise as int32 grey levels and the units it was read in."""
    a = nf.array
    if a.dtype.kind in "iu":
        return a.astype(np.int32), "grey levels"
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise DataError(f"{nf.where}: the noise holds NaN or infinite values")
        return np.rint(a.astype(np.float64) * 255.0).astype(np.int32), "[0,1] pixel units"
    raise DataError(f"{nf.where}: noise dtype {a.dtype} is neither integer (grey levels) nor float ([0,1] units)")


def align(nf: NoiseFile, levels: np.ndarray, data: ArrayDataset) -> tuple[np.ndarray, str, str]:
    """Noise in the dataset's row order and NCHW layout: (noise, matched_by, layout)."""
    n, shape = len(data), data.images.shape[1:]
    c, h, w = shape
    if levels.ndim != 4 or levels.shape[1:] not in (shape, (h, w, c)):
        raise DataError(f"{nf.where}: noise has shape {list(levels.shape)}; the dataset needs [{n}, {c}, {h}, {w}] "
                        f"(NCHW) or [{n}, {h}, {w}, {c}] (NHWC)")
    layout = "NCHW" if levels.shape[1:] == shape else "NHWC"
    if layout == "NHWC":
        levels = levels.transpose(0, 3, 1, 2)
    if len(levels) != n:
        raise DataError(f"{nf.where}: noise has {len(levels)} samples, the dataset {n}")
    if nf.ids is None:
        return levels, "row order", layout
    if len(nf.ids) != len(levels):
        raise DataError(f"{nf.where}: {len(nf.ids)} ids for {len(levels)} noise samples")
    where = {i: k for k, i in enumerate(nf.ids)}
    if len(where) != len(nf.ids):
        raise DataError(f"{nf.where}: repeated ids")
    missing = next((i for i in data.ids if i not in where), None)
    if missing is not None:
        raise DataError(f"{nf.where}: no noise for dataset id {missing!r}")
    return levels[[where[i] for i in data.ids]], "ids", layout


def check_radius(noise: np.ndarray, rho_u: float, ids: list[str], where: str, units: str) -> None:
    """Refuse noise beyond ±floor(255·ρ_u) grey levels, naming the first offending sample and value."""
    limit = max_level(rho_u)
    over = np.abs(noise).reshape(len(noise), -1).max(axis=1) > limit
    if over.any():
        k = int(np.argmax(over))
        flat = int(np.argmax(np.abs(noise[k]).reshape(-1)))
        value = int(noise[k].reshape(-1)[flat])
        hint = " (float noise is read in [0,1] pixel units; store grey levels as integers)" \
            if units != "grey levels" else ""
        raise DataError(f"{where}: sample {ids[k]!r} (row {k}) has noise {value} grey levels, beyond the radius "
                        f"ρ_u = {limit}/255{hint}")


def import_noise(data_uri: str, noise_uri: str, out_uri: str, rho_u: float | None = None, keep_noise: bool = False,
                 overwrite: bool = False, storage: StorageOptions | None = None) -> Manifest:
    nf = read_noise_file(noise_uri, storage)
    sp = open_split(data_uri, None, storage)
    data = load_dataset(data_uri, storage=storage)
    if data.noise is not None or (sp.manifest and sp.manifest.protection):
        raise DataError(f"{sp.display}: already protected; import noise onto the clean dataset")
    out = open_location(out_uri, storage)
    check_not_nested(sp.location, out, "--data", "--out")
    prepare_output(out, "--out", overwrite=overwrite)
    declared = rho_u if rho_u is not None else nf.rho_u if nf.rho_u is not None else 8 / 255
    levels, units = noise_levels(nf)
    noise, matched_by, layout = align(nf, levels, data)
    check_radius(noise, declared, data.ids, nf.where, units)
    noise = noise.astype(np.int8)
    protected = apply_noise(data.images, noise)
    effective = (protected.astype(np.int16) - data.images).astype(np.int8)  # what survives clipping to 0..255

    from .algorithm4 import noise_stats

    writer = DatasetWriter(out)
    writer.clear()
    rows = max(s.rows for s in sp.manifest.shards) if sp.manifest else default_shard_rows(*data.images.shape[1:])
    shards = []
    chunk = Chunk(list(data.ids), protected, data.labels, sp.display, effective)
    for i, part in enumerate(rebatch([chunk], rows)):
        shards.append(writer.write_shard(i, part, part.noise if keep_noise else None))
    protection = {"method": "imported", "rho_u": declared, "noise": noise_stats(effective),
                  "imported": {"file": nf.where, "sha256": nf.sha256, "format": nf.format, "units": units,
                               "layout": layout, "matched_by": matched_by, "declared_rho_u": nf.rho_u,
                               "clipped_values": int(np.count_nonzero(effective != noise))}}
    manifest = new_manifest(sp, shards, data.images.shape[1:], source_record(sp, parse_spec(data_uri).options),
                            BadRecordPolicy("fail"), protection=protection, noise_column=keep_noise)
    writer.commit(manifest)
    return manifest
