"""Flags shared by the data commands (convert, protect, export)."""
from __future__ import annotations

from ..data.storage import StorageOptions

URI_HELP = ("URIs: a local path, file://, s3://bucket/prefix or any fsspec URL. S3 credentials come from the "
            "standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --s3-profile, instance "
            "profile, IRSA); a URI with user:secret@ is refused, so no secret is ever printed or recorded.")


def add_storage_arguments(p) -> None:
    p.add_argument("--s3-endpoint", metavar="URL", default=None,
                   help="S3-compatible endpoint (MinIO, Ceph, a test server); default: $AWS_ENDPOINT_URL or AWS")
    p.add_argument("--s3-profile", metavar="NAME", default=None,
                   help="named AWS profile (from ~/.aws/config and ~/.aws/credentials) for s3:// locations; on a "
                        "cluster every node needs it; default: $AWS_PROFILE, else the standard chain")


def add_bad_record_argument(p) -> None:
    p.add_argument("--on-bad-record", choices=("fail", "skip"), default="fail",
                   help="an undecodable image, unsupported mode, wrong size, missing/out-of-range label or "
                        "duplicate id: stop with an error naming it (fail, default) or leave it out and list it "
                        "in the manifest (skip)")


def storage_options(args) -> StorageOptions:
    return StorageOptions(s3_endpoint=args.s3_endpoint, s3_profile=args.s3_profile)
