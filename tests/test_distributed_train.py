"""Algorithm 1 on a real local Ray cluster (Train V2, gloo DDP on CPU workers)."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sem_dist.config import resolve_config
from sem_dist.perturb.generator import train_generator
from sem_dist.perturb.in_memory import regenerate_all
from sem_dist.perturb.methods import get_method

ray = pytest.importorskip("ray")

CPU = torch.device("cpu")
TINY = {"trainer.arch": "small_cnn", "trainer.batch_size": 16, "trainer.steps": 6, "trainer.checkpoint_every": 2,
        "solver.steps": 2, "solver.samples": 2, "attack.steps": 2}


@pytest.fixture(scope="module")
def small(digits):
    return digits[0].subset(range(160))


def _opts(tmp_path, workers: int, **kw):
    from sem_dist.distributed.algorithm1 import RayTrainOptions
    from sem_dist.engine.spec import EngineSpec

    return RayTrainOptions(engine=EngineSpec(workers=workers), checkpoint=str(tmp_path / "runs"), log_every_s=0, **kw)


def _method_from(state, cfg, data):
    method = get_method(cfg, data.num_classes, data.in_channels, data.image_side, CPU)
    method.load_state_dict({"model": state["model"]})
    return method


def test_one_and_two_workers_train_a_valid_generator(ray_cluster, small, tmp_path):
    from sem_dist.distributed.algorithm1 import fit_generator

    cfg = resolve_config("sem", 32, overrides=TINY)
    one, m1 = fit_generator(cfg, small, _opts(tmp_path, workers=1, name="w1"))
    two, m2 = fit_generator(cfg, small, _opts(tmp_path, workers=2, name="w2"))
    assert one["step"] == two["step"] == 6 and m2["workers"] == 2 and m1["workers"] == 1
    # one Ray worker runs exactly the in-process code path (at the worker's one thread: sign() steps
    # amplify the float differences that another thread count's summation order would bring)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = train_generator(cfg, small, small.num_classes, small.in_channels, small.image_side, CPU)
    finally:
        torch.set_num_threads(threads)
    for k, v in local.model.state_dict().items():
        assert torch.allclose(v.float(), one["model"][k].float(), atol=1e-5), k
    noise = regenerate_all(_method_from(two, cfg, small), small.subset(range(20)), CPU, 8)
    assert np.abs(noise).max() == 8 and (np.abs(noise).reshape(20, -1).max(1) > 0).all()
    # the two-worker generator differs from the one-worker one only by BatchNorm/float effects
    diffs = [float((one["model"][k].float() - two["model"][k].float()).abs().max())
             for k in one["model"] if one["model"][k].is_floating_point()]
    assert max(diffs) < 0.5


def test_an_existing_run_is_not_silently_reused(ray_cluster, small, tmp_path):
    from sem_dist.distributed.algorithm1 import fit_generator

    cfg = resolve_config("sem", 32, overrides={**TINY, "trainer.steps": 2})
    fit_generator(cfg, small, _opts(tmp_path, workers=1, name="again"))
    with pytest.raises(FileExistsError, match="--resume"):
        fit_generator(cfg, small, _opts(tmp_path, workers=1, name="again"))
    state, metrics = fit_generator(cfg, small, _opts(tmp_path, workers=1, name="again", resume=True))
    assert state["step"] == 2 and metrics["step"] == 2  # already complete: the finished generator comes back


def _train_workers():
    """PIDs of the Ray Train worker processes, found as an operator would: by their process title."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                pids.append(int(proc.name))
        except OSError:  # the process ended while we looked
            pass
    return pids


def test_killed_worker_restarts_from_the_latest_checkpoint(ray_cluster, small, tmp_path):
    from sem_dist.distributed.algorithm1 import fit_generator

    cfg = resolve_config("sem", 32, overrides={**TINY, "trainer.steps": 40, "trainer.checkpoint_every": 4,
                                               "solver.steps": 4})
    result = {}
    runner = threading.Thread(target=lambda: result.update(
        zip(("state", "metrics"), fit_generator(cfg, small, _opts(tmp_path, workers=2, name="kill", max_failures=2)))))
    runner.start()
    run_dir = tmp_path / "runs" / "kill"
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoint_manager_snapshot.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = _train_workers()
    assert pids, "no Ray Train worker to kill"
    os.kill(pids[-1], signal.SIGKILL)
    runner.join(timeout=600)
    assert not runner.is_alive()
    assert result["state"]["step"] == 40  # all M steps completed
    assert 0 < result["metrics"]["resumed_from"] < 40  # the last attempt resumed from a checkpoint, not step 0


def test_checkpoints_land_in_s3(ray_cluster, small, s3_env):
    import boto3

    from sem_dist.distributed.algorithm1 import RayTrainOptions, fit_generator
    from sem_dist.engine.spec import EngineSpec

    endpoint, bucket = s3_env
    cfg = resolve_config("sem", 32, overrides={**TINY, "trainer.steps": 4})
    opts = RayTrainOptions(engine=EngineSpec(workers=2), checkpoint=f"s3://{bucket}/runs", name="s3run", log_every_s=0)
    state, _ = fit_generator(cfg, small, opts)
    assert state["step"] == 4
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(
        Bucket=bucket, Prefix="runs/s3run/")["Contents"]]
    assert any(k.endswith("/generator.pt") and "/checkpoint_" in k for k in keys), keys


