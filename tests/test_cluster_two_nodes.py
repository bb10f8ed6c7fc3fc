"""The cluster path end to end on two real Ray nodes (one machine, loopback): a head started with
``ray start --head`` and token authentication, a second node joined with ``ray start --address``, each with
its own temp dir and one CPU, so a two-worker Ray Train run must put one worker on each node. Jobs go in
through ``ray job submit`` exactly as docs/cluster.md writes it; data, output and checkpoints live in a
loopback moto_server bucket. The nodes hold the S3 credentials (as instance profiles would); the one
secret planted there must not appear in any file, log, manifest or checkpoint the runs leave.

Both nodes start once for the module and are stopped (their process groups, then any process still
naming their temp dir) at the end.

A second pair (``one_machine``) shares one temp dir, as two ``ray start`` on one machine do by default
(``/tmp/ray``): there the runtime-env agent of the node that meets a job second deletes and unpacks again the
job's working_dir the driver runs in. The whole digits train split goes through ``jobs/protect.py`` with one
and with two Train workers on it.
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from conftest import S3_KEY, TRAIN_POLL_S

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

    def submit(self, *entrypoint: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
        """The documented command: ``ray job submit --address … --working-dir . -- python jobs/…``, run in
        ``cwd`` (the repository, or a copy of it)."""
        return subprocess.run([RAY, "job", "submit", "--address", self.dashboard, "--working-dir", ".", "--",
                               "python", *entrypoint], cwd=cwd, env=env or self.client_env, capture_output=True,
                              text=True, timeout=900)


def _ray_env(root: Path, moto: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "AWS_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # no PYTHONPATH: the nodes import sem_dist from each job's working_dir, as on a real cluster
    # `python` in a job's entrypoint is the nodes' Python, as in a cluster's image
    # token auth as docs/cluster.md sets it up: RAY_AUTH_MODE=token and the token in ~/.ray/auth_token
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", HOME=str(root / "home"),
               RAY_AUTH_MODE="token", RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=TRAIN_POLL_S,
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


@contextmanager
def _cluster(moto_endpoint: str, shared_temp_dir: bool = False):
    """A head and a second node on loopback; each with its own temp dir (as on two machines), or both in the
    head's (``shared_temp_dir``: two ``ray start`` on one machine without ``--temp-dir``)."""
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
                             "--resources", '{"sem_second": 1}',
                             "--temp-dir", str(root / ("head" if shared_temp_dir else "second"))],
                            node_env, root / "second.log"))
        _wait(lambda: len(_alive(nodes)) == 2, procs, root)
        for node in _alive(nodes):
            name = "head" if shared_temp_dir or "sem_head" in node["resources_total"] else "second"
            nodes.node_dirs[node["node_id"]] = root / name
        yield nodes
    finally:
        _stop(procs, root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def two_nodes(moto_endpoint):
    with _cluster(moto_endpoint) as nodes:
        yield nodes


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


@contextmanager
def _client_bucket(moto_endpoint: str, bucket: str):
    """A user's shell with S3 credentials for the bucket (created here); the variables are restored after."""
    s3 = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": "client-side", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_ENDPOINT_URL": moto_endpoint}
    saved = {k: os.environ.get(k) for k in s3}
    os.environ.update(s3)
    try:
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield s3
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def protect_job(two_nodes, moto_endpoint, tiny_digits):
    """One protect job S3 → S3 with two Ray Train workers and S3 checkpoints; (bucket, job output, job id)."""
    bucket = "two-nodes"
    with _client_bucket(moto_endpoint, bucket) as s3:
        save_dataset(tiny_digits[0], f"s3://{bucket}/data", shard_rows=16)
        done = two_nodes.submit("jobs/protect.py", "--data", f"s3://{bucket}/data", "--out", f"s3://{bucket}/prot",
                                "--workers", "2", "--checkpoint-dir", f"s3://{bucket}/ckpt", *TINY)
        yield bucket, done, s3


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


