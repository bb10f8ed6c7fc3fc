"""Sources at scale: an ImageNet-shaped JPEG tree (8 classes, mixed sizes 200–500 px) in a loopback
moto_server bucket, read S3 → S3 at a working size of 64 px by the commands that could gather a split into
their driver, for N and 4·N images:

- ``protect``: ``protect --workers 2 --stream`` (Algorithm 1 on 2 Ray Train workers streaming the JPEGs
  through Ray Data, Algorithm 4 on 2 Ray Data actors each taking a class folder);
- ``protect-1``: the same with ``--workers 1`` (one Ray Train worker fed by Ray Data: what a split above the
  streaming threshold takes; the tree's size is unknown before reading, so ``--stream`` says it);
- ``evaluate``: one small-CNN victim (one seed) on the ``protect`` output of the same size, its own clean test;
- ``tune``: a 2-trial grid (ρ_r ∈ {0, 4/255}) on that output, each trial reading the data itself.
The generator is a small CNN trained a few steps with a light solver (K_u = 2, J = 1); victims and trials are
a few steps too: the point is the data plane, not the protection's strength. Every run sets
``$SEM_DIST_STREAM_MIN_BYTES`` to 1 MiB, so the 64-px splits (tens of MiB) take the paths a split above
the default 256 MiB takes.

Each run is a fresh driver process (its own embedded Ray), so its peak RSS is the driver's alone; the N
run reads 2 of the 8 classes (``?classes=2``), the 4·N run all 8. ``<pipeline>_driver_rss_growth_4x`` =
driver peak RSS at 4·N over that at N: ≈ 1 when the driver holds metadata only; ``driver_rss_growth_4x``
is the largest of them. ``local_img_s_n`` is the in-process run of the first protect pipeline over the N
images (one process, no Ray), and ``load_average_1m`` says how busy the machine was: timings on a shared
machine are only comparable within one run.

``--pipeline convert`` measures ``sem-dist convert --ray`` (read + decode + resize + canonical write)
instead; ``run(pipelines=...)`` takes module-level ``pipeline(source_spec, dest_uri) -> images`` functions
(an in-process twin named in ``LOCAL`` is measured over N too).
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

CLASSES = 8
WORKING_SIZE = 64


# the protect run: a few generator steps, a light noise solver (the data plane is what is measured)
PROTECT = {"trainer.arch": "small_cnn", "trainer.steps": 20, "trainer.batch_size": 32, "solver.steps": 2,
           "solver.samples": 1, "attack.steps": 1}


# victims: a few small-CNN steps; trials: one victim epoch over ``--subset`` (which bounds a trial's regeneration and
# victim, not its read)
VICTIM = ["--arch", "small_cnn", "--steps", "4", "--batch-size", "32", "--device", "cpu"]
TUNE_SPACE = {"budget.rho_r": {"grid": ["0", "4/255"]}, "trainer.arch": "small_cnn", "trainer.steps": 2,
              "trainer.batch_size": 32, "solver.steps": 1, "solver.samples": 1, "attack.steps": 1,
              "victim.arch": "small_cnn", "victim.epochs": 1, "victim.batch_size": 32}
STREAM_MIN_BYTES = 1 << 20  # every run: the splits here (tens of MiB) take the above-threshold paths


def protect_pipeline(source: str, dest: str) -> int:
    """``sem-dist protect --data SOURCE --out DEST --workers 2 --stream``; returns the images written."""
    from ..engine.spec import EngineSpec, RunSpec
    from ..protect.run import protect

    return protect(RunSpec(source, dest, overrides=dict(PROTECT), engine=EngineSpec(workers=2, stream=True))).count


def protect_one_worker_pipeline(source: str, dest: str) -> int:
    """``sem-dist protect --data SOURCE --out DEST --stream`` (``--workers 1``, the default)."""
    from ..engine.spec import EngineSpec, RunSpec
    from ..protect.run import protect

    return protect(RunSpec(source, dest, overrides=dict(PROTECT), engine=EngineSpec(stream=True))).count


def _cli_json(args: list[str]) -> dict:
    """``sem-dist ARGS --json`` in this process; its last stdout line."""
    import contextlib

    from ..cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*args, "--json"])
    if code != 0:
        raise RuntimeError(f"sem-dist {args[0]} exited {code}")
    return json.loads(out.getvalue().strip().splitlines()[-1])


def evaluate_pipeline(source: str, dest: str) -> int:
    """``sem-dist evaluate --train SOURCE --test SOURCE`` (one seed; SOURCE a protected canonical dataset);
    returns the training images."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        summary = _cli_json(["evaluate", "--train", source, "--test", source, *VICTIM, "--record",
                             f"{tmp}/evaluation.json"])
        return json.loads(Path(summary["record"]).read_text())["data"]["train"]["size"]


