"""Flags shared by the data commands (convert, protect, export)."""
from __future__ import annotations

from ..data.storage import StorageOptions

URI_HELP = ("URIs: a local path, file://, s3://bucket/prefix or any fsspec URL. S3 credentials come from the "
            "standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance role) or "
            "s3://KEY:SECRET@bucket/... (percent-encoded); they are never printed or recorded.")


def add_storage_arguments(p) -> None:
    p.add_argument("--s3-endpoint", metavar="URL", default=None,
                   help="S3-compatible endpoint (MinIO, Ceph, a test server); default: $AWS_ENDPOINT_URL or AWS")


def add_bad_record_argument(p) -> None:
    p.add_argument("--on-bad-record", choices=("fail", "skip"), default="fail",
                   help="an undecodable image, unsupported mode, wrong size, missing/out-of-range label or "
                        "duplicate id: stop with an error naming it (fail, default) or leave it out and list it "
                        "in the manifest (skip)")


def storage_options(args) -> StorageOptions:
    return StorageOptions(s3_endpoint=args.s3_endpoint)