def test_demo_with_a_local_out_is_refused_on_two_nodes(two_nodes, tmp_path):
    """The demo's cells pass datasets by path under --out: on two nodes a folder only one machine has is
    refused in one line before any data is written."""
    out = tmp_path / "demo"
    done = two_nodes.submit("-m", "sem_dist", "demo", "--out", str(out), "--seeds", "0")
    assert done.returncode != 0
    logs = two_nodes.get(f"/api/jobs/{job_id(done.stdout)}/logs")["logs"]
    errors = [line for line in logs.splitlines() if "error:" in line]
    assert errors == [f"sem-dist demo: error: demo folder --out {out} is on this machine, but the Ray cluster has 2 "
                      "nodes that must all see it: run the demo on one machine (its embedded Ray: no RAY_ADDRESS), "
                      "or --shared-fs if every node mounts it"], logs
    assert not out.exists()


# small enough to be quick, large enough to cross an epoch: 64 rows in 8 shards, B = 16 → 8 rows per worker and
# step, 32 per worker and epoch; 6 steps
LAYOUT_RUN = ["--arch", "small_cnn", "--steps", "6", "--ku", "1", "--samples", "1", "--ka", "1", "--batch-size", "16",
              "--rho-a", "2/255", "--device", "cpu", "--workers", "2", "--cpus-per-worker", "0.5", "--stream"]


def test_streamed_protect_resumes_exactly_on_another_node_layout(two_nodes, ray_cluster, moto_endpoint, digits):
    """Algorithm 1 streamed on two Train workers, stopped after 3 of 6 steps on one node (this session's
    embedded Ray, 4 CPUs), is resumed by `protect --stream --resume` on the two nodes (1 CPU each: the workers
    share one, Ray Data reads on the other): its generator equals, bit for bit, a run never stopped on one node.
    The rows a rank gets depend on neither where blocks land nor how many CPUs the cluster has (8 shards: the
    two nodes' default read parallelism, 2 × 2 CPUs, would put two shards in each block)."""
    import io

    import torch

    from sem_dist.cli import build_parser
    from sem_dist.commands.protect import OVERRIDES
    from sem_dist.config import resolve_config
    from sem_dist.data.storage import StorageOptions
    from sem_dist.distributed.algorithm1 import RayTrainOptions, fit_generator
    from sem_dist.distributed.dataset import read_rows
    from sem_dist.engine.spec import EngineSpec

    bucket = "layouts"
    data, ckpt = f"s3://{bucket}/data", f"s3://{bucket}/ckpt"
    with _client_bucket(moto_endpoint, bucket):
        save_dataset(digits[0].subset(range(64)), data, shard_rows=8)
        # the configuration `protect` builds from these flags, and the Ray Train run it names "generator"
        args = build_parser().parse_args(["protect", "--data", data, "--out", "-", *LAYOUT_RUN])
        cfg = resolve_config("sem", 8, overrides={k: getattr(args, d) for d, k in OVERRIDES.items()
                                                  if getattr(args, d) is not None})
        ds, info = read_rows(data, StorageOptions())

        def fit(name: str, **kw):
            return fit_generator(cfg, ds, RayTrainOptions(engine=EngineSpec(workers=2), checkpoint=ckpt, name=name,
                                                          log_every_s=0, **kw),
                                 info=info)

        full, _ = fit("uninterrupted")
        part, _ = fit("generator", stop_after=3)
        assert part["step"] == 3 and part["stream"]["positions"] == [[0, 24], [0, 24]]
        done = two_nodes.submit("jobs/protect.py", "--data", data, "--out", f"s3://{bucket}/protected",
                                "--checkpoint-dir", ckpt, "--resume", *LAYOUT_RUN)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        manifest = load_dataset(f"s3://{bucket}/protected").meta["manifest"]["protection"]
        assert (manifest["train_feed"], manifest["train_workers"], manifest["train_resumed_from_step"]) == \
            ("ray-data", 2, 3)
        s3 = boto3.client("s3")
        final = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="ckpt/generator/")["Contents"]
                 if o["Key"].endswith("/generator.pt")]
        states = [torch.load(io.BytesIO(s3.get_object(Bucket=bucket, Key=k)["Body"].read()), weights_only=True)
                  for k in final]
        resumed = max(states, key=lambda st: st["step"])
    assert resumed["step"] == full["step"] == 6
    assert resumed["stream"]["positions"] == full["stream"]["positions"] == [[1, 16], [1, 16]]  # into epoch 2
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


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


