"""A dataset → a PNG ImageFolder tree a person can browse: ``DIR/<class>/<id>.png``.

Files are written under ``DIR/_staging`` and each class folder is moved into place when all are written;
``export.json`` (counts, classes, the source manifest's redacted source) is written last, so a tree
without it is an interrupted export.
"""
from __future__ import annotations

import hashlib
import json
import re

from ..runtime.progress import bar
from .canonical import STAGING
from .images import encode_png
from .output import check_not_nested
from .records import BadRecordPolicy
from .sources.registry import open_split
from .storage import DataError, StorageOptions, open_location

MARKER = "export.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file/folder name for ``text``: unsafe characters replaced, plus a short hash of the original
    when anything was replaced, so distinct ids (``a/b`` and ``a_b``) never collide."""
    clean = _UNSAFE.sub("_", text).strip("._") or "_"
    if clean == text:
        return text
    return f"{clean}-{hashlib.blake2b(text.encode(), digest_size=4).hexdigest()}"


def export_imagefolder(uri: str, dest: str, storage: StorageOptions | None = None) -> dict:
    sp = open_split(uri, None, storage)
    out = open_location(dest, storage)
    check_not_nested(sp.location, out, "URI", "DIR")
    if out.names():
        raise DataError(f"DIR {out.display} is not empty; choose an empty or new folder")
    staging = out.child(STAGING)
    folders = [safe_name(c) for c in sp.classes]
    if len(set(folders)) != len(folders):
        raise DataError(f"{sp.display}: class names map to the same folder name")
    count = 0
    with bar(sp.manifest.count if sp.manifest else None, f"export {sp.display}", unit="img") as pb:
        for chunk in sp.records(BadRecordPolicy("fail")):
            for rid, image, label in zip(chunk.ids, chunk.images, chunk.labels):
                staging.write_bytes(f"{folders[label]}/{safe_name(rid)}.png", encode_png(image))
            count += len(chunk)
            pb.update(len(chunk))
    for folder in staging.names():
        out.move(f"{STAGING}/{folder}", folder)
    out.remove(STAGING)
    record = {"count": count, "classes": dict(zip(sp.classes, folders)), "source": sp.display,
              "manifest_source": (sp.manifest.source if sp.manifest else None)}
    out.write_bytes(MARKER, (json.dumps(record, indent=2) + "\n").encode())
    return record
