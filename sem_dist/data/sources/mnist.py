"""MNIST and Fashion-MNIST from IDX files, gzipped or not, in a flat folder or torchvision's
``<DIR>/MNIST/raw`` / ``<DIR>/FashionMNIST/raw`` layout. Images stay 28×28 grayscale (the user's data,
unchanged; the models and transforms take any size)."""
from __future__ import annotations

import gzip
import struct

import numpy as np

from ..records import BadRecordPolicy
from ..storage import DataError, Location
from .split import Source, Split, chunked

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASSES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}
SUBDIRS = {"mnist": ("", "raw", "MNIST/raw"), "fashion-mnist": ("", "raw", "FashionMNIST/raw")}


def parse_idx(data: bytes, where: str, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes with ``ndim`` dimensions (magic 0x0000 08 ndim, big-endian sizes)."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{where}: corrupt gzip data ({exc})") from None
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise DataError(f"{where}: not an IDX file of unsigned bytes with {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{where}: truncated or oversized ({body.size} bytes of data, header says {dims})")
    return body.reshape(dims)


class MnistSource(Source):
    def __init__(self, kind: str, location: Location, display: str, options: dict[str, str]):
        super().__init__(display, options)
        self.kind, self.location = kind, location
        self.folder = self._find_folder()

    def _find_folder(self) -> Location:
        for sub in SUBDIRS[self.kind]:
            folder = self.location.child(sub) if sub else self.location
            names = folder.names()
            if any(n.startswith(FILES["train"][0]) or n.startswith(FILES["test"][0]) for n in names):
                return folder
        raise DataError(f"{self.display}: no {FILES['train'][0]}[.gz] here or under "
                        f"{', '.join(s for s in SUBDIRS[self.kind] if s)}")

    def split_names(self) -> list[str]:
        return ["train", "test"]

    def _file(self, stem: str) -> str:
        names = self.folder.names()
        for name in (stem, stem + ".gz"):
            if name in names:
                return name
        raise DataError(f"{self.folder.display}: missing {stem}[.gz]")

    def split(self, name: str) -> Split:
        image_file, label_file = (self._file(stem) for stem in FILES[name])
        where = f"{self.folder.display}/{image_file}"

        def read(policy: BadRecordPolicy):
            images = parse_idx(self.folder.read_bytes(image_file), where, 3)
            labels = parse_idx(self.folder.read_bytes(label_file), f"{self.folder.display}/{label_file}", 1)
            if len(labels) != len(images):
                raise DataError(f"{where}: {len(images)} images but {len(labels)} labels in {label_file}")
            ids = [f"{self.kind}-{name}-{i:05d}" for i in range(len(images))]
            return chunked(ids, images[:, None], labels.astype(np.int64), where)

        return Split(name, f"{self.display}?split={name}", list(CLASSES[self.kind]), read, location=self.folder)
