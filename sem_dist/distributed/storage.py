"""Ray Train's persistent storage from a URI: a local folder or ``s3://bucket/prefix``.

A custom S3 endpoint (MinIO, moto, Ceph) comes from ``--s3-endpoint`` or ``AWS_ENDPOINT_URL`` and reaches
Ray Train as ``storage_filesystem``; credentials come from the standard AWS chain and are never put into
arguments, storage paths or logs.

Every node of a cluster must see the checkpoints (a worker restarted elsewhere, or a run resumed from
another machine, reads them): by default they live next to the output's staging area on the output's own
storage. Any Ray stage refuses node-local paths on a cluster that has, or may autoscale to, several nodes
unless they are declared shared (``check_cluster_visible``).
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from ..data.storage import Location, StorageOptions


def is_remote(uri: str | None) -> bool:
    """Whether ``uri`` names object storage (every node reaches it) rather than a path on this machine."""
    return bool(uri) and urlparse(str(uri)).scheme not in ("", "file")


def default_checkpoint_uri(out_uri: str) -> str:
    """Where a protect run keeps its generator checkpoints by default: ``OUT/_staging/checkpoint``, on the
    output's storage, removed with the staging area when the output is committed."""
    parsed = urlparse(out_uri)
    if not is_remote(out_uri):
        return str(Path(parsed.path if parsed.scheme else out_uri).expanduser() / "_staging" / "checkpoint")
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}/_staging/checkpoint"


SHARED_FS_REMEDY = "use s3://bucket/prefix, or --shared-fs if every node mounts it"


def check_cluster_visible(paths: dict[str, "str | Location | None"], shared_fs: bool = False,
                          remedy: str = SHARED_FS_REMEDY, address: str | None = None) -> None:
    """Refuse the first node-local path of ``paths`` (whose → a Location, URI or source spec; None: not used)
    when work of the Ray cluster may run on another node: it has several, or may autoscale to several
    (``resources.nodes_beyond_this``). ``shared_fs`` declares local paths a file system every node mounts (NFS,
    EFS, Lustre). Joins the cluster (``address``, see ``cluster.connect``) only when a path is local. Ray
    stages call it at their entry, before anything is written or computed."""
    local = [(what, shown) for what, p in paths.items() if p is not None and (shown := _node_local(p))]
    if shared_fs or not local:
        return
    from .cluster import connect
    from .resources import nodes_beyond_this

    connect(address)
    why = nodes_beyond_this()
    if why is not None:
        what, shown = local[0]
        raise ValueError(f"{what} {shown} is on this machine, but {why} that must all see it: {remedy}")


def _node_local(path: "str | Location") -> str | None:
    """A Location, URI or source spec as messages show it when it names a path on this machine, else None
    (object storage; ``digits``, bundled with the package on every node)."""
    if isinstance(path, Location):
        return path.display if path.is_local else None
    from ..data.sources.registry import parse_spec

    spec = parse_spec(path)
    return spec.display if spec.target and not is_remote(spec.target) else None


def storage_for(uri: str, storage: StorageOptions = StorageOptions()):
    """``(storage_path, storage_filesystem)`` for ``RunConfig``. ``storage.s3_profile`` names an AWS profile that
    every node resolves itself: only its name travels with the filesystem object."""
    from ..data.storage import refuse_credentials

    parsed = urlparse(refuse_credentials(uri, "--checkpoint-dir"))
    if parsed.scheme in ("", "file"):
        return str(Path(parsed.path if parsed.scheme else uri).expanduser().resolve()), None
    if parsed.scheme != "s3":
        raise ValueError(f"checkpoint storage must be a local path or s3://bucket/prefix, not {parsed.scheme}://")
    import pyarrow.fs

    if storage.s3_profile:  # pyarrow's S3 client takes no profile name; s3fs does, wrapped as a pyarrow filesystem
        from ..data.storage import open_location

        loc = open_location(f"s3://{parsed.netloc}{parsed.path}", storage)
        return loc.path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(loc.fs))
    endpoint = storage.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
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
