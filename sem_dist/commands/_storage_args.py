"""Flags shared by the data commands (convert, protect, regenerate, export)."""
from __future__ import annotations

from ..data.storage import StorageOptions
from ..distributed.resources import RESOURCE_TIMEOUT_HELP
from ..engine.spec import EngineSpec, RunSpec

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


def add_ray_arguments(g, train: bool) -> None:
    """The Ray engine flags; giving any of them moves Algorithm 4 onto Ray Data (docs/data-plane.md)."""
    if train:
        g.add_argument("--workers", type=int, metavar="N",
                       help="Algorithm-1 workers: N > 1 runs Ray Train with N DDP workers (gloo on CPU, nccl on GPU); "
                            "any value also regenerates on Ray Data (default: everything in this process)")
    g.add_argument("--regen-actors", type=int, metavar="K",
                   help="Algorithm-4 model actors on Ray Data, each holding one copy of the generator and solving "
                        "one output shard at a time while separate CPU actors read/decode and encode/write (default: "
                        "--workers, or in-process when no Ray flag is given)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="GPUs per Ray worker and per regeneration actor (fractions share a GPU; 0 = CPU only)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C",
                   help="CPUs Ray reserves for each Algorithm-1 worker and each regeneration actor, whose torch "
                        "uses as many threads (default 1); decoding and encoding run in separate CPU actors")
    g.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to use (default: $RAY_ADDRESS, else an embedded local Ray); implies Ray Data "
                        "regeneration")
    g.add_argument("--resource-timeout", type=float, metavar="SECONDS", help=RESOURCE_TIMEOUT_HELP)
    add_shared_fs_argument(g, "--data, --out" + (", --checkpoint-dir" if train else ""))


def add_shared_fs_argument(g, paths: str) -> None:
    """``--shared-fs``: the Ray stages' refusal of node-local ``paths`` (distributed.storage.check_cluster_visible)."""
    g.add_argument("--shared-fs", action="store_true",
                   help=f"local paths ({paths}) are on a file system every node of the Ray cluster mounts (NFS, "
                        "EFS, ...); without it they are refused when the cluster has, or may autoscale to, more than "
                        "one node")


def add_verbose_argument(p) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own output on the console (its INFO lines, Ray Data's progress blocks, workers' "
                        "stdout/stderr); by default it goes to Ray's log files and one line says where "
                        "(same as SEM_DIST_DEBUG=1, which also shows tracebacks)")


def engine_spec(args) -> EngineSpec:
    """The Ray engine flags above (and ``--stream``, where the command has it) as one validated spec."""
    given = {"resource_timeout_s": args.resource_timeout} if args.resource_timeout is not None else {}
    return EngineSpec(workers=getattr(args, "workers", None), regen_actors=args.regen_actors,
                      gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                      address=args.address, shared_fs=args.shared_fs, stream=getattr(args, "stream", None), **given)


def run_spec(args, **fields) -> RunSpec:
    """The run a protect/regenerate command line asks for, built once (``fields``: the command's own)."""
    return RunSpec(data=args.data, out=args.out, device=args.device, engine=engine_spec(args),
                   storage=storage_options(args), resume=args.resume, overwrite=args.overwrite,
                   on_bad_record=args.on_bad_record, shard_rows=args.shard_rows, keep_noise=args.keep_noise, **fields)


def add_output_arguments(g) -> None:
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (finished shards are kept; a complete output with the "
                        "same settings is reported without reading the data)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a dataset sem-dist wrote at --out (never deletes anything else)")
    g.add_argument("--shard-rows", type=int, metavar="N",
                   help="images per output shard (default: a canonical input's shards, re-cut in-process only; "
                        "imagefolder/parquet/webdataset: ~64 MiB of pixels per shard, cut within each folder/file)")
    g.add_argument("--keep-noise", action="store_true",
                   help="also store the int8 noise per image (research only: it lets anyone undo the protection)")


def summary(m) -> str:
    """The one line protect/regenerate print on success."""
    noise, regen = m.protection["noise"], m.protection.get("regeneration", {})
    skipped = f"; {len(m.skipped)} bad records skipped (listed in the manifest)" if m.skipped else ""
    rate = f", {regen['images_per_s']:.1f} img/s ({regen['engine']})" if regen.get("images_per_s") else ""
    return (f"protected {m.count} images with {m.protection['method']}: noise ℓ∞ = {noise['linf_levels']}/255, "
            f"{len(m.shards)} shard(s){rate}{skipped}")
