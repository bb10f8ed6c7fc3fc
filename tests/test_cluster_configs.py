"""The cluster configs in cluster/ and the job entry points: the AWS launcher YAML against Ray's own
autoscaler schema and for its pinned image, the KubeRay manifests against the CRDs of the KubeRay release the
docs name and for the keys the operator needs, the IAM permissions the README lists, every `python jobs/...` command the
docs and manifests give parsed by the entry point's own parser, the entry points' errors, and token auth on
the embedded Ray."""
from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from sem_dist.commands import _job as jobs
from sem_dist.data.storage import refuse_credentials

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"


def load(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def test_aws_launcher_yaml_is_valid_for_ray_and_secure():
    cfg, = load("aws.yaml")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))  # what `ray up` does before it contacts AWS (provider defaults merged)
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"] and t["resources"].get("GPU", 0) > 0]
    assert gpu and all(t["max_workers"] > t.get("min_workers", 0) for t in gpu)  # the GPU group autoscales
    assert all("IamInstanceProfile" in t["node_config"] for t in gpu)  # S3 through an instance profile
    assert any("pip install" in c and "sem_dist" in c for c in cfg["setup_commands"])
    # token auth on every Ray process; dashboard (and with it the job API) on the head's loopback only
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert any("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"])
    assert "~/.ray/auth_token" in cfg["file_mounts"]  # `~`: the container user's home
    text = (CLUSTER / "aws.yaml").read_text()
    assert "0.0.0.0" not in text and not re.search(r"AKIA|aws_secret|SecretAccessKey", text, re.IGNORECASE)


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_carry_what_the_operator_needs(name):
    docs = load(f"kuberay/{name}")
    kinds = {d["kind"]: d for d in docs}
    ray_obj = kinds.get("RayJob") or kinds["RayCluster"]
    assert ray_obj["apiVersion"] == "ray.io/v1"
    spec = ray_obj["spec"]
    if ray_obj["kind"] == "RayJob":
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["entrypoint"].startswith("python jobs/protect.py ")
        assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"]
        spec = spec["rayClusterSpec"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "sem-dist-ray-token"}
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    group, = spec["workerGroupSpecs"]
    assert group["maxReplicas"] > group["minReplicas"] >= 0 and group["groupName"]
    container, = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert all(c["resources"]["limits"]["cpu"] for c in spec["headGroupSpec"]["template"]["spec"]["containers"])
    assert not any(d["kind"] == "Secret" for d in docs)  # the token is created by kubectl, never committed
    assert "0.0.0.0" not in (CLUSTER / "kuberay" / name).read_text()


def test_aws_launcher_pins_the_image_its_nodes_run():
    """Python, torch and CUDA come from one image with a fixed tag, built from cluster/Dockerfile (whose base
    names the project's Python and Ray); each node type names its AMI (the NVIDIA driver), the GPU nodes check
    the driver is new enough for the CUDA of the torch wheels."""
    cfg, = load("aws.yaml")
    image = cfg["docker"]["image"]
    name, _, tag = image.rpartition(":")
    assert name.endswith("/sem-dist") and tag and tag != "latest" and "/" not in tag, image
    pyproject = (REPO / "pyproject.toml").read_text()
    assert tag == re.search(r'^version = "(.+)"', pyproject, re.MULTILINE).group(1)
    assert f"sem-dist:{tag}" in (CLUSTER / "README.md").read_text()  # the tag its `docker build -t` gives
    pins = dict(re.findall(r'^    "([\w-]+)(?:\[[^]]*\])?==([^"]+)"', pyproject, re.MULTILINE))
    base = re.search(r"^FROM (\S+)", (CLUSTER / "Dockerfile").read_text(), re.MULTILINE).group(1)
    # the image's Python is the one the project is tested with (this interpreter)
    assert base == f"rayproject/ray:{pins['ray']}-py{sys.version_info.major}{sys.version_info.minor}-gpu", base
    assert pins["torch"] == "2.14.1"
    for name, node_type in cfg["available_node_types"].items():
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", node_type["node_config"]["ImageId"]), name
    assert cfg["provider"]["region"]  # an AMI id means something only in its region
    for name, node_type in cfg["available_node_types"].items():
        if node_type["resources"].get("GPU", 0) > 0:
            commands = node_type["initialization_commands"]
            assert any("nvidia-smi" in c and "580" in c for c in commands), name
            assert commands[0] == cfg["initialization_commands"][0]  # the node type's list replaces the global one
    assert not any("pip install" in c and "--no-deps" not in c for c in cfg["setup_commands"])


