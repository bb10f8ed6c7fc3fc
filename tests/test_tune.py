"""`sem-dist tune`: Ray Tune searches of the protection config by victim accuracy, on a real local Ray.

Tiny data (240 training / 120 test digits), a small CNN and a few generator steps keep a trial at a few
seconds of compute; the searches run 3–4 trials each.
"""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

# every trial: a small CNN generator for a few steps and a small CNN victim trained for whole epochs
BASE = {"trainer.arch": "small_cnn", "trainer.steps": 3, "trainer.batch_size": 64, "trainer.lr_step": 10 ** 9,
        "solver.steps": 2, "solver.samples": 1, "attack.steps": 1, "budget.rho_u": "8/255",
        "victim.arch": "small_cnn", "victim.epochs": 3, "victim.batch_size": 16, "victim.adv_steps": 1}


@pytest.fixture(scope="module")
def data_uris(digits, tmp_path_factory):
    import numpy as np

    from sem_dist.data import save_dataset

    train, test = digits
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("tune_data")
    save_dataset(train.subset(np.sort(rng.permutation(len(train))[:240])), str(root / "train"))
    save_dataset(test.subset(np.sort(rng.permutation(len(test))[:120])), str(root / "test"))
    return str(root / "train"), str(root / "test")


def space_file(tmp_path, **space) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**BASE, **space}))
    return str(path)


def read_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_search_writes_table_and_heat_map_and_names_the_best_trial(ray_cluster, cli, data_uris, tmp_path):
    """A 2×2 grid of ρ_r × the victim's ρ_a: four trials, the results table, the Table-6 heat map, and a
    best config that is the trial with the lowest victim accuracy."""
    train, test = data_uris
    space = space_file(tmp_path, **{"budget.rho_r": {"grid": [0, "4/255"]}, "victim.adv_rho": {"grid": [0, "2/255"]}})
    code, out, err = cli("tune", "--data", train, "--test", test, "--space", space, "--scheduler", "none",
                         "--max-concurrent", "2", "--storage", tmp_path / "runs", "--name", "grid", "--json")
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    folder = tmp_path / "runs" / "grid"
    assert summary["table"] == str(folder / "results.md") and summary["trials"] == 4
    rows = read_rows((folder / "results.csv").read_text())
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    grid = {(float(r["budget.rho_r"]), float(r["victim.adv_rho"])) for r in rows}
    assert grid == {(0.0, 0.0), (0.0, 2 / 255), (4 / 255, 0.0), (4 / 255, 2 / 255)}
    accs = [float(r["test_acc"]) for r in rows]
    best = summary["best_config"]
    matching = [r for r in rows if (float(r["budget.rho_r"]), float(r["victim.adv_rho"]))
                == (best["budget.rho_r"], best["victim.adv_rho"])]
    assert len(matching) == 1 and float(matching[0]["test_acc"]) == min(accs) == summary["best_test_acc"]
    assert all(float(r["gen_s"]) > 0 and float(r["victim_s"]) > 0 for r in rows)
    md = (folder / "results.md").read_text()
    assert md.count("\n") == 6 and "4/255" in md and "2/255" in md
    assert (folder / "table6.png").stat().st_size > 1000
    assert not (folder / "figure5.png").exists()  # M and J do not vary here


def test_asha_stops_trials_whose_victims_learn(ray_cluster, cli, data_uris, tmp_path):
    """ρ_u = 32/255 keeps victims near chance even from a 6-step generator (we measured 11–18 % over six
    epochs); ρ_u = 1/255 barely protects (60–70 % at epoch 3). Tune's grid varies the alphabetically first
    key fastest, so the two strong arms (K_a = 1, 2) run first and ASHA stops both weak arms at the epoch-3
    rung (with reduction factor 2 it may also stop the worse strong arm)."""
    train, test = data_uris
    space = space_file(tmp_path, **{"attack.steps": {"grid": [1, 2]}, "budget.rho_u": {"grid": ["32/255", "1/255"]},
                                    "trainer.steps": 6, "solver.steps": 5, "victim.epochs": 6})
    code, out, err = cli("tune", "--data", train, "--test", test, "--space", space, "--scheduler", "asha",
                         "--grace-period", "3", "--max-concurrent", "2", "--storage", tmp_path / "runs",
                         "--name", "asha")
    assert code == 0, err[-3000:]
    rows = read_rows((tmp_path / "runs" / "asha" / "results.csv").read_text())
    weak = [r for r in rows if abs(float(r["budget.rho_u"]) - 1 / 255) < 1e-9]
    assert len(weak) == 2 and all(r["status"] == "stopped" and float(r["victim_epoch"]) < 6 for r in weak), rows
    assert any(r["status"] == "done" and float(r["budget.rho_u"]) > 1 / 255 for r in rows), rows


