"""Measure the spread of every trained number a test asserts on: seeds × CPU kernel sets.

    .venv/bin/python tests/spread.py [SCENARIO ...] [--seeds 0,1,2] [--json]

Each (scenario, seed, kernel set) runs in a fresh process: ``native`` is this CPU's own kernels, ``avx2``
the kernels an AVX2-only CPU uses (``AVX2_KERNELS``, from ``sem_dist.bench.seeds``; oneDNN convolutions, MKL matmul and ATen's
vectorised math all change results). The seed replaces the seed of every generator and victim the scenario
trains. The output is one line per quantity: min / mean / max over all runs and the runs themselves; the
thresholds in the tests are set from these (each test names its scenario and the measured range beside the
assertion). Not part of the suite: it trains ≈ 6× what the tests train.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
from sem_dist.bench.seeds import AVX2_KERNELS  # noqa: E402  (one definition of the AVX2 kernel set)


def _digits():
    from sem_dist.data.sources.digits import load_digits

    return load_digits("train"), load_digits("test")


def digits_victims(seed: int) -> dict:
    """tests/test_victims_protected_digits.py and test_core_generator.py::test_sem_protected_digits_are_unlearnable."""
    import numpy as np
    import torch
    from test_victims_protected_digits import EM, VICTIM

    from sem_dist.analysis.robustness import noise_robustness
    from sem_dist.commands.demo import DEMO_OVERRIDES
    from sem_dist.config import resolve_config
    from sem_dist.perturb.in_memory import protect_arrays
    from sem_dist.victims.train import VictimConfig, train_victim

    cpu = torch.device("cpu")
    train, test = _digits()
    victim = dataclasses.replace(VICTIM, seed=seed)
    robust = dataclasses.replace(victim, adv_rho=16 / 255, adv_steps=2, adv_alpha_div=2.0)
    sem = protect_arrays(resolve_config("sem", 32, overrides={**DEMO_OVERRIDES, "seed": seed}), train, cpu)[0]
    em_cfg = resolve_config("em", 32, overrides={**EM, "seed": seed})
    em = protect_arrays(em_cfg, train, cpu)[0]
    twelve = VictimConfig(arch="small_cnn", epochs=12, batch_size=64, seed=seed)
    clean_em = em.with_images(em.clean_images(), np.zeros_like(em.noise))
    out = {
        "clean_120": train_victim(victim, train, test, cpu).test_acc,
        "sem_120": train_victim(victim, sem, test, cpu).test_acc,
        "em_standard_120": train_victim(victim, em, test, cpu).test_acc,
        "em_robust_120": train_victim(robust, em, test, cpu).test_acc,
        "clean_12ep": train_victim(twelve, train, test, cpu).test_acc,
        "sem_12ep": train_victim(twelve, sem, test, cpu).test_acc,
        "r_delta_em": noise_robustness(em, em_cfg, cpu, steps=20, seed=seed),
        "r_delta_clean": noise_robustness(clean_em, em_cfg, cpu, steps=20, seed=seed),
    }
    out["clean_minus_sem_120"] = out["clean_120"] - out["sem_120"]
    out["em_robust_minus_standard"] = out["em_robust_120"] - out["em_standard_120"]
    out["clean_minus_sem_12ep"] = out["clean_12ep"] - out["sem_12ep"]
    out["r_delta_em_minus_clean"] = out["r_delta_em"] - out["r_delta_clean"]
    return out


def baselines(seed: int) -> dict:
    """tests/test_baselines_methods.py: TAP moves predictions to the target class; EM is a fast shortcut."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from test_baselines_methods import SIDE, _fit, _noise

    from sem_dist.data.arrays import ArrayDataset
    from sem_dist.perturb.algorithm4 import apply_noise
    from sem_dist.perturb.tap import tap_targets
    from sem_dist.victims.train import VictimConfig, train_victim

    train, _ = _digits()
    x8 = torch.from_numpy(train.images).float()
    digits8 = train.with_images(F.avg_pool2d(x8, 4).round().clamp(0, 255).to(torch.uint8).numpy())
    data = digits8.subset(range(300))
    m = _fit("tap", data, seed=seed, **{"trainer.steps": 40, "trainer.batch_size": 64, "solver.steps": 20,
                                        "solver.alpha_div": 10})
    x, y = data.batch(range(40))
    delta = m.perturb(x, y, data.ids[:40])
    target = tap_targets(y, 10)
    with torch.no_grad():
        m.model.eval()
        before = F.log_softmax(m.model(x), 1)[torch.arange(40), target]
        after = F.log_softmax(m.model(x + delta), 1)[torch.arange(40), target]
    rng = np.random.default_rng(0)  # the test's random images; the seed varies the generator and the victim
    n = 256
    rand = ArrayDataset([f"r{i}" for i in range(n)], rng.integers(64, 192, (n, 3, SIDE, SIDE), dtype=np.uint8),
                        rng.integers(0, 10, n), [str(k) for k in range(10)])
    em = _fit("em", rand, seed=seed, **{"trainer.steps": 10, "trainer.batch_size": 64, "solver.steps": 10,
                                        "budget.rho_u": "32/255"})
    noise = _noise(em, rand)
    poisoned = rand.with_images(apply_noise(rand.images, noise), noise)
    victim = VictimConfig(arch="small_cnn", epochs=5, batch_size=64, transform="none", seed=seed + 1)

    def late_loss(ds):
        return float(np.mean([p["loss"] for p in train_victim(victim, ds, None, torch.device("cpu")).curve[-3:]]))

    return {"tap_share_up": float((after > before).float().mean()), "tap_mean_up": float((after - before).mean()),
            "em_late_loss_ratio": late_loss(poisoned) / late_loss(rand)}


