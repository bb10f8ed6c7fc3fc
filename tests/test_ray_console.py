"""Quiet by default: a driver on Ray prints our lines and one progress bar per stage; Ray's own output (its
INFO lines, Ray Data's progress blocks, Ray Train's worker and controller lines, core_worker notes) goes to
Ray's log files, and one line says where. ``SEM_DIST_DEBUG=1`` / ``--verbose`` bring it back.

Each driver runs in a subprocess, so its whole stdout and stderr (native writes included) are captured."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3
import pytest

TINY = ["--arch", "small_cnn", "--steps", "2", "--ku", "1", "--samples", "1", "--ka", "1", "--batch-size", "16",
        "--device", "cpu"]
# what Ray prints when it has the console: its logging format, worker prefixes, its C++ log lines
RAY_LINE = re.compile(r"\t(INFO|WARNING|ERROR) \S+\.py:\d+ -- |logging_progress|\((RayTrainWorker|TrainController|"
                      r"PlacementGroupCleaner|MapWorker|SplitCoordinator)[^)]*pid=|core_worker\.cc|PreemptionWatcher|"
                      r"Reporting training result|^\[\d{4}-\d\d-\d\d [\d:,]+ [EWIF] \d+ \d+\]|site-packages/ray/", re.M)
LOGS_LINE = re.compile(r"^sem-dist: Ray's own logs: (\S+) \(on each node of a cluster; (.*)\)$", re.M)


def driver_env(**more: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SEM_DIST_DEBUG", "SEM_DIST_VERBOSE", "RAY_DATA_LOGGING_CONFIG")}
    return {**env, "SEM_DIST_PROGRESS": "auto", **more}


@pytest.fixture
def canonical_data(tmp_path, tiny_digits):
    from sem_dist.data import save_dataset

    save_dataset(tiny_digits[0], str(tmp_path / "data"), shard_rows=20)  # 2 shards: 2 regeneration units
    return tmp_path / "data"


def protect(data, out, *flags: str, **env: str) -> tuple[subprocess.CompletedProcess, int]:
    """``sem-dist protect`` in a subprocess: (its exit code and whole output, its pid)."""
    cmd = [sys.executable, "-m", "sem_dist", "protect", "--data", str(data), "--out", str(out), *TINY, *flags]
    with subprocess.Popen(cmd, env=driver_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), proc.pid


def test_streamed_protect_from_s3_on_ray_is_quiet_and_says_where_the_logs_are(ray_cluster, s3_env, tiny_digits):
    """protect --workers 2 --stream, S3 → S3: Algorithm 1 reads its minibatches through Ray Data (no in-memory
    copy), regeneration runs on Ray Data, checkpoints live in the output's staging area and go with it — and
    the console has our lines only."""
    from sem_dist.data import load_dataset, save_dataset

    _, bucket = s3_env  # the driver inherits the test's S3 variables
    save_dataset(tiny_digits[0], f"s3://{bucket}/data", shard_rows=20)  # 2 shards: 2 regeneration units
    address = ray_cluster.get_runtime_context().gcs_address
    # --stream: Ray Data feeds Ray Train too (its deprecation warnings, its SplitCoordinator's output)
    done, pid = protect(f"s3://{bucket}/data", f"s3://{bucket}/out", "--workers", "2", "--stream",
                        RAY_ADDRESS=address)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    assert not RAY_LINE.search(console), console[-3000:]
    # our lines: the feed, the log folder (once), one bar per stage, the summary
    assert "Algorithm 1 on Ray Train (2 worker(s))" in done.stderr and "streamed from storage" in done.stderr
    where = LOGS_LINE.findall(done.stderr)
    assert len(where) == 1 and where[0][1] == "SEM_DIST_DEBUG=1 or --verbose shows them here", done.stderr
    logs = Path(where[0][0])
    assert logs.is_dir() and logs == Path(ray_cluster._private.worker._global_node.get_logs_dir_path())
    bars = done.stderr.replace("\r", "\n")
    assert re.search(r"sem: generator \(Alg\. 1, Ray Train × 2\): 100%.*2/2", bars), bars
    assert re.search(r"sem: protect \(Alg\. 4, Ray Data × 2\): 100%.*40/40", bars), bars
    assert done.stdout.strip().splitlines() == [done.stdout.strip()] and "protected 40 images" in done.stdout
    # what Ray would have printed is in its files: the driver's ray loggers and native stderr, Ray Data's log
    driver_log = (logs / f"sem-dist-driver-{pid}.log").read_text()
    assert "Connected to Ray cluster" in driver_log
    assert "core_worker.cc" in driver_log and "MapWorker(MapBatches(" in driver_log  # a regeneration stage's actor
    assert "Execution plan of Dataset" in (logs / "ray-data" / "ray-data.log").read_text()

    got = load_dataset(f"s3://{bucket}/out")
    p = got.meta["manifest"]["protection"]
    assert (p["train_feed"], p["train_workers"], p["regeneration"]["engine"]) == ("ray-data", 2, "ray-data")
    assert sorted(got.ids) == sorted(tiny_digits[0].ids) and got.meta["manifest"]["count"] == 40
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    assert not [k for k in keys if "_staging" in k], keys


def test_sem_dist_debug_brings_rays_output_back(ray_cluster, canonical_data, tmp_path):
    address = ray_cluster.get_runtime_context().gcs_address
    done, _ = protect(canonical_data, tmp_path / "loud", "--regen-actors", "1", RAY_ADDRESS=address,
                      SEM_DIST_DEBUG="1")
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    assert "INFO worker.py" in console and "Connected to Ray cluster" in console  # ray.init's banner
    assert "streaming_executor.py" in console and "logging_progress.py" in console  # Ray Data's blocks
    assert LOGS_LINE.search(done.stderr).group(2) == "shown here too"


def test_an_embedded_ray_puts_its_banner_and_token_notice_in_the_driver_log(tmp_path):
    """connect() starting Ray itself: its start-up lines and the messages the cluster publishes to drivers go
    to the driver log; the console has our one line."""
    script = ("import time, ray\nfrom ray._private.utils import push_error_to_driver\n"
              "from sem_dist.distributed.cluster import connect\nfrom sem_dist.distributed import logs\n"
              "connect(num_cpus=1)\nprint(logs.driver_log_path(), flush=True)\n"
              # what the cluster publishes to drivers (raylet warnings, worker deaths): Ray prints it on stdout
              "push_error_to_driver(ray._private.worker.global_worker, 'test', 'a message for the drivers')\n"
              "time.sleep(3)\nray.shutdown()\n")
    ray_tmp = tempfile.mkdtemp(prefix="sdlog-", dir="/tmp")  # its own, short: Ray's socket paths are limited
    env = {k: v for k, v in driver_env().items() if not k.startswith("RAY_")} | {"HOME": str(tmp_path),
                                                                               "RAY_TMPDIR": ray_tmp}
    try:
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stderr.strip().splitlines() == [LOGS_LINE.search(done.stderr).group(0)], done.stderr
        driver_log = Path(done.stdout.strip()).read_text()
        assert "Started a local Ray instance" in driver_log and "Token authentication is enabled" in driver_log
        assert "a message for the drivers" in driver_log and len(done.stdout.strip().splitlines()) == 1
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_verbose_flag_of_the_ray_commands_sets_it_for_that_run_only(monkeypatch):
    from sem_dist.cli import build_parser
    from sem_dist.commands import run_command
    from sem_dist.distributed.logs import verbose

    for var in ("SEM_DIST_DEBUG", "SEM_DIST_VERBOSE"):
        monkeypatch.delenv(var, raising=False)
    seen = []
    commands = (["protect", "--data", "d", "--out", "o"],
                ["regenerate", "--generator", "g", "--data", "d", "--out", "o"], ["convert", "digits", "o"],
                ["evaluate", "--train", "a", "--test", "b"],
                ["tune", "--data", "a", "--test", "b"], ["demo"])
    for argv in commands:
        for flag in ([], ["--verbose"]):
            run_command("t", lambda a: seen.append((argv[0], verbose())), build_parser().parse_args(argv + flag))
    assert seen == [(argv, on) for argv in ("protect", "regenerate", "convert", "evaluate", "tune", "demo")
                    for on in (False, True)]
    assert not verbose()
