"""What a victim may do against protection — early stopping, partial poisoning, several seeds — and the
records that say what it did. Protected data here is digits plus seeded random int8 noise: these tests
are about bookkeeping and data handling, not about how strong the noise is."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sem_dist.analysis.figures import plot_learning_curves
from sem_dist.data.arrays import ArrayDataset
from sem_dist.victims.early_stopping import EarlyStopping, holdout_validation
from sem_dist.victims.evaluate import evaluate_victims
from sem_dist.victims.poisoning import attach_clean_originals, partial_poisoning, poison_indices
from sem_dist.victims.train import VictimConfig, accuracy, train_victim

CPU = torch.device("cpu")


def noisy(data: ArrayDataset, seed: int = 0) -> ArrayDataset:
    """``data`` with random noise of up to 8 grey levels, stored exactly as `sem-dist protect` stores it."""
    raw = np.random.default_rng(seed).integers(-8, 9, size=data.images.shape)
    protected = np.clip(data.images.astype(np.int16) + raw, 0, 255)
    return data.with_images(protected.astype(np.uint8), (protected - data.images).astype(np.int8))


@pytest.fixture(scope="module")
def small(digits):
    train, test = digits
    return noisy(train.subset(range(64))), test.subset(range(60))


def test_early_stopping_rule():
    es = EarlyStopping(patience=2)
    decisions = [es.update(step, acc) for step, acc in enumerate([0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7], start=1)]
    # improvement at 2; steps 3 and 4 do not improve and at 4 patience (4 - 2 >= 2) is spent
    assert decisions == [False, False, False, True, False, False, True]
    assert (es.best_step, es.best_acc, es.stopped_at) == (5, 0.7, 7)


def test_holdout_swaps_the_requested_share_of_validation_for_clean_originals(small):
    data, _ = small
    train, val, info = holdout_validation(data, 0.25, 0.5, seed=1)
    assert (len(train), len(val)) == (48, 16)
    assert not set(train.ids) & set(val.ids)
    row = {i: k for k, i in enumerate(data.ids)}
    clean = [np.array_equal(val.images[k], data.clean_images()[row[i]]) for k, i in enumerate(val.ids)]
    protected = [np.array_equal(val.images[k], data.images[row[i]]) for k, i in enumerate(val.ids)]
    assert sum(clean) == 8 and sum(protected) == 8
    assert info == {"val_fraction": 0.25, "val_size": 16, "val_clean_ratio": 0.5, "val_clean": 8, "train_size": 48}
    assert holdout_validation(data, 0.25, 0.5, seed=1)[1].ids == val.ids  # seeded
    with pytest.raises(ValueError, match="keep-noise"):
        holdout_validation(data.with_images(data.images, None), 0.25, 0.5, seed=1)


@pytest.mark.trained
def test_early_stopping_stops_and_keeps_best_weights(small):
    data, test = small
    # 16 validation images allow at most 17 distinct accuracies, so with patience 2 (a check every step)
    # training must stop within ~36 of the 60 planned steps
    cfg = VictimConfig(arch="small_cnn", steps=60, batch_size=16, patience=2, val_fraction=0.25, val_clean_ratio=0.5)
    res = train_victim(cfg, data, test, CPU)
    es = res.early_stopping
    # stopped at step 3–4 of 60 over seeds 0–2 × both kernel sets (tests/spread.py small)
    assert es["stopped_at"] is not None and res.steps == es["stopped_at"] < 60
    assert es["stopped_at"] - es["best_step"] >= 2
    assert es["best_val_acc"] == max(p["val_acc"] for p in res.curve)
    at_best = next(p for p in res.curve if p["step"] == es["best_step"])
    assert res.test_acc == es["test_acc"] == at_best["test_acc"] == accuracy(res.model, test, CPU)
    assert (es["val_size"], es["val_clean"], es["patience"]) == (16, 8, 2)


def test_partial_poisoning_mixed_and_clean_only(small):
    data, _ = small
    mixed, info = partial_poisoning(data, 0.25, "mixed", seed=5)
    idx = np.array(info["poisoned_indices"])
    assert len(idx) == info["poisoned"] == 16 and len(np.unique(idx)) == 16
    rest = np.setdiff1d(np.arange(64), idx)
    np.testing.assert_array_equal(mixed.images[idx], data.images[idx])
    np.testing.assert_array_equal(mixed.images[rest], data.clean_images()[rest])
    np.testing.assert_array_equal(mixed.clean_images(), data.clean_images())  # still exact for the hold-out
    only, info2 = partial_poisoning(data, 0.25, "clean-only", seed=5)
    assert info2["poisoned_indices"] == info["poisoned_indices"] and info2["train_size"] == len(only) == 48
    assert only.ids == [data.ids[i] for i in rest]
    np.testing.assert_array_equal(only.images, data.clean_images()[rest])
    assert not np.array_equal(poison_indices(64, 0.25, seed=5), poison_indices(64, 0.25, seed=6))
    with pytest.raises(ValueError, match="keep-noise"):
        partial_poisoning(data.with_images(data.images, None), 0.5, "mixed", seed=0)
    with pytest.raises(ValueError, match="no clean sample"):
        partial_poisoning(data, 1.0, "clean-only", seed=0)


def test_clean_originals_restore_the_noise_by_id(small):
    data, _ = small
    stripped = data.with_images(data.images, None)  # protected without --keep-noise
    shuffled = data.with_images(data.clean_images(), None).subset(np.arange(63, -1, -1))
    restored = attach_clean_originals(stripped, shuffled)
    np.testing.assert_array_equal(restored.noise, data.noise)
    with pytest.raises(ValueError, match="no clean original"):
        attach_clean_originals(stripped, shuffled.subset(range(10)))


def test_victim_records_partial_poisoning(small):
    data, test = small
    res = train_victim(VictimConfig(arch="small_cnn", steps=2, batch_size=16, poison_ratio=0.5, poison_mode="clean-only"),
                       data, test, CPU)
    assert res.poisoning["poisoned"] == 32 and res.poisoning["train_size"] == 32
    assert res.poisoning["poisoned_indices"] == poison_indices(64, 0.5, seed=0).tolist()
    assert res.early_stopping is None


def test_seeds_give_mean_std_and_a_json_record_with_curve(small, tmp_path):
    data, test = small
    data.meta["manifest"] = {"protection": {"method": "sem", "seed": 3}, "source": {"uri": "digits"}}
    rec = evaluate_victims(VictimConfig(arch="small_cnn", steps=4, batch_size=16, eval_every=2), data, test, CPU,
                           seeds=[0, 1], train_uri="s3://KEY:SECRET@bucket/sem?X-Amz-Signature=abc", test_uri="t")
    accs = [r["test_acc"] for r in rec["runs"]]
    assert [r["seed"] for r in rec["runs"]] == rec["seeds"] == [0, 1]
    assert rec["test_acc"] == pytest.approx(np.mean(accs))
    assert rec["test_acc_std"] == pytest.approx(np.std(accs, ddof=1))
    assert [p["step"] for p in rec["runs"][0]["curve"]] == [2, 4]
    assert rec["protection"] == {"method": "sem", "seed": 3, "source": {"uri": "digits"}}
    text = json.dumps(rec)
    assert "SECRET" not in text and "Signature" not in text and rec["data"]["train"]["uri"] == "s3://bucket/sem"
    assert "seed" not in rec["victim"]  # per run, not per record
    plot_learning_curves(rec, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
