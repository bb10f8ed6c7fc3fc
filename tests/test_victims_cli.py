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


def test_evaluate_seeds_as_ray_tasks_equal_sequential(stored, tmp_path, capsys, ray_cluster):
    """--seeds runs one Ray task per seed; every seed's numbers equal the in-process sequential run's at the
    tasks' one torch thread (CPU float sums depend on the thread count, not on where a victim runs)."""
    import torch

    common = ["evaluate", "--train", str(stored / "train"), "--test", str(stored / "test"), "--arch", "small_cnn",
              "--steps", "4", "--batch-size", "16", "--adv-rho", "4/255", "--adv-steps", "2", "--seeds", "0,6178,42",
              "--device", "cpu", "--json"]
    records = {}
    threads = torch.get_num_threads()
    try:
        for mode, extra in (("ray", []), ("sequential", ["--sequential"])):
            torch.set_num_threads(1)
            record = tmp_path / f"{mode}.json"
            assert main(common + extra + ["--record", str(record)]) == 0
            records[mode] = json.loads(record.read_text())
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    for key in ("test_acc", "test_acc_std", "train_acc", "seeds"):
        assert records["ray"][key] == records["sequential"][key]
    for a, b in zip(records["ray"]["runs"], records["sequential"]["runs"]):
        assert (a["seed"], a["test_acc"], a["mean_loss"], a["curve"]) == (b["seed"], b["test_acc"], b["mean_loss"],
                                                                           b["curve"])
    assert len({r["mean_loss"] for r in records["ray"]["runs"]}) == 3  # the seeds really differ


def test_evaluate_errors_are_one_line(stored, tmp_path, capsys):
    code = main(["evaluate", "--train", str(tmp_path / "missing"), "--test", str(stored / "test"),
                 "--record", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("sem-dist evaluate: error:")
    code = main(["evaluate", "--train", str(stored / "train"), "--test", str(stored / "test"), "--arch", "small_cnn",
                 "--steps", "2", "--filter", "none", "--adv-rho", "2", "--record", str(tmp_path / "r.json")])
    assert code == 1 and "outside [0, 1]" in capsys.readouterr().err


def test_help_explains_units(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "[0,1] pixel units" in text and "4/255" in text and "SGD steps" in text
