"""Ray Train's persistent storage from a URI: a local folder or ``s3://bucket/prefix``.

A custom S3 endpoint (MinIO, moto, Ceph) comes from ``--s3-endpoint`` or ``AWS_ENDPOINT_URL``;
credentials come from the standard AWS chain and are never put into arguments or logs.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse


def storage_for(uri: str, endpoint: str | None = None, profile: str | None = None):
    """``(storage_path, storage_filesystem)`` for ``RunConfig``. ``profile`` names an AWS profile that every
    node resolves itself: only its name travels with the filesystem object."""
    from ..data.storage import refuse_credentials

    parsed = urlparse(refuse_credentials(uri, "--checkpoint-dir"))
    if parsed.scheme in ("", "file"):
        return str(Path(parsed.path if parsed.scheme else uri).expanduser().resolve()), None
    if parsed.scheme != "s3":
        raise ValueError(f"checkpoint storage must be a local path or s3://bucket/prefix, not {parsed.scheme}://")
    import pyarrow.fs

    if profile:  # pyarrow's S3 client takes no profile name; s3fs does, wrapped as a pyarrow filesystem
        from ..data.storage import StorageOptions, open_location

        loc = open_location(f"s3://{parsed.netloc}{parsed.path}", StorageOptions(endpoint, profile))
        return loc.path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(loc.fs))
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {}
    if endpoint:
        ep = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs = {"endpoint_override": ep.netloc, "scheme": ep.scheme}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return f"{parsed.netloc}{parsed.path}".rstrip("/"), pyarrow.fs.S3FileSystem(**kwargs)


def run_exists(storage_path: str, filesystem, name: str) -> bool:
    """Whether a run called ``name`` already left state under the storage path."""
    import pyarrow.fs

    fs = filesystem or pyarrow.fs.LocalFileSystem()
    info = fs.get_file_info(f"{storage_path.rstrip('/')}/{name}")
    return info.type != pyarrow.fs.FileType.NotFound
