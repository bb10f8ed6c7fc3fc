"""The cluster path end to end on two real Ray nodes (one machine, loopback): a head started with
``ray start --head`` and token authentication, a second node joined with ``ray start --address``, each with
its own temp dir and one CPU, so a two-worker Ray Train run must put one worker on each node. Jobs go in
through ``ray job submit`` exactly as docs/cluster.md writes it; data, output and checkpoints live in a
loopback moto_server bucket. The nodes hold the S3 credentials (as instance profiles would); the one
secret planted there must not appear in any file, log, manifest or checkpoint the runs leave.

Both nodes start once for the module and are stopped (their process groups, then any process still
naming their temp dir) at the end.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from conftest import S3_KEY

from sem_dist.data import load_dataset, save_dataset

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
# the nodes' AWS secret key (moto accepts any); made at run time, so this file's uploaded copy can't hold it
PLANTED = f"planted-{uuid.uuid4().hex}"
TINY = ["--arch", "small_cnn", "--steps", "2", "--checkpoint-every", "1", "--ku", "1", "--samples", "1", "--ka", "1",
        "--batch-size", "16", "--rho-a", "2/255", "--device", "cpu"]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class TwoNodes:
    root: Path  # both nodes' temp dirs and the token live under here
    dashboard: str  # http://127.0.0.1:PORT, the job-submission endpoint
    client_env: dict  # a user's shell: token auth on, the token file, AWS credentials
    token: str
    node_dirs: dict  # node id -> that node's temp dir

    def get(self, path: str, token: str | None = None):
        req = urllib.request.Request(f"{self.dashboard}{path}",
                                     headers={"Authorization": f"Bearer {token or self.token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read().decode()
        return json.loads(body) if body[:1] in "[{" else body

    def submit(self, *entrypoint: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """The documented command: ``ray job submit --address … --working-dir . -- python jobs/…``."""
        return subprocess.run([RAY, "job", "submit", "--address", self.dashboard, "--working-dir", ".", "--",
                               "python", *entrypoint], cwd=REPO, env=env or self.client_env, capture_output=True,
                              text=True, timeout=900)


def _ray_env(root: Path, moto: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "AWS_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # no PYTHONPATH: the nodes import sem_dist from each job's working_dir, as on a real cluster
    # `python` in a job's entrypoint is the nodes' Python, as in a cluster's image
    # token auth as docs/cluster.md sets it up: RAY_AUTH_MODE=token and the token in ~/.ray/auth_token
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", HOME=str(root / "home"),
               RAY_AUTH_MODE="token",
               RAY_USAGE_STATS_ENABLED="0", SEM_DIST_PROGRESS="0",
               # a busy machine starts Ray's processes slowly: wait for them instead of aborting
               RAY_raylet_start_wait_time_s="300", RAY_gcs_server_port_wait_time_s="300",
               RAY_agent_register_timeout_ms="300000")
    return env


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:  # its own process group, so teardown reaches every process it spawned
        return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
                                 "--num-gpus", "0", "--object-store-memory", str(150 * 2**20), *args],
                                env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen], root: Path) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    for pid_dir in Path("/proc").glob("[0-9]*"):  # anything that escaped the groups still names our temp dir
        try:
            if str(root) in (pid_dir / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(pid_dir.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture(scope="module")
def two_nodes(moto_endpoint):
    root = Path(tempfile.mkdtemp(prefix="sdray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    (root / "home").mkdir()
    env = _ray_env(root, moto_endpoint)
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    token = (root / "home/.ray/auth_token").read_text().strip()
    node_env = {**env, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": PLANTED,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto_endpoint}
    gcs, dash, client, agent, agent_grpc, rt_env, metrics = free_ports(7)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start(["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                             str(dash), "--ray-client-server-port", str(client), "--dashboard-agent-listen-port",
                             str(agent), "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port",
                             str(rt_env), "--metrics-export-port", str(metrics), "--num-cpus", "1",
                             "--resources", '{"sem_head": 1}', "--temp-dir", str(root / "head")],
                            node_env, root / "head.log"))
        # the submitting user's shell holds AWS credentials too: `ray job submit` must not carry them anywhere
        client_env = {**env, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": PLANTED}
        nodes = TwoNodes(root, f"http://127.0.0.1:{dash}", client_env, token, {})
        _wait(lambda: len(_alive(nodes)) == 1, procs, root)
        agent, agent_grpc, rt_env, metrics = free_ports(4)
        procs.append(_start(["--address", f"127.0.0.1:{gcs}", "--dashboard-agent-listen-port", str(agent),
                             "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(rt_env),
                             "--metrics-export-port", str(metrics), "--num-cpus", "1",
                             "--resources", '{"sem_second": 1}', "--temp-dir", str(root / "second")],
                            node_env, root / "second.log"))
        _wait(lambda: len(_alive(nodes)) == 2, procs, root)
        for node in _alive(nodes):
            name = "head" if "sem_head" in node["resources_total"] else "second"
            nodes.node_dirs[node["node_id"]] = root / name
        yield nodes
    finally:
        _stop(procs, root)
        shutil.rmtree(root, ignore_errors=True)


def _alive(nodes: TwoNodes) -> list[dict]:
    return [n for n in nodes.get("/api/v0/nodes")["data"]["result"]["result"] if n["state"] == "ALIVE"]


def _wait(ready, procs: list[subprocess.Popen], root: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except (OSError, KeyError, ValueError):
            pass
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(f.read_text()[-2000:] for f in root.glob("*.log"))
            raise RuntimeError(f"Ray nodes did not come up:\n{logs}")
        time.sleep(1)


def job_id(output: str) -> str:
    found = re.search(r"Job '(raysubmit_\w+)' submitted successfully", output)
    assert found, output
    return found.group(1)


@pytest.fixture(scope="module")
def protect_job(two_nodes, moto_endpoint, tiny_digits):
    """One protect job S3 → S3 with two Ray Train workers and S3 checkpoints; (bucket, job output, job id)."""
    bucket = "two-nodes"
    s3 = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": "client-side", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_ENDPOINT_URL": moto_endpoint}
    saved = {k: os.environ.get(k) for k in s3}
    os.environ.update(s3)
    try:
        boto3.client("s3").create_bucket(Bucket=bucket)
        save_dataset(tiny_digits[0], f"s3://{bucket}/data", shard_rows=16)
        done = two_nodes.submit("jobs/protect.py", "--data", f"s3://{bucket}/data", "--out", f"s3://{bucket}/prot",
                                "--workers", "2", "--checkpoint-dir", f"s3://{bucket}/ckpt", *TINY)
        yield bucket, done, s3
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_protect_job_runs_on_both_nodes(two_nodes, protect_job, tiny_digits, monkeypatch):
    bucket, done, s3 = protect_job
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jid = job_id(done.stdout)
    assert two_nodes.get(f"/api/jobs/{jid}")["status"] == "SUCCEEDED"

    # every node imports sem_dist from this job's working_dir under its own temp dir, not an installed copy
    where = dict(re.findall(r"\[job\] node (\w+): sem_dist \S+ from (\S+)", done.stdout))
    assert set(where) == set(two_nodes.node_dirs), done.stdout
    for node, path in where.items():
        assert path.startswith(str(two_nodes.node_dirs[node])) and "working_dir_files" in path, path
    # the two Ray Train workers ran one on each node
    actors = two_nodes.get("/api/v0/actors?filter_keys=class_name&filter_predicates=%3D&filter_values=RayTrainWorker"
                           "&detail=true")["data"]["result"]["result"]
    assert sorted(a["node_id"] for a in actors) == sorted(two_nodes.node_dirs), actors
    for line in (f"[job] output: s3://{bucket}/prot", f"[job] manifest: s3://{bucket}/prot/manifest.json",
                 f"[job] checkpoints: s3://{bucket}/ckpt"):
        assert line in done.stdout

    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    got = load_dataset(f"s3://{bucket}/prot")
    train = tiny_digits[0]
    assert got.ids == train.ids and got.meta["manifest"]["count"] == len(train)
    assert got.meta["manifest"]["protection"]["train_workers"] == 2
    assert got.meta["manifest"]["protection"]["regeneration"]["engine"] == "ray-data"
    assert (abs(got.images.astype(int) - train.images.astype(int)).max()) <= 8  # ρ_u = 8/255
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="ckpt/")["Contents"]]
    assert any(k.startswith("ckpt/generator/checkpoint_") and k.endswith(".pt") for k in keys), keys


def test_submission_without_the_token_is_refused(two_nodes, tmp_path):
    before = len(two_nodes.get("/api/jobs/"))
    # a user's shell without the token (no RAY_AUTH_* and no ~/.ray/auth_token)
    env = {k: v for k, v in two_nodes.client_env.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(tmp_path)}
    done = two_nodes.submit("jobs/protect.py", "--help", env=env)
    assert done.returncode != 0
    assert re.search(r"401|[Uu]nauthori[sz]ed", done.stdout + done.stderr), done.stdout + done.stderr
    for token in (None, "wrong-token-0123456789abcdef"):  # the job-submission endpoint itself
        req = urllib.request.Request(f"{two_nodes.dashboard}/api/jobs/", method="POST",
                                     data=json.dumps({"entrypoint": "echo hi"}).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=30)
        assert refused.value.code == (401 if token is None else 403)
    assert len(two_nodes.get("/api/jobs/")) == before  # nothing was submitted


def test_job_with_a_missing_bucket_fails_with_one_line(two_nodes):
    done = two_nodes.submit("jobs/protect.py", "--data", "s3://no-such-bucket-9q/data", "--out",
                            "s3://no-such-bucket-9q/prot", *TINY)
    assert done.returncode != 0
    jid = job_id(done.stdout)
    assert two_nodes.get(f"/api/jobs/{jid}")["status"] == "FAILED"
    logs = two_nodes.get(f"/api/jobs/{jid}/logs")["logs"]
    errors = [line for line in logs.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("jobs/protect.py: error: s3://no-such-bucket-9q/data: "), logs
    assert "bucket does not exist" in errors[0]
    assert "Traceback" not in logs


def test_node_local_checkpoint_folder_is_refused_on_two_nodes(two_nodes, protect_job, tmp_path):
    """A checkpoint folder only the driver's machine has would be lost (or refused by Ray Train) when a
    worker on the other node restarts: refused in one line unless declared shared."""
    bucket, _, s3 = protect_job
    folder = tmp_path / "ckpt"
    done = two_nodes.submit("jobs/protect.py", "--data", f"s3://{bucket}/data", "--out", f"s3://{bucket}/local-ckpt",
                            "--workers", "2", "--checkpoint-dir", str(folder), *TINY)
    assert done.returncode != 0
    jid = job_id(done.stdout)
    assert two_nodes.get(f"/api/jobs/{jid}")["status"] == "FAILED"
    errors = [line for line in two_nodes.get(f"/api/jobs/{jid}/logs")["logs"].splitlines() if "error:" in line]
    assert errors == [f"jobs/protect.py: error: checkpoint folder {folder} is on this machine, but the Ray cluster "
                      "has 2 nodes that must all see it: use s3://bucket/prefix, or --shared-fs if every node mounts "
                      "it"], errors


def test_planted_secret_appears_nowhere(two_nodes, protect_job):
    """Grep every file both nodes' Ray sessions left (logs, job driver logs, runtime env files, Train run
    state), every object in the bucket (output, manifest, checkpoints) and the job's logs as Ray serves them."""
    bucket, done, s3 = protect_job
    assert done.returncode == 0
    secrets = (PLANTED.encode(), two_nodes.token.encode())
    scanned = 0
    for node_dir in two_nodes.node_dirs.values():
        for f in node_dir.rglob("*"):
            if f.is_file() and not f.is_symlink() and not f.is_socket():
                data = f.read_bytes()
                scanned += 1
                assert not any(s in data for s in secrets), f
    assert scanned > 50 and any(two_nodes.root.rglob("job-driver-*.log"))
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], aws_access_key_id=S3_KEY,
                          aws_secret_access_key="x", region_name="us-east-1")
    objects = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert any(o["Key"].endswith("manifest.json") for o in objects) and any(".pt" in o["Key"] for o in objects)
    for obj in objects:
        data = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        assert not any(s in data for s in secrets), obj["Key"]
    logs = two_nodes.get(f"/api/jobs/{job_id(done.stdout)}/logs")["logs"]
    assert logs and PLANTED not in logs and two_nodes.token not in logs
    assert PLANTED not in done.stdout + done.stderr