def noise_direction(seed: int) -> dict:
    """tests/test_core_noise_direction.py: the solver descends, its mirror ascends (margins in nats)."""
    import torch
    from test_core_noise_direction import expected_loss

    from sem_dist.config import resolve_config
    from sem_dist.models import build_model
    from sem_dist.perturb.noise import NoiseSpec, solve_noise
    from sem_dist.runtime.rng import BatchStream, make_generator
    from sem_dist.training.pgd import frozen

    out = {}
    for method in ("sem", "rem", "em"):
        over = {"trainer.arch": "small_cnn", "solver.samples": 1, "attack.steps": 1, "budget.rho_u": "16/255"}
        spec = NoiseSpec.from_config(resolve_config(method, 32, overrides=over), 32)
        model = build_model("small_cnn", 10, 1, seed=seed)
        model.net.classifier.weight.data *= 50
        x = torch.rand(8, 1, 32, 32, generator=make_generator(1 + seed)) * 0.8 + 0.1
        y = torch.arange(8) % 10
        with frozen(model), torch.no_grad():
            with torch.enable_grad():
                delta = solve_noise(model, x, y, spec, BatchStream(make_generator(2 + seed), len(x)))
            protected, clean, mirrored = (expected_loss(model, x + s * delta, y, spec) for s in (1, 0, -1))
        out[f"{method}_clean_minus_protected"] = clean - protected
        out[f"{method}_mirrored_minus_clean"] = mirrored - clean
    return out


def small(seed: int) -> dict:
    """test_victims_options (early stopping), test_analysis_robustness (R_θ against the adversary's strength),
    test_core_layout (PGD under bf16 autocast)."""
    import torch
    from test_analysis_robustness import TOY
    from test_core_layout import RHO, _model, _setup
    from test_victims_options import noisy

    from sem_dist.analysis.robustness import surrogate_robustness
    from sem_dist.config import resolve_config
    from sem_dist.models import build_model
    from sem_dist.training.pgd import frozen, pgd
    from sem_dist.victims.train import VictimConfig, train_victim

    cpu = torch.device("cpu")
    train, test = _digits()
    data, held = noisy(train.subset(range(64)), seed), test.subset(range(60))
    cfg = VictimConfig(arch="small_cnn", steps=60, batch_size=16, patience=2, val_fraction=0.25, val_clean_ratio=0.5,
                       seed=seed)
    es = train_victim(cfg, data, held, cpu).early_stopping
    toy = train.subset(range(32))
    model = build_model("small_cnn", 10, 1, seed=seed)
    weak = resolve_config("rem", 32, overrides=dict(TOY, **{"budget.rho_a": 0.0}))
    strong = resolve_config("rem", 32, overrides=dict(TOY, **{"budget.rho_a": "32/255"}))
    r_weak = surrogate_robustness(model, toy, weak, cpu, seed=1 + seed)
    r_strong = surrogate_robustness(model, toy, strong, cpu, seed=1 + seed)
    _, x, y = _setup()
    net = _model("channels_last")
    with frozen(net):
        d32 = pgd(net, x, y, RHO, RHO / 4, 5)
        d16 = pgd(net, x, y, RHO, RHO / 4, 5, amp=True)
    return {"early_stop_step": float(es["stopped_at"] or 60),
            "early_stop_minus_best": float((es["stopped_at"] or 60) - es["best_step"]),
            "r_theta_weak_minus_strong": r_weak - r_strong,
            "bf16_sign_agreement": float((d16.sign() == d32.sign()).float().mean())}


SCENARIOS = {f.__name__: f for f in (digits_victims, baselines, noise_direction, small)}


def _one(name: str, seed: int) -> None:
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))  # as tests/conftest.py
    sys.path.insert(0, str(HERE))
    print(json.dumps(SCENARIOS[name](seed)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", default=list(SCENARIOS), help=f"any of {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--kernels", default="native,avx2", help="native and/or avx2 (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object last")
    p.add_argument("--one", nargs=2, metavar=("SCENARIO", "SEED"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        _one(a.one[0], int(a.one[1]))
        return 0
    seeds = [int(s) for s in a.seeds.split(",")]
    kernels = a.kernels.split(",")
    runs: dict = {}
    for name in a.scenarios:
        for k in kernels:
            env = dict(os.environ, SEM_DIST_PROGRESS="0", **(AVX2_KERNELS if k == "avx2" else {}))
            for s in seeds:
                done = subprocess.run([sys.executable, __file__, "--one", name, str(s)], env=env, capture_output=True,
                                      text=True, check=False)
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return 1
                for q, v in json.loads(done.stdout.strip().splitlines()[-1]).items():
                    runs.setdefault(f"{name}.{q}", {})[f"{k}/s{s}"] = v
                print(f"{name} {k} seed {s}: done", file=sys.stderr, flush=True)
    for q, by in runs.items():
        vals = list(by.values())
        print(f"{q:48s} min {min(vals):8.4f}  mean {sum(vals) / len(vals):8.4f}  max {max(vals):8.4f}   "
              + " ".join(f"{r}={v:.3f}" for r, v in by.items()))
    if a.json:
        print(json.dumps(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
