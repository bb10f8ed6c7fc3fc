"""`sem-dist evaluate` end to end on canonical datasets written by the data layer."""
from __future__ import annotations

import json

import pytest

from sem_dist.cli import main
from test_victims_options import noisy


@pytest.fixture(scope="module")
def stored(digits, tmp_path_factory):
    from sem_dist.data import save_dataset

    root = tmp_path_factory.mktemp("eval")
    train, test = digits
    save_dataset(noisy(train.subset(range(64))), str(root / "train"))  # noise stored, as with --keep-noise
    save_dataset(test.subset(range(60)), str(root / "test"))
    return root


def test_evaluate_json_record_and_curve(stored, tmp_path, capsys):
    record = tmp_path / "runs" / "eval.json"
    code = main(["evaluate", "--train", str(stored / "train"), "--test", str(stored / "test"), "--arch", "small_cnn",
                 "--steps", "3", "--batch-size", "16", "--poison-ratio", "1/4", "--seeds", "0,1",
                 "--sequential", "--record", str(record), "--device", "cpu", "--json"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert 0.0 <= summary["test_acc"] <= 1.0 and summary["seeds"] == [0, 1] and len(summary["per_seed"]) == 2
    assert "16 poisoned, trained on 64" in lines[0]
    rec = json.loads(record.read_text())
    assert rec["test_acc"] == summary["test_acc"]
    assert rec["victim"]["poison_ratio"] == 0.25 and rec["protection"] is None  # no manifest protection entry
    assert len(rec["runs"][1]["poisoning"]["poisoned_indices"]) == 16
    assert record.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_seeds_as_ray_tasks_equal_sequential(stored, tmp_path, capsys, ray_cluster, monkeypatch):
    """--seeds runs one Ray task per seed, each reading the data from storage itself (the driver loads
    nothing), and so does one seed on data above the threshold (lowered here to 1,000 bytes); every seed's
    numbers equal the in-process sequential run's at the tasks' one torch thread (CPU float sums depend on
    the thread count, not on where a victim runs)."""
    import torch

    common = ["evaluate", "--train", str(stored / "train"), "--test", str(stored / "test"), "--arch", "small_cnn",
              "--steps", "4", "--batch-size", "16", "--adv-rho", "4/255", "--adv-steps", "2", "--device", "cpu",
              "--json"]
    records, err = {}, {}
    threads = torch.get_num_threads()
    try:
        for mode, extra in (("ray", ["--seeds", "0,6178,42"]), ("sequential", ["--seeds", "0,6178,42", "--sequential"]),
                            ("one-big", ["--seeds", "0"])):
            if mode == "one-big":
                monkeypatch.setenv("SEM_DIST_STREAM_MIN_BYTES", "1000")
            torch.set_num_threads(1)
            record = tmp_path / f"{mode}.json"
            assert main(common + extra + ["--record", str(record)]) == 0
            records[mode], err[mode] = json.loads(record.read_text()), capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
    on_ray = "sem-dist evaluate: --train and --test (0.1 MiB of pixels) read from storage by each victim's Ray task"
    assert on_ray in err["ray"] and on_ray in err["one-big"], err
    assert "(0.1 MiB of pixels) loaded in this process" in err["sequential"], err["sequential"]
    same = lambda run: (run["seed"], run["test_acc"], run["mean_loss"], run["curve"])  # noqa: E731
    assert same(records["one-big"]["runs"][0]) == same(records["sequential"]["runs"][0])
    for key in ("test_acc", "test_acc_std", "train_acc", "seeds", "data", "protection"):
        assert records["ray"][key] == records["sequential"][key]
    assert [same(r) for r in records["ray"]["runs"]] == [same(r) for r in records["sequential"]["runs"]]
    assert len({r["mean_loss"] for r in records["ray"]["runs"]}) == 3  # the seeds really differ


def test_evaluate_errors_are_one_line(stored, tmp_path, capsys, monkeypatch):
    code = main(["evaluate", "--train", str(tmp_path / "missing"), "--test", str(stored / "test"),
                 "--record", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("sem-dist evaluate: error:")
    code = main(["evaluate", "--train", str(stored / "train"), "--test", str(stored / "test"), "--arch", "small_cnn",
                 "--steps", "2", "--filter", "none", "--adv-rho", "2", "--record", str(tmp_path / "r.json")])
    assert code == 1 and "outside [0, 1]" in capsys.readouterr().err
    # --sequential above the threshold would load the split here: refused in one line naming the way out
    monkeypatch.setenv("SEM_DIST_STREAM_MIN_BYTES", "1000")
    code = main(["evaluate", "--train", str(stored / "train"), "--test", str(stored / "test"), "--sequential",
                 "--record", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["sem-dist evaluate: error: --sequential would load 0.1 MiB of pixels into this "
                                 "process, at or above 0.0 MiB ($SEM_DIST_STREAM_MIN_BYTES); drop --sequential: each "
                                 "victim then reads the data in its own Ray task"]


def test_help_explains_units(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "[0,1] pixel units" in text and "4/255" in text and "SGD steps" in text