def tune_pipeline(source: str, dest: str) -> int:
    """``sem-dist tune`` over ``TUNE_SPACE`` (2 trials, 2 at a time) with storage DEST; returns the images
    each trial read."""
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "space.yaml"
        space.write_text(yaml.safe_dump(TUNE_SPACE))
        summary = _cli_json(["tune", "--data", source, "--test", source, "--space", str(space), "--scheduler", "none",
                             "--subset", "64", "--max-concurrent", "2", "--device", "cpu", "--storage", dest])
    if summary["trials"] != 2:
        raise RuntimeError(f"tune ran {summary['trials']} trials, not 2")
    from ..data.storage import StorageOptions
    from ..engine.input import open_input

    return open_input(source, StorageOptions()).info.count


def inprocess_protect_pipeline(source: str, dest: str) -> int:
    """The same protect with every stage in this process (no Ray flag), for comparison."""
    from ..engine.spec import RunSpec
    from ..protect.run import protect

    return protect(RunSpec(source, dest, overrides=dict(PROTECT), device="cpu")).count


def convert_pipeline(source: str, dest: str) -> int:
    """``sem-dist convert SOURCE DEST --ray``; returns the images written."""
    from ..distributed.convert import convert_ray

    return sum(m.count for m in convert_ray(source, dest).values())


def inprocess_pipeline(source: str, dest: str) -> int:
    """``sem-dist convert SOURCE DEST`` (no Ray): the same decode in one process, for comparison."""
    from ..data.convert import convert

    return sum(m.count for m in convert(source, dest).values())


PIPELINES = {"protect": protect_pipeline, "protect-1": protect_one_worker_pipeline, "evaluate": evaluate_pipeline,
             "tune": tune_pipeline, "convert": convert_pipeline}
LOCAL = {protect_pipeline: inprocess_protect_pipeline, convert_pipeline: inprocess_pipeline}
PROTECTS = (protect_pipeline, protect_one_worker_pipeline)
READS_PROTECTED = (evaluate_pipeline, tune_pipeline)  # their SOURCE: the first protect pipeline's output
DEFAULT_PIPELINES = "protect,protect-1,evaluate,tune"


def add_arguments(g) -> None:
    g.add_argument("--pipeline", default=DEFAULT_PIPELINES, metavar="NAME[,NAME...]",
                   help=f"what runs, in order: {', '.join(PIPELINES)} (default: %(default)s; evaluate and tune read "
                        "the output of a protect pipeline listed before them)")
    g.add_argument("--images", type=int, metavar="N",
                   help="images of the N run (the 4·N run reads 4·N; default 5,000, --quick 2,000)")


def _name(fn: Callable) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(200, 501, 2))
    # a smooth gradient with noise: compresses like a photo, not like white noise
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
            + rng.normal(0, 12, (h, w, 3)))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _upload(args: tuple[str, str, list[tuple[str, int]]]) -> int:
    import s3fs

    from ..testing.s3 import S3_KEY, S3_SECRET

    endpoint, bucket, items = args
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key=S3_KEY, secret=S3_SECRET)
    files = {f"{bucket}/{key}": _jpeg(seed) for key, seed in items}
    fs.pipe(files)
    return sum(len(v) for v in files.values())


def build_tree(endpoint: str, bucket: str, per_class: int) -> list[int]:
    """``tree/c<k>/<i>.jpg``; returns the bytes of each class."""
    per_class_bytes = [0] * CLASSES
    jobs = []
    for c in range(CLASSES):
        keys = [(f"tree/c{c}/{i:06d}.jpg", c * 1_000_000 + i) for i in range(per_class)]
        jobs += [(c, (endpoint, bucket, keys[s:s + 200])) for s in range(0, per_class, 200)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        for (c, _), size in zip(jobs, pool.map(_upload, [j for _, j in jobs])):
            per_class_bytes[c] += size
    return per_class_bytes


def _child(pipeline: str, source: str, dest: str) -> None:
    """One measured run in this (fresh) process; prints its JSON line."""
    from ..distributed.cluster import connect

    module, _, fn = pipeline.partition(":")
    run_pipeline = getattr(importlib.import_module(module), fn)
    if not fn.startswith("inprocess"):
        # logical CPUs beyond the cores: 2 Train workers hold 2 while Ray Data tasks feed them
        connect(num_cpus=max(4, os.cpu_count() or 2))
    t0 = time.perf_counter()
    images = run_pipeline(source, dest)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"images": images, "seconds": seconds, "driver_peak_rss_bytes": rss}))