# ---- two nodes sharing one temp dir, the digits train split (1,437 images) S3 → S3 ----------------------

# small per-step work (the failure this guards against comes before any of it), the whole dataset regenerated
DIGITS_RUN = ["--arch", "small_cnn", "--steps", "2", "--ku", "1", "--samples", "1", "--ka", "1", "--batch-size", "32",
              "--rho-a", "2/255", "--device", "cpu"]
REENTERED = "[job] a node unpacked the job's working_dir again over this driver's"


@pytest.fixture(scope="module")
def one_machine(moto_endpoint, digits):
    """Two nodes in one temp dir, as ``ray start --head`` then ``ray start --address`` on one machine leave
    them; the digits train split in the bucket. (nodes, bucket, the client's S3 variables)."""
    bucket = "one-machine"
    with _client_bucket(moto_endpoint, bucket) as s3:
        save_dataset(digits[0], f"s3://{bucket}/digits/train")
        with _cluster(moto_endpoint, shared_temp_dir=True) as nodes:
            yield nodes, bucket, s3


def _checkout_copy(dst: Path, label: str) -> Path:
    """The repository's files plus one file naming the case: its own package, so each submission is new to
    both nodes' runtime-env agents (a package an agent has unpacked once it reuses)."""
    # what Ray leaves out anyway (.git, .venv and .gitignore's outputs) is not copied
    left_out = (".git", ".venv", "__pycache__", ".pytest_cache", "*.egg-info", "sem-dist-demo", "efficacy-results",
                "build")
    shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(*left_out))
    (dst / ".test-case").write_text(label)
    return dst


@pytest.mark.parametrize("workers", [1, 2])
def test_protect_job_on_digits_with_nodes_sharing_a_temp_dir(one_machine, digits, workers, tmp_path, monkeypatch):
    """Before the fix every such job died as the driver imported torch, right after its `[job] node` lines:
    `Intel oneMKL FATAL ERROR: Cannot load …/torch/lib/libtorch_cpu.so.` (its working directory had been
    deleted, see sem_dist/commands/_job.py reenter_working_dir)."""
    nodes, bucket, s3 = one_machine
    out = f"s3://{bucket}/protected-w{workers}"
    done = nodes.submit("jobs/protect.py", "--data", f"s3://{bucket}/digits/train", "--out", out,
                        "--workers", str(workers), *DIGITS_RUN,
                        cwd=_checkout_copy(tmp_path / "checkout", f"workers={workers}"))
    logs = done.stdout[-4000:] + done.stderr[-3000:]
    assert done.returncode == 0, logs
    assert nodes.get(f"/api/jobs/{job_id(done.stdout)}")["status"] == "SUCCEEDED"
    assert "FATAL" not in done.stdout
    # the set-up did what it is here for: the second node's agent replaced the driver's directory
    assert REENTERED in done.stdout, logs
    assert f"[job] manifest: {out}/manifest.json" in done.stdout

    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    got = load_dataset(out)
    train = digits[0]
    assert len(train) == 1437 and got.ids == train.ids and got.labels.tolist() == train.labels.tolist()
    manifest = got.meta["manifest"]
    assert manifest["count"] == 1437
    assert manifest["protection"]["train_workers"] == workers
    assert manifest["protection"]["regeneration"]["engine"] == "ray-data"
    diff = got.images.astype(int) - train.images.astype(int)
    assert abs(diff).max() <= 8 and (diff != 0).any()  # ρ_u = 8/255, and noise is there


def test_reenter_working_dir_steps_into_the_directory_unpacked_again(tmp_path, monkeypatch):
    from sem_dist.commands._job import reenter_working_dir, working_dir

    pkg = tmp_path / "_ray_pkg_0123"
    pkg.mkdir()
    monkeypatch.chdir(pkg)
    assert working_dir() == str(pkg) and not reenter_working_dir(str(pkg))  # still the same directory: stays
    shutil.rmtree(pkg)  # what another node's runtime-env agent does, then it unpacks the package again
    pkg.mkdir()
    with pytest.raises(FileNotFoundError):
        os.getcwd()
    assert reenter_working_dir(str(pkg)) and os.getcwd() == str(pkg)
    shutil.rmtree(pkg)
    assert not reenter_working_dir(str(pkg))  # gone for good: nothing to step into
