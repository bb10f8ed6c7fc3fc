"""Shared fixtures. CPU only; torch uses the machine's two cores."""
from __future__ import annotations

import os

import pytest
import torch

from sem_dist.testing.s3 import S3_KEY, S3_SECRET, start_moto_server  # re-exported for the tests

os.environ.setdefault("SEM_DIST_PROGRESS", "0")
# Ray Train's controller polls its workers every 2 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S); the tests' runs take a
# few steps, so they waited on that poll for a fifth of their time (two tests: 111 s → 90 s at 0.25 s). Ray Train
# passes the variable from the driver to its controller; the two-node tests give it to their nodes.
TRAIN_POLL_S = "0.25"
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S)
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def digits():
    from sem_dist.data.sources.digits import load_digits

    return load_digits("train"), load_digits("test")


@pytest.fixture(scope="session")
def sem_protected_digits(digits):
    """The digits training set protected with SEM at the demo's CPU-scale settings (computed once)."""
    from sem_dist.commands.demo import DEMO_OVERRIDES
    from sem_dist.config import resolve_config
    from sem_dist.perturb.in_memory import protect_arrays

    train, _ = digits
    cfg = resolve_config("sem", train.image_side, overrides=DEMO_OVERRIDES)
    protected, _ = protect_arrays(cfg, train, torch.device("cpu"))
    return protected, cfg


@pytest.fixture(scope="session")
def ray_cluster(moto_endpoint):
    """A real local Ray cluster on loopback for the whole session (two cores, four logical CPUs so the
    Train controller and two workers fit). Its processes start with the test S3 server's dummy
    credentials in their environment, as a cluster's nodes have their own: every job's workers, including
    those of drivers started later by a test, inherit them (the driver never ships credentials)."""
    import ray

    test_env = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": moto_endpoint}
    saved = {k: os.environ.get(k) for k in test_env}
    os.environ.update(test_env)
    try:
        ray.init(address="local", num_cpus=4, _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1")
    finally:  # the raylet has its copy; the rest of the session sees the environment it had
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield ray
    ray.shutdown()


# ---- S3: a real S3-protocol server (moto_server) on a free loopback port, dummy credentials ----------

@pytest.fixture(scope="session")
def moto_endpoint():
    proc, url = start_moto_server()
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch, tmp_path):
    """Dummy credentials and AWS_ENDPOINT_URL in the environment, nothing from the real machine;
    returns (endpoint, a new empty bucket name)."""
    import uuid

    import boto3

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    return moto_endpoint, bucket


@pytest.fixture(scope="session")
def tiny_digits(digits):
    """40 training and 20 test digits: enough for every data-layer path, small enough for CPU tests."""
    train, test = digits
    return train.subset(range(40)), test.subset(range(20))


@pytest.fixture
def cli(capsys):
    """Run ``sem-dist ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from sem_dist.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