def test_interrupted_search_resumes_without_rerunning_finished_trials(ray_cluster, cli, data_uris, s3_env,
                                                                       tmp_path):
    """A search on S3 storage is interrupted (Ctrl-C) while its second trial runs; --resume finishes it:
    the first trial started once, the interrupted one twice, the third once."""
    import boto3

    endpoint, bucket = s3_env
    train, test = data_uris
    space = space_file(tmp_path, **{"budget.rho_r": {"grid": [0, "2/255", "4/255"]}})
    args = ["tune", "--data", train, "--test", test, "--space", space, "--scheduler", "none", "--max-concurrent", "1",
            "--storage", f"s3://{bucket}/tune", "--name", "resumable"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "SEM_DIST_PROGRESS": "0"}
    s3 = boto3.client("s3", endpoint_url=endpoint)
    log_path = tmp_path / "first.log"
    with open(log_path, "wb") as log:
        first = subprocess.Popen([sys.executable, "-m", "sem_dist", *args], env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and first.poll() is None:
            starts = s3.list_objects_v2(Bucket=bucket, Prefix="tune/resumable/starts/").get("Contents", [])
            if len(starts) >= 2:  # the first trial is done, the second has started
                break
            time.sleep(0.5)
        assert first.poll() is None, log_path.read_text()[-3000:]
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=120) == 130, log_path.read_text()[-3000:]
    assert "rerun with --resume" in log_path.read_text()

    code, out, err = cli(*args, "--resume")
    assert code == 0, err[-3000:]
    text = s3.get_object(Bucket=bucket, Key="tune/resumable/results.csv")["Body"].read().decode()
    rows = sorted(read_rows(text), key=lambda r: r["trial_id"])
    assert [r["status"] for r in rows] == ["done"] * 3
    assert [int(r["starts"]) for r in rows] == [1, 2, 1]


def test_multi_worker_trials_forward_generator_progress_to_optuna_and_asha(ray_cluster, cli, data_uris, tmp_path):
    """--workers 2: each trial drives a 2-worker Ray Train run of Algorithm 1 whose every step reaches Tune
    as a generator-phase result, then reports its victim's epochs. Optuna and ASHA see the objective only
    from victim epochs (a generator result stopping or confusing them would end a trial before its victim);
    the embedded Ray's 4 CPUs fit one trial (1 + 2 workers) at a time, so --max-concurrent 2 is lowered."""
    train, test = data_uris
    space = space_file(tmp_path, **{"budget.rho_r": {"choice": [0, "4/255"]}, "trainer.checkpoint_every": 1,
                                    "victim.epochs": 2})
    code, out, err = cli("tune", "--data", train, "--test", test, "--space", space, "--search", "optuna",
                         "--num-samples", "2", "--workers", "2", "--max-concurrent", "2", "--scheduler", "asha",
                         "--storage", tmp_path / "runs", "--name", "workers", "--json")
    assert code == 0, err[-3000:]
    assert "--max-concurrent 2 lowered to 1" in err
    folder = tmp_path / "runs" / "workers"
    rows = read_rows((folder / "results.csv").read_text())
    assert len(rows) == 2 and json.loads(out.strip().splitlines()[-1])["trials"] == 2
    for row in rows:
        results = [json.loads(line) for path in folder.glob(f"*{row['trial_id']}*/result.json")
                   for line in path.read_text().splitlines()]
        generator = [r for r in results if r.get("phase") == "generator"]
        victim = [r for r in results if r.get("phase") == "victim"]
        assert [r["step"] for r in generator] == [1, 2, 3] and all(r["workers"] == 2 for r in generator), results
        assert all(r["objective"] is None and "checkpoint_path" in r for r in generator)
        assert results.index(generator[-1]) < results.index(victim[0])  # the generator's phase comes first
        assert victim[0]["victim_epoch"] == 1 and 0 <= victim[-1]["test_acc"] <= 1
        assert float(row["test_acc"]) == victim[-1]["test_acc"] and float(row["gen_s"]) > 0
    assert any(r["status"] == "done" for r in rows), rows