def test_readme_lists_the_iam_permissions():
    """cluster/README.md lists the IAM actions of the AWS path as a list, iam:PassRole included, and the
    project README links to that list."""
    text = (CLUSTER / "README.md").read_text()
    section = text[text.index("### IAM permissions"):]
    section = section[:section.index("\n## ")]
    bullets = re.findall(r"^- (.*(?:\n  .*)*)", section, re.MULTILINE)
    listed = {a for b in bullets for a in re.findall(r"`([a-z0-9]+:[A-Za-z*]+)`", b)}
    assert {"iam:PassRole", "s3:GetObject", "s3:PutObject", "s3:ListBucket", "ec2:RunInstances",
            "ecr:GetAuthorizationToken"} <= listed, listed
    assert any(b.startswith("`iam:PassRole` on the `sem-dist-s3` role") for b in bullets)  # head -> workers
    assert "cluster/README.md#iam-permissions" in (REPO / "README.md").read_text()


# ---- KubeRay manifests against the operator's CRDs ------------------------------------------------------

SCHEMA = CLUSTER / "schema"


def kuberay_crds() -> dict[str, dict]:
    """{kind: the v1 openAPIV3Schema} from the upstream CRD files, each checked against the git blob id
    cluster/schema/README.md records for it (so the files are the upstream text, byte for byte)."""
    table = re.findall(r"^\| `(\S+\.yaml\.gz)` \| `(\S+)` \| `([0-9a-f]{40})` \|", (SCHEMA / "README.md").read_text(),
                       re.MULTILINE)
    assert len(table) == 2
    crds = {}
    for file, _, blob in table:
        raw = gzip.decompress((SCHEMA / file).read_bytes())
        assert hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest() == blob, file
        crd = yaml.safe_load(raw)
        version, = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        crds[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return crds


def pruning(schema: dict) -> dict:
    """The schema with what the API server does to unknown fields made an error: a Kubernetes structural
    schema drops (prunes) every field its `properties` do not list, unless `x-kubernetes-preserve-unknown-fields`
    is set, and says nothing. A misspelt `secretNmae` would vanish, KubeRay would then make a token of its own,
    and our Secret would protect nothing; plain JSON Schema would accept it. So: `additionalProperties: false`
    wherever the schema lists `properties`, has no `additionalProperties` and does not preserve unknown fields."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {k: pruning(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = pruning(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [pruning(s) for s in schema[key]]
    return out


def crd_errors(doc: dict, crds: dict[str, dict]) -> list[str]:
    """Each way ``doc`` breaks its kind's CRD schema, as 'path: message'. OpenAPI v3.0 schemas are JSON Schema
    draft 4 in what they check here; `x-kubernetes-*` keys are not JSON Schema and are ignored by the validator
    (CEL rules in `x-kubernetes-validations` are not evaluated)."""
    validator = jsonschema.Draft4Validator(pruning(crds[doc["kind"]]))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.fixture(scope="module")
def crds() -> dict[str, dict]:
    return kuberay_crds()


def test_kuberay_version_is_the_one_the_crds_come_from():
    tag = re.search(r"tag `v(\d+\.\d+)\.\d+`", (SCHEMA / "README.md").read_text()).group(1)
    assert f"KubeRay ≥ {tag})" in (CLUSTER / "README.md").read_text()
    for name in ("raycluster.yaml", "rayjob.yaml"):
        named = set(re.findall(r"KubeRay >= (\d+\.\d+)", (CLUSTER / "kuberay" / name).read_text()))
        assert named == {tag}, (name, named)


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_match_the_crd_schema(name, crds):
    ray_docs = [d for d in load(f"kuberay/{name}") if d["apiVersion"].startswith("ray.io/")]
    assert ray_docs and {d["kind"] for d in ray_docs} <= set(crds)
    for doc in ray_docs:
        assert crd_errors(doc, crds) == [], name


def test_crd_check_catches_a_wrong_field(crds):
    """A misspelt key, an unknown key deep in the pod template and a wrong type are each reported with their
    path; without the pruning rule the misspelt key passes, which is why it is there."""
    job, = [d for d in load("kuberay/rayjob.yaml") if d["kind"] == "RayJob"]
    bad = json.loads(json.dumps(job))
    auth = bad["spec"]["rayClusterSpec"]["authOptions"]
    auth["secretNmae"] = auth.pop("secretName")
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagee"] = "x"
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "4"
    errors = crd_errors(bad, crds)
    assert len(errors) == 3, errors
    assert any(e.startswith("spec.rayClusterSpec.authOptions: ") and "'secretNmae'" in e for e in errors)
    assert any(e.startswith("spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0: ")
               and "'imagee'" in e for e in errors)
    assert any(e.startswith("spec.rayClusterSpec.workerGroupSpecs.0.replicas: ") for e in errors)
    assert list(jsonschema.Draft4Validator(crds["RayJob"]).iter_errors(bad))  # the type error only...
    assert not any("secretNmae" in e.message for e in jsonschema.Draft4Validator(crds["RayJob"]).iter_errors(bad))


def documented_job_commands() -> list[list[str]]:
    """Every `python jobs/NAME.py ...` command in cluster/README.md, docs/cluster.md and the manifests."""
    texts = [(CLUSTER / "README.md").read_text(), (REPO / "docs" / "cluster.md").read_text(),
             load("kuberay/rayjob.yaml")[0]["spec"]["entrypoint"]]
    commands = []
    for text in texts:
        for match in re.finditer(r"python (jobs/\w+\.py(?:[^\n`]|\\\n)*)", text):
            commands.append(shlex.split(match.group(1).replace("\\\n", " ")))
    return commands


def test_documented_job_commands_parse(tmp_path, monkeypatch):
    doc = (REPO / "docs" / "cluster.md").read_text()
    (tmp_path / "eval.yaml").write_text(re.search(r"```yaml\n# eval.yaml\n(.*?)```", doc, re.DOTALL).group(1))
    monkeypatch.chdir(tmp_path)  # a job's working directory: the documented --config file is there
    commands = documented_job_commands()
    assert len(commands) >= 3 and {c[0] for c in commands} >= {"jobs/protect.py", "jobs/evaluate.py"}
    for cmd in commands:
        assert (REPO / cmd[0]).is_file()
        command = Path(cmd[0]).stem
        if command == "tune" or "--help" in cmd:
            continue  # `sem-dist tune` is another issue's: until it exists the entry point says so and exits 2
        args = jobs.parse(command, importlib.import_module(f"sem_dist.commands.{command}"), cmd[1:])
        for value in vars(args).values():  # no documented URI carries credentials
            if isinstance(value, str):
                refuse_credentials(value)


def test_embedded_ray_requires_the_token(tmp_path):
    """The Ray that `connect()` starts (--workers N without --address) has token auth on and its dashboard
    on loopback: the job API refuses a request without the token, and accepts the generated one."""
    import shutil
    import subprocess
    import sys
    import tempfile
    import urllib.error
    import urllib.request

    script = ("import os, ray\nfrom ray._private.worker import get_dashboard_url\n"
              "from sem_dist.distributed.cluster import connect\n"
              "connect(num_cpus=1)\nprint(os.environ['RAY_AUTH_MODE'], get_dashboard_url(), flush=True)\n"
              "input()\nray.shutdown()\n")
    ray_tmp = tempfile.mkdtemp(prefix="sdemb-", dir="/tmp")  # its own, short: Ray's socket paths are limited
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(tmp_path),
                                                                              "RAY_TMPDIR": ray_tmp}
    proc = subprocess.Popen([sys.executable, "-c", script],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        mode, url = proc.stdout.readline().split()
        assert mode == "token" and url.startswith("127.0.0.1:")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://{url}/api/jobs/", timeout=30)
        assert refused.value.code == 401
        token = (tmp_path / ".ray" / "auth_token").read_text().strip()
        req = urllib.request.Request(f"http://{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
    finally:
        try:
            proc.communicate("\n", timeout=120)  # ray.shutdown() stops what it started
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_job_entry_points_flags_config_and_errors(tmp_path, capsys):
    """The entry points' own behaviour, without a cluster: a job YAML of flags under command-line flags,
    one-line errors (credentials in a URI, a bad YAML value), and the hook for a command not built yet."""
    evaluate = importlib.import_module("sem_dist.commands.evaluate")
    (tmp_path / "eval.yaml").write_text("train: s3://b/prot\ntest: s3://b/test\narch: small_cnn\nseeds: 0,6178\n"
                                        "adv-rho: 4/255\njson: true\n")
    args = jobs.parse("evaluate", evaluate, ["--config", str(tmp_path / "eval.yaml"), "--arch", "vgg16"])
    assert (args.train, args.test, args.arch, args.seeds, args.json) == ("s3://b/prot", "s3://b/test", "vgg16",
                                                                         [0, 6178], True)
    assert args.adv_rho == pytest.approx(4 / 255)
    (tmp_path / "bad.yaml").write_text("train: x\ntest: y\nseeds: a,b\n")
    with pytest.raises(SystemExit) as bad:
        jobs.parse("evaluate", evaluate, ["--config", str(tmp_path / "bad.yaml")])
    assert bad.value.code == 2 and "seeds" in capsys.readouterr().err.splitlines()[-1]

    secret = "s3cr3t/+value"
    code = jobs.main("protect", ["--data", f"s3://AKIAKEY:{secret}@bucket/d", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1 and err.startswith("jobs/protect.py: error: --data s3://bucket/d: ")
    assert secret not in out + err and "AKIAKEY" not in out + err and not (tmp_path / "out").exists()

    assert jobs.main("not_built_yet", []) == 2
    assert capsys.readouterr().err == "jobs/not_built_yet.py: error: `sem-dist not_built_yet` is not built yet in " \
                                      "this version of sem_dist\n"
