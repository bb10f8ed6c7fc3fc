"""Where datasets live: a filesystem and a path, built from a URI (local path, ``file://``, ``s3://``,
or any other fsspec protocol).

Credentials come from the standard AWS chain (env vars, shared config, instance role) or from the URI's
userinfo (``s3://KEY:SECRET@bucket/prefix``, percent-encoded). A custom S3 endpoint comes from
``--s3-endpoint`` or ``AWS_ENDPOINT_URL[_S3]``. Whatever the URI held, only :func:`redact_uri`'s form of
it is ever shown or recorded, so no key, token or signed query string reaches output, logs or manifests.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem


class DataError(ValueError):
    """Bad input or an unusable location; the message names the offending item and is safe to show."""


def redact_uri(uri: str) -> str:
    """``uri`` without userinfo, query string or fragment (they may carry keys, tokens or signatures)."""
    if "://" not in uri:
        return uri.split("?", 1)[0].split("#", 1)[0]
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def split_options(uri: str) -> tuple[str, str]:
    """``(uri without query, query)``; the query carries source options such as ``classes=100``."""
    base, _, query = uri.partition("?")
    return base, query


@dataclass(frozen=True)
class StorageOptions:
    """How to reach object storage; never holds secrets given on the command line (they go in the URI)."""

    s3_endpoint: str | None = None

    def endpoint(self) -> str | None:
        return self.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class Location:
    """A folder (or object prefix) on some filesystem. ``display`` is the redacted URI for messages."""

    fs: fsspec.AbstractFileSystem
    path: str
    display: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def child(self, *parts: str) -> "Location":
        return Location(self.fs, posixpath.join(self.path, *parts), posixpath.join(self.display, *parts))

    def exists(self, name: str = "") -> bool:
        target = self.child(name) if name else self
        with storage_errors(target):
            return self.fs.exists(target.path)

    def names(self) -> list[str]:
        """Entry names directly under this folder; [] when it does not exist."""
        with storage_errors(self):
            if not self.fs.exists(self.path):
                return []
            if not self.fs.isdir(self.path):
                raise DataError(f"{self.display} is a file, not a folder")
            return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.path, detail=False))

    def read_bytes(self, name: str) -> bytes:
        target = self.child(name)
        with storage_errors(target):
            return self.fs.cat_file(target.path)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Whole-or-nothing write: a local temp file renamed into place; on object stores a single PUT,
        which only becomes visible once complete."""
        target = self.child(name)
        with storage_errors(target):
            if self.is_local:
                os.makedirs(os.path.dirname(target.path), exist_ok=True)
                tmp = f"{target.path}.tmp-{uuid.uuid4().hex}"
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, target.path)
            else:
                self.fs.pipe_file(target.path, data)

    def move(self, src: str, dst: str) -> None:
        """Rename (local, atomic) or server-side copy then delete (object stores)."""
        a, b = self.child(src), self.child(dst)
        with storage_errors(a):
            if self.is_local:
                os.makedirs(os.path.dirname(b.path), exist_ok=True)
                os.replace(a.path, b.path)
            elif self.fs.isdir(a.path):  # a prefix: copy each object (prefixes are not objects), then delete
                for key in self.fs.find(a.path):
                    self.fs.copy(key, b.path + key[len(a.path):])
                self.fs.rm(a.path, recursive=True)
            else:
                self.fs.mv(a.path, b.path)

    def remove(self, name: str) -> None:
        target = self.child(name)
        with storage_errors(target):
            if self.fs.exists(target.path):
                self.fs.rm(target.path, recursive=True)

    def why_missing(self) -> str:
        """Why nothing is here, for messages: object stores report a missing bucket as such."""
        bucket = self.path.split("/", 1)[0]
        if "s3" in self.fs.protocol and bucket:
            with storage_errors(self):
                if not self.fs.exists(bucket):
                    return "bucket does not exist"
        return "nothing at this location"

    def contains(self, other: "Location") -> bool:
        """True when ``other`` is this folder or inside it (same filesystem)."""
        # same store: same filesystem type and endpoint (credentials may differ between the two URIs)
        endpoint = self.fs.storage_options.get("endpoint_url"), other.fs.storage_options.get("endpoint_url")
        if type(self.fs) is not type(other.fs) or endpoint[0] != endpoint[1]:
            return False
        mine, theirs = _canonical_path(self), _canonical_path(other)
        return theirs == mine or theirs.startswith(mine.rstrip("/") + "/")


def _canonical_path(loc: Location) -> str:
    return os.path.realpath(loc.path) if loc.is_local else loc.path.rstrip("/")


def open_location(uri: str, storage: StorageOptions | None = None) -> Location:
    """The folder ``uri`` names. A query string is not allowed here (source options are parsed earlier)."""
    storage = storage or StorageOptions()
    display = redact_uri(uri)
    if "?" in uri:
        raise DataError(f"{display}: unexpected query string in a storage location")
    options: dict = {}
    target = uri
    if "://" in uri:
        parts = urlsplit(uri)
        userinfo, _, host = parts.netloc.rpartition("@")
        if parts.scheme in ("s3", "s3a"):
            if userinfo:
                key, _, secret = userinfo.partition(":")
                options.update(key=unquote(key), secret=unquote(secret))
            if storage.endpoint():
                options["endpoint_url"] = storage.endpoint()
            # listings change under us while we write; a stale cache would hide or resurrect shards
            options.update(use_listings_cache=False, skip_instance_cache=True)
        elif userinfo:
            raise DataError(f"{display}: credentials in the URI are only supported for s3://")
        target = urlunsplit(("s3" if parts.scheme == "s3a" else parts.scheme, host, parts.path, "", ""))
    try:
        fs, path = fsspec.core.url_to_fs(target, **options)
    except (ImportError, ValueError) as exc:
        raise DataError(f"{display}: cannot open this location ({exc})") from None
    return Location(fs, path.rstrip("/") or path, display.rstrip("/") or display)


@contextlib.contextmanager
def storage_errors(loc: Location) -> Iterator[None]:
    """Turn filesystem/S3 failures into a one-line :class:`DataError` naming the redacted location."""
    try:
        yield
    except DataError:
        raise
    except FileNotFoundError as exc:
        reason = "bucket does not exist" if "bucket" in str(exc).lower() else "no such file or folder"
        raise DataError(f"{loc.display}: {reason}") from None
    except PermissionError:
        raise DataError(f"{loc.display}: access denied (check the credentials and permissions in use)") from None
    except Exception as exc:  # botocore's credential/endpoint errors and the like: name the class, not the text
        if type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs", "aiohttp"):
            raise DataError(f"{loc.display}: storage error ({type(exc).__name__})") from None
        raise