def test_s3_profile_reaches_the_search_and_its_trials(moto_endpoint, data_uris, tmp_path):
    """Storage on S3 through --s3-profile only: a search in its own embedded Ray, whose nodes (like the
    driver) have the profile but no keys in their environment, writes its state, start records and results
    to the bucket; the same search with a profile nobody has fails with one line before any trial."""
    import boto3

    from conftest import S3_KEY, S3_SECRET

    train, test = data_uris
    creds = tmp_path / "credentials"
    creds.write_text(f"[sem]\naws_access_key_id = {S3_KEY}\naws_secret_access_key = {S3_SECRET}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_CONFIG_FILE=str(tmp_path / "no-config"),
               AWS_ENDPOINT_URL=moto_endpoint, AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               SEM_DIST_PROGRESS="0")
    bucket = f"b-{os.urandom(6).hex()}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                      region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    args = [sys.executable, "-m", "sem_dist", "tune", "--data", train, "--test", test, "--space",
            space_file(tmp_path, **{"victim.epochs": 1}), "--scheduler", "none", "--storage", f"s3://{bucket}/tune",
            "--name", "profiled"]
    bad = subprocess.run([*args, "--s3-profile", "nope"], env=env, capture_output=True, text=True, timeout=120)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 1 and len(lines) == 1 and "profile (nope) could not be found" in lines[0], bad.stderr[-3000:]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)

    good = subprocess.run([*args, "--s3-profile", "sem"], env=env, capture_output=True, text=True, timeout=400)
    assert good.returncode == 0, good.stderr[-3000:]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert {"tune/profiled/results.csv", "tune/profiled/search.json"} <= set(keys)
    assert sum(k.startswith("tune/profiled/starts/") for k in keys) == 1  # written by the trial
    assert any(k.startswith("tune/profiled/experiment_state") for k in keys)  # Tune's own storage
    rows = read_rows(s3.get_object(Bucket=bucket, Key="tune/profiled/results.csv")["Body"].read().decode())
    assert [r["status"] for r in rows] == ["done"]
    assert S3_SECRET not in good.stdout + good.stderr and S3_KEY not in good.stdout + good.stderr


@pytest.mark.parametrize("space, message", [
    ({"budget.rho_x": 0.1}, "unknown config key 'budget.rho_x'"),
    ({"victim.wings": 2}, "unknown victim key 'victim.wings'"),
    ({"trainer.steps": {"uniform": [100, 100]}}, "trainer.steps: empty range uniform [100, 100]"),
    ({"solver.samples": {"grid": []}}, "solver.samples: grid needs a non-empty list"),
    ({"budget.rho_r": {"grid": ["4/2x55"]}}, "budget.rho_r: not a number or fraction: '4/2x55'"),
    ({"victim.adv_rho": {"choice": [0, "300/255"]}}, "victim.adv_rho=300/255 is outside [0, 1]"),
    ({"budget.rho_a": {"loguniform": [0, 0.1]}}, "budget.rho_a: loguniform needs low > 0"),
])
def test_bad_space_files_fail_with_one_line_before_any_trial(cli, data_uris, tmp_path, space, message):
    train, test = data_uris
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(space))
    code, out, err = cli("tune", "--data", train, "--test", test, "--space", path, "--storage", tmp_path / "runs")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("sem-dist tune: error: "), err
    assert message in lines[0], err
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