def test_restarted_driver_resumes_with_resume_flag(ray_cluster, tiny_digits, s3_env, tmp_path):
    """`sem-dist protect --workers 2` on the cluster, its driver killed after a checkpoint; the same command
    with --resume continues from that checkpoint and completes."""
    import json
    import subprocess
    import sys

    import boto3

    from sem_dist.data import save_dataset

    endpoint, bucket = s3_env
    data = tmp_path / "data"
    save_dataset(tiny_digits[0], str(data))
    out, ckpt = tmp_path / "out", f"s3://{bucket}/ckpt"
    cmd = [sys.executable, "-m", "sem_dist", "protect", "--data", str(data), "--out", str(out), "--arch", "small_cnn",
           "--steps", "30", "--ku", "3", "--samples", "2", "--ka", "2", "--batch-size", "16", "--workers", "2",
           "--checkpoint-every", "5", "--checkpoint-dir", ckpt]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "SEM_DIST_PROGRESS": "0"}
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            listed = s3.list_objects_v2(Bucket=bucket, Prefix="ckpt/generator/").get("Contents", [])
            if any("checkpoint_manager_snapshot" in o["Key"] for o in listed):  # a checkpoint is committed
                break
            time.sleep(0.5)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
        first.kill()
        first.wait()
    assert not (out / "manifest.json").exists()  # nothing that looks complete
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["protection"]["train_workers"] == 2
    assert 0 < manifest["protection"]["train_resumed_from_step"] < 30


def test_gpu_workers_on_a_gpu_less_machine_fail_at_once(ray_cluster, cli, tiny_digits, tmp_path):
    from sem_dist.data import save_dataset

    save_dataset(tiny_digits[0], str(tmp_path / "data"))
    code, _, err = cli("protect", "--data", tmp_path / "data", "--out", tmp_path / "out", "--arch", "small_cnn",
                       "--steps", "2", "--workers", "2", "--gpus-per-worker", "1")
    # one error line, the last; the plan line before it (how Algorithm 1 gets its data) is not an error
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("sem-dist protect: error: ")]
    assert code == 1 and errors == lines[-1:] and len(lines) <= 2, err
    assert "needs 2 CPUs and 2 GPUs" in errors[0] and "0 GPUs" in errors[0]
    assert not (tmp_path / "out" / "manifest.json").exists()


def _image_rows(data, bad: dict[int, str] | None = None):
    """An image-rows Ray dataset (ids, uint8 CHW images, labels, errors) of an in-memory dataset, in 4
    blocks, with its DatasetInfo-shaped description."""
    from types import SimpleNamespace

    bad = bad or {}
    rows = [{"id": data.ids[i], "image": data.images[i], "label": int(data.labels[i]), "error": bad.get(i, "")}
            for i in range(len(data.ids))]
    _, c, h, w = data.images.shape
    info = SimpleNamespace(count=len(rows), channels=c, height=h, width=w, classes=list(data.classes), source={})
    return ray.data.from_items(rows, override_num_blocks=4), info


def test_a_bad_record_in_a_streamed_dataset_fails_with_its_id(ray_cluster, digits, tmp_path):
    from sem_dist.data.storage import DataError
    from sem_dist.distributed.algorithm1 import fit_generator

    data = digits[0].subset(range(32))
    ds, info = _image_rows(data, bad={5: "truncated PNG"})
    cfg = resolve_config("sem", 32, overrides={**TINY, "trainer.steps": 2})
    with pytest.raises(DataError) as err:
        fit_generator(cfg, ds, _opts(tmp_path, workers=1, name="bad", max_failures=0), info=info)
    assert str(err.value).startswith(f"bad record {data.ids[5]}: truncated PNG") and "\n" not in str(err.value)


def test_one_worker_with_s3_checkpoint_dir_lands_in_the_bucket(ray_cluster, cli, tiny_digits, s3_env, tmp_path):
    """--checkpoint-dir s3://… with --workers 1 goes through Ray Train's storage, not a local ./s3: folder."""
    import boto3

    from sem_dist.data import save_dataset

    endpoint, bucket = s3_env
    save_dataset(tiny_digits[0], str(tmp_path / "data"))
    code, _, err = cli("protect", "--data", tmp_path / "data", "--out", tmp_path / "out", "--arch", "small_cnn",
                       "--steps", "2", "--ku", "2", "--samples", "1", "--ka", "1", "--batch-size", "16",
                       "--checkpoint-dir", f"s3://{bucket}/ckpt")
    assert code == 0, err
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(
        Bucket=bucket, Prefix="ckpt/")["Contents"]]
    assert any(k.endswith("/generator.pt") and "/checkpoint_" in k for k in keys), keys
    assert not any(p.name.startswith("s3:") for p in Path.cwd().iterdir())
