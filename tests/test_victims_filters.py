"""Low-pass filters (Table 4): known answers on small arrays, and the victim really trains on filtered images."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sem_dist.victims.filters import low_pass
from sem_dist.victims.train import VictimConfig, train_victim

RAMP = torch.arange(9, dtype=torch.float64).reshape(1, 1, 3, 3) / 8  # [[0,1,2],[3,4,5],[6,7,8]] / 8


def test_impulse_response():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = 1.0
    box = np.zeros((5, 5))
    box[1:4, 1:4] = 1 / 9
    gauss = np.zeros((5, 5))
    gauss[1:4, 1:4] = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    np.testing.assert_allclose(low_pass(x, "mean")[0, 0].numpy(), box)
    np.testing.assert_allclose(low_pass(x, "gaussian")[0, 0].numpy(), gauss)
    np.testing.assert_array_equal(low_pass(x, "median")[0, 0].numpy(), np.zeros((5, 5)))  # an isolated speck vanishes


def test_mirrored_border_known_answers():
    # corner (0,0) sees rows/cols (1,0,1) mirrored: [[4,3,4],[1,0,1],[4,3,4]] / 8
    assert low_pass(RAMP, "mean")[0, 0, 0, 0].item() == pytest.approx(24 / 9 / 8)
    assert low_pass(RAMP, "median")[0, 0, 0, 0].item() == pytest.approx(3 / 8)
    assert low_pass(RAMP, "gaussian")[0, 0, 0, 0].item() == pytest.approx(2 / 8)
    assert low_pass(RAMP, "median")[0, 0, 1, 1].item() == pytest.approx(4 / 8)
    # a linear ramp is reproduced exactly inside the image by both linear filters
    assert low_pass(RAMP, "mean")[0, 0, 1, 1].item() == pytest.approx(4 / 8)


def test_channels_independent_and_constant_images_unchanged():
    x = torch.cat([RAMP, torch.full_like(RAMP, 0.3)], dim=1).float()
    for kind in ("mean", "median", "gaussian"):
        y = low_pass(x, kind)
        assert y.shape == x.shape
        torch.testing.assert_close(y[:, 1], x[:, 1])
        torch.testing.assert_close(y[:, :1], low_pass(x[:, :1], kind))
    assert low_pass(x, "none") is x
    with pytest.raises(ValueError, match="unknown filter 'blur'"):
        low_pass(x, "blur")


def test_victim_trains_on_filtered_images(digits):
    train, _ = digits
    small = train.subset(range(64))
    base = VictimConfig(arch="small_cnn", steps=2, batch_size=32, seed=3)
    plain = train_victim(base, small, None, torch.device("cpu"))
    blurred = train_victim(dataclasses.replace(base, filter="median"), small, None, torch.device("cpu"))
    assert blurred.config["filter"] == "median"
    assert blurred.mean_loss != pytest.approx(plain.mean_loss, rel=1e-6)
