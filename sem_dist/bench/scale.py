"""Sources at scale: an ImageNet-shaped JPEG tree (8 classes, mixed sizes 200–500 px) in a loopback
moto_server bucket, protected S3 → S3 by ``sem-dist protect --workers 2`` at a working size of 64 px
(Algorithm 1 on 2 Ray Train workers streaming the JPEGs through Ray Data, Algorithm 4 on 2 Ray Data actors
each taking a class folder), for N and 4·N images. The generator is a small CNN trained a few steps with a
light solver (K_u = 2, J = 1): the point is the data plane, not the protection's strength.

Each run is a fresh driver process (its own embedded Ray), so its peak RSS is the driver's alone; the N
run reads 2 of the 8 classes (``?classes=2``), the 4·N run all 8. ``driver_rss_growth_4x`` = driver peak
RSS at 4·N over that at N: ≈ 1 when the driver holds metadata only. ``local_img_s_n`` is the in-process
run of the same pipeline over the N images (one process, no Ray), and ``load_average_1m`` says how busy
the machine was: timings on a shared machine are only comparable within one run.

``--pipeline convert`` measures ``sem-dist convert --ray`` (read + decode + resize + canonical write)
instead; ``run(pipeline=...)`` takes any module-level ``pipeline(source_spec, dest_uri) -> images written``
whose in-process twin is named in ``LOCAL``.
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
from typing import Callable

import numpy as np

CLASSES = 8
WORKING_SIZE = 64


# the protect run: a few generator steps, a light noise solver (the data plane is what is measured)
PROTECT = {"trainer.arch": "small_cnn", "trainer.steps": 20, "trainer.batch_size": 32, "solver.steps": 2,
           "solver.samples": 1, "attack.steps": 1}


def protect_pipeline(source: str, dest: str) -> int:
    """``sem-dist protect --data SOURCE --out DEST --workers 2 --stream``; returns the images written."""
    from ..protect_dataset import ProtectRequest, protect

    return protect(ProtectRequest(source, dest, overrides=dict(PROTECT), workers=2, stream=True)).count


def inprocess_protect_pipeline(source: str, dest: str) -> int:
    """The same protect with every stage in this process (no Ray flag), for comparison."""
    from ..protect_dataset import ProtectRequest, protect

    return protect(ProtectRequest(source, dest, overrides=dict(PROTECT), device="cpu")).count


def convert_pipeline(source: str, dest: str) -> int:
    """``sem-dist convert SOURCE DEST --ray``; returns the images written."""
    from ..distributed.convert import convert_ray

    return sum(m.count for m in convert_ray(source, dest).values())


def inprocess_pipeline(source: str, dest: str) -> int:
    """``sem-dist convert SOURCE DEST`` (no Ray): the same decode in one process, for comparison."""
    from ..data.convert import convert

    return sum(m.count for m in convert(source, dest).values())


PIPELINES = {"protect": protect_pipeline, "convert": convert_pipeline}
LOCAL = {protect_pipeline: inprocess_protect_pipeline, convert_pipeline: inprocess_pipeline}


def add_arguments(g) -> None:
    g.add_argument("--pipeline", choices=sorted(PIPELINES), default="protect",
                   help="what runs S3 → S3: protect --workers 2 (default) or convert --ray")


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


def run(quick: bool = False, verbose: bool = True, pipeline: Callable[[str, str], int] | str = protect_pipeline
        ) -> dict:
    import boto3

    pipeline = PIPELINES[pipeline] if isinstance(pipeline, str) else pipeline
    from ..testing.s3 import S3_KEY, S3_SECRET, start_moto_server

    n = 2000 if quick else 5000
    per_class = 4 * n // CLASSES
    proc, endpoint = start_moto_server()
    try:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "SEM_DIST_PROGRESS": "0"}
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
        results = {}
        for label, classes, fn in (("n", 2, pipeline), ("4n", CLASSES, pipeline), ("local-n", 2, LOCAL[pipeline])):
            source = f"imagefolder:s3://{bucket}/tree?classes={classes}&size={WORKING_SIZE}"
            results[label] = r = _measure(_name(fn), source, f"s3://{bucket}/out-{label}", env, verbose)
            if verbose:
                print(f"{label}: {r['images']} images in {r['seconds']:.1f}s, driver peak RSS "
                      f"{r['driver_peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    small, big = results["n"], results["4n"]
    return {"bench": "scale", "quick": quick, "pipeline": _name(pipeline), "working_size": WORKING_SIZE,
            "images": big["images"], "dataset_bytes": sum(class_bytes), "img_s": big["images"] / big["seconds"],
            "driver_peak_rss_bytes": big["driver_peak_rss_bytes"],
            "images_n": small["images"], "dataset_bytes_n": sum(class_bytes[:2]),
            "img_s_n": small["images"] / small["seconds"], "driver_peak_rss_bytes_n": small["driver_peak_rss_bytes"],
            "driver_rss_growth_4x": big["driver_peak_rss_bytes"] / small["driver_peak_rss_bytes"],
            "local_img_s_n": results["local-n"]["images"] / results["local-n"]["seconds"],
            "load_average_1m": os.getloadavg()[0],
            "cpu_count": os.cpu_count()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one measured pipeline run (used by the scale benchmark)")
    parser.add_argument("--child", nargs=3, metavar=("PIPELINE", "SOURCE", "DEST"), required=True)
    _child(*parser.parse_args().child)