def _measure(pipeline: str, source: str, dest: str, env: dict, verbose: bool) -> dict:
    proc = subprocess.run([sys.executable, "-m", "sem_dist.bench.scale", "--child", pipeline, source, dest],
                          env=env, stdout=subprocess.PIPE, stderr=None if verbose else subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline run failed:\n{(proc.stderr or '')[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _plan(names: list[str]) -> list[tuple[str, Callable]]:
    """(name, pipeline) in order; evaluate/tune need a protect pipeline before them (one line otherwise)."""
    unknown = [n for n in names if n not in PIPELINES]
    if unknown:
        raise ValueError(f"--pipeline: unknown {unknown[0]!r}; choose from {', '.join(PIPELINES)}")
    plan = [(n, PIPELINES[n]) for n in names]
    for i, (name, fn) in enumerate(plan):
        if fn in READS_PROTECTED and not any(f in PROTECTS for _, f in plan[:i]):
            raise ValueError(f"--pipeline: {name} reads a protected dataset; list protect or protect-1 before it")
    return plan


def _figures(name: str, small: dict, big: dict) -> dict:
    """One pipeline's keys. ``_growth_if_held_4x``: the growth a driver holding the decoded split would show at
    least (its N-run RSS plus the 3·N more images' pixels): what ``_driver_rss_growth_4x`` is to be read against."""
    held = 3 * small["images"] * 3 * WORKING_SIZE ** 2
    return {f"{name}_images": big["images"], f"{name}_images_n": small["images"],
            f"{name}_growth_if_held_4x": 1 + held / small["driver_peak_rss_bytes"],
            f"{name}_seconds": big["seconds"], f"{name}_seconds_n": small["seconds"],
            f"{name}_driver_peak_rss_bytes": big["driver_peak_rss_bytes"],
            f"{name}_driver_peak_rss_bytes_n": small["driver_peak_rss_bytes"],
            f"{name}_driver_rss_growth_4x": big["driver_peak_rss_bytes"] / small["driver_peak_rss_bytes"]}


def run(quick: bool = False, verbose: bool = True, pipeline: str = DEFAULT_PIPELINES, images: int | None = None
        ) -> dict:
    import boto3

    from ..data.info import STREAM_MIN_BYTES_ENV
    from ..testing.s3 import S3_KEY, S3_SECRET, start_moto_server

    plan = _plan([p.strip() for p in pipeline.split(",") if p.strip()])
    n = images or (2000 if quick else 5000)
    per_class = 4 * n // CLASSES
    proc, endpoint = start_moto_server()
    out: dict = {}
    try:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "SEM_DIST_PROGRESS": "0",
               STREAM_MIN_BYTES_ENV: str(STREAM_MIN_BYTES)}
        env.pop("AWS_PROFILE", None)
        env.pop("RAY_ADDRESS", None)  # always an embedded cluster of this machine
        bucket = "scale"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                     region_name="us-east-1").create_bucket(Bucket=bucket)
        t0 = time.perf_counter()
        class_bytes = build_tree(endpoint, bucket, per_class)
        if verbose:
            print(f"built {CLASSES * per_class} JPEGs ({sum(class_bytes) / 2**20:.0f} MiB) in "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
        protected = None
        for name, fn in plan:
            local = [("local-n", 2, LOCAL[fn])] if fn in LOCAL and not out else []  # the first pipeline's only
            runs = [("n", 2, fn), ("4n", CLASSES, fn), *local]
            results = {}
            for label, classes, f in runs:
                source = (f"s3://{bucket}/{protected}-{label}" if fn in READS_PROTECTED else
                          f"imagefolder:s3://{bucket}/tree?classes={classes}&size={WORKING_SIZE}")
                results[label] = r = _measure(_name(f), source, f"s3://{bucket}/{name}-{label}", env, verbose)
                if verbose:
                    print(f"{name} {label}: {r['images']} images in {r['seconds']:.1f}s, driver peak RSS "
                          f"{r['driver_peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
            if fn in PROTECTS and protected is None:
                protected = name
            out.update(_figures(name, results["n"], results["4n"]))
            if "local-n" in results:
                out["local_img_s_n"] = results["local-n"]["images"] / results["local-n"]["seconds"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    growth = {k: v for k, v in out.items() if k.endswith("_driver_rss_growth_4x")}
    return {"bench": "scale", "quick": quick, "pipelines": [n for n, _ in plan], "working_size": WORKING_SIZE,
            "stream_min_bytes": STREAM_MIN_BYTES, "dataset_bytes": sum(class_bytes),
            "dataset_bytes_n": sum(class_bytes[:2]), **out, "driver_rss_growth_4x": max(growth.values()),
            "load_average_1m": os.getloadavg()[0], "cpu_count": os.cpu_count()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one measured pipeline run (used by the scale benchmark)")
    parser.add_argument("--child", nargs=3, metavar=("PIPELINE", "SOURCE", "DEST"), required=True)
    _child(*parser.parse_args().child)
