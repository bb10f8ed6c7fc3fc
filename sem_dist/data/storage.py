"""Where datasets live: a filesystem and a path, built from a URI (local path, ``file://``, ``s3://``,
or any other fsspec protocol).

Credentials come from the standard AWS chain only: environment variables, a named profile
(``AWS_PROFILE`` or ``--s3-profile NAME``), an instance profile or a pod role (IRSA). A URI carrying
credentials (``s3://KEY:SECRET@bucket``, any scheme) is refused (:func:`refuse_credentials`): a URI is
echoed by shells, stored by Ray (job entrypoints, Train storage paths) and written into manifests, so a
secret in it would leak. A custom S3 endpoint comes from ``--s3-endpoint`` or ``AWS_ENDPOINT_URL[_S3]``.
Only :func:`redact_uri`'s form of a URI is ever shown or recorded.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import re
import uuid
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem


TEMP_MARK = ".tmp-"  # local whole-or-nothing writes go through ".NAME.tmp-<uuid>" beside NAME


def is_temp_name(name: str) -> bool:
    """A leftover temp file of :meth:`Location.write_bytes` (a write killed before its rename)."""
    return name.startswith(".") and TEMP_MARK in name


class DataError(ValueError):
    """Bad input or an unusable location; the message names the offending item and is safe to show."""


# userinfo after any "scheme://", also nested in a source spec such as imagefolder:s3://KEY:SECRET@bucket,
# and also when the secret was not percent-encoded (AWS secrets often hold "/" and "+")
_USERINFO = re.compile(r"(://)([^/?#]*:[^@]*|[^/?#]*)@")
# query parameters of signed URLs and token-bearing links
_SECRET_QUERY = re.compile(r"[?&](x-amz-(signature|credential|security-token)|signature|sig|token|access_token)=",
                           re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """``uri`` without userinfo, query string or fragment (they may carry keys, tokens or signatures)."""
    return _USERINFO.sub(r"\1", uri.split("?", 1)[0].split("#", 1)[0])


CREDENTIAL_SOURCES = ("environment variables (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), an AWS profile "
                      "(AWS_PROFILE or --s3-profile NAME), or an instance profile / IRSA pod role")


def refuse_credentials(uri: str, what: str = "URI") -> str:
    """``uri`` unchanged when it carries no userinfo or signed-URL query; else a one-line :class:`DataError`
    (showing only the redacted URI) that names the supported ways to give credentials."""
    if _USERINFO.search(uri.split("?", 1)[0]) or _SECRET_QUERY.search(uri):
        raise DataError(f"{what} {redact_uri(uri)}: credentials in a URI are refused (a URI ends up in logs, "
                        f"manifests and Ray's job and checkpoint records); use {CREDENTIAL_SOURCES}")
    return uri


def split_options(uri: str) -> tuple[str, str]:
    """``(uri without query, query)``; the query carries source options such as ``classes=100``."""
    base, _, query = uri.partition("?")
    return base, query


@dataclass(frozen=True)
class StorageOptions:
    """How to reach object storage: where, and which named AWS profile; never a secret."""

    s3_endpoint: str | None = None
    s3_profile: str | None = None  # a profile in ~/.aws/config of every node that opens the location

    def __post_init__(self) -> None:
        if self.s3_endpoint:
            refuse_credentials(self.s3_endpoint, "--s3-endpoint")

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
            # an object store may list the folder's own marker object ("out/", written by pyarrow's S3
            # filesystem, e.g. for Ray Train's checkpoints): the folder itself, not an entry in it
            mine = self.path.rstrip("/")
            return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.path, detail=False)
                          if p.rstrip("/") != mine)

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
                # hidden (readers and Parquet discovery skip dot-files); a kill can leave one behind
                tmp = posixpath.join(os.path.dirname(target.path),
                                     f".{os.path.basename(target.path)}{TEMP_MARK}{uuid.uuid4().hex}")
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

    def remove_many(self, names: list[str]) -> None:
        """Delete these entries (on S3 one request per 1,000 keys, not one per entry)."""
        if names:
            with storage_errors(self):
                self.fs.rm([self.child(n).path for n in names], recursive=True)

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
    refuse_credentials(uri)
    options: dict = {}
    target = uri
    if "://" in uri:
        parts = urlsplit(uri)
        if parts.scheme in ("s3", "s3a"):
            if storage.endpoint():
                options["endpoint_url"] = storage.endpoint()
            if storage.s3_profile:
                options["profile"] = storage.s3_profile
            # listings change under us while we write; a stale cache would hide or resurrect shards
            options.update(use_listings_cache=False, skip_instance_cache=True)
        target = urlunsplit(("s3" if parts.scheme == "s3a" else parts.scheme, parts.netloc, parts.path, "", ""))
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
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound"):
            raise DataError(f"{loc.display}: no usable credentials ({type(exc).__name__}); "
                            f"use {CREDENTIAL_SOURCES}") from None
        if type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs", "aiohttp"):
            raise DataError(f"{loc.display}: storage error ({type(exc).__name__})") from None
        raise


def file_identities(loc: Location) -> dict[str, list]:
    """Content identity of the files at ``loc`` (a folder or one file): each file's size and ETag (object
    stores) or mtime (local files), by path under ``loc``. One listing; a resume compares it to name a
    changed file."""
    root = loc.path.rstrip("/")
    with storage_errors(loc):
        found = loc.fs.find(root, detail=True) if loc.fs.isdir(root) else {root: loc.fs.info(root)}
    return {posixpath.relpath(path, root) if path != root else posixpath.basename(root):
            [d.get("size"), d.get("ETag") or d.get("mtime")] for path, d in sorted(found.items())}