def test_multi_worker_trials_over_a_large_split_are_refused(cli, data_uris, tmp_path, monkeypatch):
    """A --workers N trial hands its copy of --data to its Train workers as one object: above the data plane's
    threshold (lowered here) that is refused in one line, from the manifests alone, before any trial."""
    monkeypatch.setenv("SEM_DIST_STREAM_MIN_BYTES", "1000")
    train, test = data_uris
    code, _, err = cli("tune", "--data", train, "--test", test, "--space", space_file(tmp_path), "--workers", "2",
                       "--storage", tmp_path / "runs")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("sem-dist tune: error: tune --workers 2: "), err
    assert "in Ray's object store as one object" in lines[0] and "--workers 1 or --quick" in lines[0], err
    assert not (tmp_path / "runs").exists()


def test_gpu_trials_on_a_gpu_less_machine_fail_at_once(ray_cluster, cli, data_uris, tmp_path):
    """--gpus-per-trial the cluster cannot hold: one line before any trial, not a search stuck in Tune's queue."""
    train, test = data_uris
    started = time.monotonic()
    code, _, err = cli("tune", "--data", train, "--test", test, "--space", space_file(tmp_path),
                       "--gpus-per-trial", "1", "--storage", tmp_path / "runs")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("sem-dist tune: error: "), err
    assert "--gpus-per-trial 1 needs 1 CPUs and 1 GPUs" in lines[0] and "0 GPUs" in lines[0], err
    assert time.monotonic() - started < 60
    assert not (tmp_path / "runs").exists()  # no search record, no trial


def test_trial_resources_carry_the_gpus(ray_cluster):
    """What Tune is handed for each trial: one bundle with the trial's CPUs and GPUs (no GPU needed to check)."""
    from ray import tune

    from sem_dist.distributed.tune import SearchRequest, trial_resources

    req = SearchRequest(data="d", test="t", cpus_per_trial=2, gpus_per_trial=0.5)
    resources = trial_resources(req)
    assert resources.bundles == [{"CPU": 2.0, "GPU": 0.5}] and resources.required_resources == {"CPU": 2.0, "GPU": 0.5}
    assert tune.with_resources(lambda config: None, resources)._resources == resources  # as run_search passes it
    assert trial_resources(SearchRequest(data="d", test="t")).bundles == [{"CPU": 1.0}]


def test_figure5_and_table6_come_from_the_trials_rows(tmp_path):
    """The plots average over the other keys and appear only when the space spans their axes."""
    from sem_dist.analysis.sensitivity import plot_figure5, plot_table6

    rows = [{"trainer.steps": m, "solver.samples": j, "budget.rho_r": r, "victim.adv_rho": a,
             "test_acc": 0.1 + 0.01 * j + 0.001 * m}
            for m in (500, 5000) for j in (1, 3) for r in (0.0, 4 / 255) for a in (0.0, 2 / 255)]
    assert plot_figure5(rows, tmp_path / "f5.png") and (tmp_path / "f5.png").stat().st_size > 1000
    assert plot_table6(rows, tmp_path / "t6.png") and (tmp_path / "t6.png").stat().st_size > 1000
    flat = [dict(r, **{"victim.adv_rho": 0.0}) for r in rows if r["trainer.steps"] == 500 and r["solver.samples"] == 1]
    assert not plot_figure5(flat, tmp_path / "none5.png") and not plot_table6(flat, tmp_path / "none6.png")


def test_space_parses_fractions_fixed_values_and_integer_ranges():
    from ray import tune

    from sem_dist.distributed.search_space import parse_space, to_ray

    space = parse_space({"budget.rho_r": {"grid": ["0", "2/255"]}, "trainer.steps": {"uniform": [100, 200]},
                         "victim.filter": {"choice": ["none", "median"]}, "victim.adv_rho": "4/255"})
    assert space.fixed() == {"victim.adv_rho": 4 / 255}
    assert [p.key for p in space.searched()] == ["budget.rho_r", "trainer.steps", "victim.filter"]
    grid = to_ray(space, "grid")
    assert grid["budget.rho_r"] == {"grid_search": [0.0, 2 / 255]} and grid["victim.adv_rho"] == 4 / 255
    steps = [grid["trainer.steps"].sample() for _ in range(50)]
    assert all(isinstance(s, int) and 100 <= s <= 200 for s in steps)
    assert isinstance(to_ray(space, "random")["budget.rho_r"], tune.search.sample.Categorical)
