"""Resource checks before launching Ray work: impossible requests fail within bounded time, clearly."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager

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
    from sem_dist.engine.spec import EngineSpec

    on_ray = [EngineSpec(workers=2, gpus_per_worker=1.0), EngineSpec(regen_actors=4),
              EngineSpec(address="ray://head:10001")]
    assert [e.driver_device("auto") for e in on_ray] == ["cpu"] * 3
    assert EngineSpec().driver_device("auto") == "auto"  # in-process: CUDA if present
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


@contextmanager
def _may_autoscale(workers: int):
    """Report to the connected one-node cluster's GCS, as an autoscaling platform does, a GPU worker group that
    may grow from 0 to ``workers`` nodes; reported empty again after."""
    from ray.core.generated import autoscaler_pb2

    gcs = ray._private.worker.global_worker.gcs_client
    groups = [autoscaler_pb2.NodeGroupConfig(name="head", resources={"CPU": 4}, min_count=1, max_count=1),
              autoscaler_pb2.NodeGroupConfig(name="gpu", resources={"CPU": 8, "GPU": 1}, min_count=0,
                                             max_count=workers)]
    gcs.report_cluster_config(autoscaler_pb2.ClusterConfig(node_group_configs=groups).SerializeToString())
    try:
        yield
    finally:
        gcs.report_cluster_config(autoscaler_pb2.ClusterConfig().SerializeToString())


def test_every_ray_stage_refuses_node_local_paths_on_a_cluster_that_may_autoscale(ray_cluster, cli, tiny_digits,
                                                                                   s3_env, tmp_path):
    """One node alive, but an autoscaler may add four: each Ray stage (protect, convert --ray, evaluate's
    per-seed tasks, tune) names the first path only this machine has, in one line, before anything is
    written; S3 paths pass, and --shared-fs lets a run through to its next check. The same cluster without
    the autoscaler refuses nothing."""
    from sem_dist.data import save_dataset
    from sem_dist.distributed.storage import check_cluster_visible

    _, bucket = s3_env
    data, remote, out = tmp_path / "data", f"s3://{bucket}/data", tmp_path / "out"
    save_dataset(tiny_digits[0], str(data))
    save_dataset(tiny_digits[0], remote)
    images = tmp_path / "images"
    assert cli("export", data, images)[0] == 0
    tiny = ["--arch", "small_cnn", "--steps", "2", "--batch-size", "8", "--device", "cpu"]
    why = "is on this machine, but the Ray cluster may autoscale to 5 nodes that must all see it: use s3://bucket/" \
          "prefix, or --shared-fs if every node mounts it"
    refused = {
        f"protect: error: --data {data} {why}": ["protect", "--data", data, "--out", out, "--workers", "2", *tiny],
        f"protect: error: --out {out} {why}": ["protect", "--data", remote, "--out", out, "--workers", "2", *tiny],
        # digits load in this process and regenerate there: only Ray Train's checkpoints (under --out) need a share
        f"protect: error: checkpoint folder {out}/_staging/checkpoint {why}":
            ["protect", "--data", "digits", "--out", out, "--workers", "2", *tiny],
        f"convert: error: SOURCE {images} {why}": ["convert", "--ray", f"imagefolder:{images}",
                                                   f"s3://{bucket}/converted"],
        f"evaluate: error: --train {data} {why}": ["evaluate", "--train", data, "--test", remote, "--seeds", "0,1",
                                                   "--arch", "small_cnn", "--record", out / "record.json"],
        f"tune: error: --data {data} {why}": ["tune", "--data", data, "--test", remote, "--storage",
                                             f"s3://{bucket}/tune", "--quick"],
        f"tune: error: --storage {tmp_path / 'tune'} {why}": ["tune", "--data", remote, "--test", remote,
                                                             "--storage", tmp_path / "tune", "--quick"],
    }
    with _may_autoscale(4):
        for line, args in refused.items():
            code, _, err = cli(*args)
            assert code == 1 and [e for e in err.splitlines() if "error:" in e] == [f"sem-dist {line}"], err
            assert not out.exists() and not (tmp_path / "tune").exists()
        # declared shared: past the path check to the next one (no GPU on this cluster), still nothing written
        code, _, err = cli("tune", "--data", data, "--test", data, "--storage", tmp_path / "tune", "--quick",
                           "--gpus-per-trial", "1", "--shared-fs")
        assert code == 1 and "needs 1 CPUs and 1 GPUs" in err and not (tmp_path / "tune").exists(), err
    check_cluster_visible({"--out": str(out)})  # one node, nothing to add it: nothing refused
