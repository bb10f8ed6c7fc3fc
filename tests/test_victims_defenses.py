"""Defenses beyond the paper: each changes images as documented, the victim trains on what they make, and
`sem-dist evaluate --defense` runs end to end with one-line errors for bad names and arguments."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sem_dist.models import build_model
from sem_dist.runtime.rng import BatchStream, make_generator
from sem_dist.victims import defenses as D
from sem_dist.victims.filters import low_pass
from sem_dist.victims.train import VictimConfig, victim_data

RNG = np.random.default_rng(0)
# smooth colour images (a real JPEG test needs structure, not white noise) plus a little texture
_yy, _xx = np.mgrid[0:32, 0:32] / 31.0
SMOOTH_RGB = np.stack([np.stack([np.sin(3 * _xx + k) * 0.5 + 0.5, _yy * (k + 1) / 4, (_xx + _yy) / 2])
                       for k in range(4)])
COLOUR = np.clip(SMOOTH_RGB * 235 + RNG.integers(0, 20, SMOOTH_RGB.shape), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("kind", ["gray", "colour"])
def test_jpeg_quality_lowers_psnr_monotonically(digits, kind):
    images = digits[0].images[:32] if kind == "gray" else COLOUR
    scores = [psnr(D.jpeg(images, q), images) for q in (95, 75, 50, 30, 10, 2)]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert np.isfinite(scores[0]) and scores[-1] < 30  # lossy even at 95; quality 2 is badly damaged
    assert D.jpeg(images, 10).shape == images.shape and D.jpeg(images, 10).dtype == np.uint8


def test_grayscale_equal_channels_and_pillow_luma():
    gray = D.grayscale(COLOUR)
    assert gray.shape == COLOUR.shape
    assert (gray[:, 0] == gray[:, 1]).all() and (gray[:, 1] == gray[:, 2]).all()
    pil = np.stack([np.asarray(Image.fromarray(img.transpose(1, 2, 0)).convert("L")) for img in COLOUR])
    np.testing.assert_array_equal(gray[:, 0], pil)
    one = COLOUR[:, :1]
    assert D.grayscale(one) is one  # already grayscale: nothing to do


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_bit_depth_leaves_2_to_the_k_levels(bits):
    ramp = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    out = D.bit_depth(ramp, bits)
    levels = np.unique(out)
    assert len(levels) == 2 ** bits and levels[0] == 0 and levels[-1] == 255
    assert np.abs(out.astype(int) - ramp).max() <= int(np.ceil(255 / (2 ** bits - 1) / 2))  # nearest level
    np.testing.assert_array_equal(D.bit_depth(ramp, 8), ramp)


def test_noise_blur_within_documented_bounds(digits):
    images = digits[0].images[:32]
    sigma = 8 / 255
    out = D.noise_blur(images, sigma, seed=0)
    blurred = low_pass(torch.from_numpy(images / 255.0), "gaussian").numpy()
    gap = np.abs(out / 255.0 - blurred)
    assert gap.max() <= 3 * sigma + 0.5 / 255 + 1e-9
    assert gap.max() > sigma  # the noise is really there, not only the blur
    assert (out != images).mean() > 0.5
    np.testing.assert_array_equal(out, D.noise_blur(images, sigma, seed=0))  # seeded
    assert (out != D.noise_blur(images, sigma, seed=1)).any()


def test_iss_is_grayscale_then_jpeg10():
    out = D.iss(COLOUR)
    assert (out[:, 0] == out[:, 1]).all() and (out[:, 0] == out[:, 2]).all()
    np.testing.assert_array_equal(out, D.jpeg(D.grayscale(COLOUR), 10))


def _stream(seed: int, n: int) -> BatchStream:
    return BatchStream(make_generator(seed), n)


def test_ueraser_draws_are_valid_seeded_and_heavy():
    x = torch.from_numpy(COLOUR).float() / 255
    a, b = D.ueraser(x, _stream(3, len(x))), D.ueraser(x, _stream(3, len(x)))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert (a - x).abs().mean() > 0.05  # far beyond an 8/255 perturbation
    assert not torch.equal(a, D.ueraser(x, _stream(4, len(x))))


def test_ueraser_max_keeps_the_highest_loss_draw():
    x = torch.from_numpy(COLOUR).float() / 255
    y = torch.tensor([0, 1, 2, 3])
    model = build_model("small_cnn", 10, 3, seed=0)
    chosen = D.ueraser_max(model, x, y, _stream(5, len(x)), repeats=3)
    again = _stream(5, len(x))
    draws = [D.ueraser(x, again) for _ in range(3)]
    with torch.no_grad():
        model.eval()
        losses = torch.stack([F.cross_entropy(model(d), y, reduction="none") for d in draws])
    for i in range(len(x)):
        torch.testing.assert_close(chosen[i], draws[int(losses[:, i].argmax())][i])


def test_victim_trains_on_preprocessed_images_test_untouched(digits):
    train, _ = digits
    small = train.subset(range(40))
    cfg = VictimConfig(arch="small_cnn", steps=1, defenses=["bdr:1"], patience=5, val_fraction=0.25)
    used, val, _, _ = victim_data(cfg, small)
    assert set(np.unique(used.images)) <= {0, 255} and set(np.unique(val.images)) <= {0, 255}
    assert len(np.unique(small.images)) > 2  # the input was not changed in place


@pytest.mark.parametrize("spec, message", [
    ("blur", "unknown defense 'blur'"),
    ("jpeg:0", "jpeg quality must be in [1, 100]"),
    ("jpeg:high", "jpeg quality must be an integer"),
    ("grayscale:2", "takes no argument"),
    ("noise-blur:2", "noise-blur σ must be in (0, 1]"),
    ("ueraser,ueraser:2", "at most one training-time augmentation"),
])
def test_bad_specs_rejected(spec, message):
    with pytest.raises(ValueError) as err:
        D.parse_defenses([spec])
    assert message in str(err.value)


def test_specs_parse_with_defaults_and_order():
    specs = D.parse_defenses(["iss,jpeg", "noise-blur:4/255", "ueraser:5"])
    assert [str(s) for s in specs] == ["iss", "jpeg:10", "noise-blur:0.0156863", "ueraser:5"]
    assert [s.kind for s in specs] == ["pre", "pre", "pre", "batch"]


@pytest.fixture(scope="module")
def stored(digits, tmp_path_factory):
    from sem_dist.data import save_dataset

    root = tmp_path_factory.mktemp("defended")
    train, test = digits
    save_dataset(train.subset(range(48)), str(root / "train"))
    save_dataset(test.subset(range(30)), str(root / "test"))
    return root


def test_evaluate_with_jpeg_defense_end_to_end(stored, tmp_path, cli):
    record = tmp_path / "r.json"
    code, out, err = cli("evaluate", "--train", stored / "train", "--test", stored / "test", "--arch", "small_cnn",
                         "--steps", "3", "--batch-size", "16", "--defense", "jpeg:10", "--defense", "ueraser:2",
                         "--adv-rho", "2/255", "--adv-steps", "1", "--record", record, "--device", "cpu", "--json")
    assert code == 0, err
    assert "with defense jpeg:10, ueraser:2" in out
    assert json.loads(record.read_text())["victim"]["defenses"] == ["jpeg:10", "ueraser:2"]
    assert 0.0 <= json.loads(out.strip().splitlines()[-1])["test_acc"] <= 1.0


@pytest.mark.parametrize("spec", ["nope", "jpeg:500"])
def test_evaluate_bad_defense_one_line_error(stored, tmp_path, cli, spec):
    code, _, err = cli("evaluate", "--train", stored / "train", "--test", stored / "test", "--arch", "small_cnn",
                       "--steps", "2", "--defense", spec, "--record", tmp_path / "r.json")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("sem-dist evaluate: error:") and spec in lines[0]
    assert not (tmp_path / "r.json").exists()
