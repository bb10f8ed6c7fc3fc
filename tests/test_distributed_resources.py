"""Resource checks before launching Ray work: impossible requests fail within bounded time, clearly."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray")


def test_an_impossible_gpu_request_fails_at_once_on_an_embedded_cluster(ray_cluster):
    from sem_dist.distributed.resources import wait_for_resources

    t0 = time.monotonic()
    with pytest.raises(ValueError) as err:
        wait_for_resources(2, 2, "Algorithm 1 (2 workers × 1 GPU)", timeout_s=600)
    msg = str(err.value)
    assert time.monotonic() - t0 < 10  # no waiting for an autoscaler an embedded Ray does not have
    assert "Algorithm 1 (2 workers × 1 GPU) needs 2 CPUs and 2 GPUs" in msg and "0 GPUs" in msg
    assert "\n" not in msg


def test_satisfiable_requests_return_and_oversized_workers_are_refused(ray_cluster):
    from sem_dist.distributed.resources import wait_for_resources

    cpus = ray.cluster_resources()["CPU"]
    wait_for_resources(cpus, 0, "everything", timeout_s=0)  # the whole node is a valid request
    wait_for_resources(2, 0, "two workers", timeout_s=0, units=2)
    with pytest.raises(ValueError, match=r"needs 5 CPUs.*has 4 CPUs"):
        wait_for_resources(cpus + 1, 0, "one too many", timeout_s=0)


def test_a_driver_on_a_real_cluster_waits_for_the_autoscaler_then_fails(ray_cluster, tmp_path):
    """A driver that joined the cluster (not its creator) waits up to the timeout, then reports."""
    script = ("import ray, time\n"
              "from sem_dist.distributed.resources import wait_for_resources\n"
              "ray.init(address='auto', log_to_driver=False)\n"
              "t0 = time.monotonic()\n"
              "try:\n"
              "    wait_for_resources(1, 1, 'one GPU', timeout_s=3)\n"
              "except ValueError as e:\n"
              "    print(f'{time.monotonic() - t0:.1f}|{e}')\n")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    waited, msg = done.stdout.strip().splitlines()[-1].split("|", 1)
    assert 3 <= float(waited) < 30, done.stdout
    assert "one GPU needs 1 CPUs and 1 GPUs" in msg and "after waiting 3 s" in msg



def test_the_driver_takes_no_gpu_of_its_own_on_ray():
    """On Ray every GPU used is one Ray allocated: work left in the driver runs on its CPU unless asked."""
    from sem_dist.protect_dataset import Engine

    on_ray = [Engine.from_flags(2, None, 1.0, None), Engine.from_flags(None, 4, 0.0, None),
              Engine.from_flags(None, None, 0.0, "ray://head:10001")]
    assert [e.driver_device("auto") for e in on_ray] == ["cpu"] * 3
    assert Engine.from_flags(None, None, 0.0, None).driver_device("auto") == "auto"  # in-process: CUDA if present
    assert on_ray[0].driver_device("cuda:1") == "cuda:1"  # an explicit choice is the user's


def test_resource_timeout_reaches_the_regeneration_actor_pool(ray_cluster, tmp_path):
    """``--resource-timeout`` bounds the wait for regeneration actors too: a GPU actor pool on a cluster
    without GPUs fails after the given seconds (not the 600 s default) with a one-line reason."""
    import numpy as np
    import torch

    from sem_dist.config import resolve_config
    from sem_dist.data import save_dataset
    from sem_dist.data.arrays import ArrayDataset
    from sem_dist.perturb.methods import get_method, method_state

    rng = np.random.default_rng(0)
    save_dataset(ArrayDataset([f"i{k}" for k in range(4)], rng.integers(0, 256, (4, 1, 8, 8), dtype=np.uint8),
                              np.arange(4) % 2, ["a", "b"]), str(tmp_path / "data"))
    cfg = resolve_config("sem", 8, overrides={"trainer.arch": "small_cnn"})
    torch.save(method_state(get_method(cfg, 2, 1, 8, torch.device("cpu"))), tmp_path / "method.pt")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "sem_dist", "regenerate", "--generator", str(tmp_path / "method.pt"),
                           "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--regen-actors", "1",
                           "--gpus-per-worker", "1", "--resource-timeout", "3"],
                          env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "1 regeneration actor(s) needs 1 CPUs and 1 GPUs" in lines[0] and "after waiting 3 s" in lines[0]
    assert time.monotonic() - t0 < 200 and not (tmp_path / "out" / "manifest.json").exists()
