"""``sem-dist demo``: the product's real path on the embedded default, end to end, with one report.

1. an embedded local Ray (``distributed.cluster.connect``: loopback, token auth, dashboard on 127.0.0.1);
2. scikit-learn's bundled digits → canonical Parquet shards (``data.convert``);
3. SEM and REM through ``protect`` exactly as a cluster runs it: Algorithm 1 on Ray Train with 2 DDP workers,
   Algorithm 4 on Ray Data with 2 actors, one per input shard;
4. victims trained on the clean, SEM and REM training sets, with standard and with adversarial training,
   scored on the clean test set (``victims.evaluate``);
5. ``report.md``, a self-contained ``report.html`` and ``report.json`` (every number), with the accuracy
   table, generation times, a Figure-4 grid (``samples.png``) and the victims' learning curves
   (``learning_curves.png``).

Scale: the CPU-scale generator of docs/evidence.md (small CNN, batch 64, K_u = 5, J = 2, K_a = 3) at
ρ_u = 16/255 with M = 200 — at this scale 8/255 protects nothing (see ``analysis.demo_report``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

RECORD_SCHEMA = "sem-dist/demo/1"


@dataclass
class DemoSettings:
    out: str = "sem-dist-demo"
    methods: tuple[str, ...] = ("sem", "rem")
    # generator (Algorithm 1 / 4): docs/evidence.md's CPU scale; the paper's Table 9 values in comments
    steps: int = 200  # M (paper 5000): at 16/255 protection grows with M up to ~200-300 here
    rho_u: str = "16/255"  # paper 8/255: protects nothing at CPU scale (docs/evidence.md)
    rho_a: str = "4/255"  # the generator's ρ_a (= ρ_r) and the adversarially trained victim's
    arch: str = "small_cnn"  # paper ResNet-18
    batch_size: int = 64  # paper 128
    solver_steps: int = 5  # K_u, paper 10
    samples: int = 2  # J, paper 5
    attack_steps: int = 3  # K_a, paper 10
    # engine
    workers: int = 2  # Ray Train DDP workers for Algorithm 1
    regen_actors: int = 2  # Ray Data actors for Algorithm 4
    shard_rows: int = 720  # digits' 1,437 training images → 2 shards: one unit of work per actor
    # victims
    victim_epochs: float = 10
    victim_batch_size: int = 64
    victim_adv_steps: int = 3  # PGD steps of adversarial training, step ρ_a/2 from a random start
    seed: int = 0
    per_class: int = 2  # samples per class in the Figure-4 grid
    device: str = "auto"  # victims (this process)

    def generator_overrides(self, method: str) -> dict:
        o = {"trainer.arch": self.arch, "trainer.steps": self.steps, "trainer.batch_size": self.batch_size,
             # M is far below the paper's first decay at step 2000: constant lr 0.1 (as docs/evidence.md)
             "trainer.lr_step": 10 ** 9, "solver.steps": self.solver_steps, "solver.samples": self.samples,
             "attack.steps": self.attack_steps, "budget.rho_u": self.rho_u, "seed": self.seed}
        if method != "em":  # EM (min-min) has no adversary, so no ρ_a to set
            o["budget.rho_a"] = self.rho_a
        return o

    def victim(self, adversarial: bool, n_train: int):
        from .config import parse_fraction
        from .victims.train import VictimConfig

        per_epoch = math.ceil(n_train / self.victim_batch_size)
        return VictimConfig(arch=self.arch, epochs=self.victim_epochs, batch_size=self.victim_batch_size,
                            adv_rho=parse_fraction(self.rho_a) if adversarial else 0.0,
                            adv_steps=self.victim_adv_steps, adv_alpha_div=2.0, seed=self.seed,
                            eval_every=per_epoch).validate()


TRAININGS = ("standard", "adversarial")


def _stage(say: Callable[[str], None], i: int, n: int, text: str) -> None:
    say(f"sem-dist demo [{i}/{n}] {text}")


def _start_ray() -> bool:
    """Connect as every Ray path of the package does; True if this call started the (embedded) Ray."""
    import ray

    from .distributed.cluster import connect

    if ray.is_initialized():  # e.g. a test session's Ray: join it, and leave it running afterwards
        return False
    connect()
    return True


def _ray_summary() -> dict:
    import ray

    from .distributed.resources import is_embedded

    res = ray.cluster_resources()
    return {"embedded": is_embedded(), "cpus": res.get("CPU", 0.0), "gpus": res.get("GPU", 0.0),
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "auth_mode": os.environ.get("RAY_AUTH_MODE") or "token (Ray's default for a cluster ray.init starts)"}


def _protect(s: DemoSettings, method: str, train_uri: str, out: Path) -> dict:
    from .protect_dataset import ProtectRequest, protect

    t0 = time.perf_counter()
    m = protect(ProtectRequest(data=train_uri, out=str(out / method), method=method,
                               overrides=s.generator_overrides(method), workers=s.workers, regen_actors=s.regen_actors,
                               overwrite=True))
    p = m.protection
    return {"uri": str(out / method), "wall_s": time.perf_counter() - t0, "timings": p["timings"],
            "train_workers": p["train_workers"], "train_feed": p["train_feed"],
            "train_steps_per_s": p["train_steps_per_s"], "regeneration": p["regeneration"], "noise": p["noise"],
            "config": p["config"]}


def _noise(clean, protected) -> np.ndarray:
    """The int8 noise of ``protected`` (aligned to ``clean`` by id): protected − clean is exact, since
    the solver keeps x + δ^u inside the pixel range (``perturb.pgd.project``)."""
    where = {i: k for k, i in enumerate(protected.ids)}
    order = [where[i] for i in clean.ids]
    return (protected.images[order].astype(np.int16) - clean.images.astype(np.int16)).astype(np.int8)


def _on_ray(s: DemoSettings, out: Path, say: Callable[[str], None], n_stages: int, timings: dict):
    """Stages 1 to 2 + len(methods), the ones that use Ray: (Ray summary, manifests of the clean data,
    generation record per method). Ray is shut down afterwards if this call started it."""
    from .analysis.demo_report import NAMES
    from .data.convert import convert

    t0 = time.perf_counter()
    _stage(say, 1, n_stages, "Ray: an embedded local Ray unless this process is connected to one already")
    started = _start_ray()
    try:
        ray_info = _ray_summary()
        which = ("started an embedded Ray on 127.0.0.1 (token auth, dashboard on loopback)" if started
                 else "joined the running Ray")
        say(f"  {which}: {ray_info['cpus']:g} CPUs, {ray_info['gpus']:g} GPUs")
        timings["ray_start_s"] = time.perf_counter() - t0
        data = out / "data"
        _stage(say, 2, n_stages, f"digits → canonical Parquet shards in {data} ({s.shard_rows} rows per shard)")
        t = time.perf_counter()
        manifests = convert("digits", str(data), shard_rows=s.shard_rows, overwrite=True)
        timings["convert_s"] = time.perf_counter() - t
        generation = {}
        for k, method in enumerate(s.methods):
            _stage(say, 3 + k, n_stages,
                   f"{NAMES.get(method, method)}: Algorithm 1 on Ray Train ({s.workers} workers, M = {s.steps}), "
                   f"then Algorithm 4 on Ray Data ({s.regen_actors} actors), ρ_u = {s.rho_u}")
            g = generation[method] = _protect(s, method, str(data / "train"), out)
            say(f"  {method}: Algorithm 1 {g['timings']['fit_s']:.0f} s, Algorithm 4 "
                f"{g['timings']['regenerate_s']:.0f} s, noise ℓ∞ = {g['noise']['linf_levels']}/255")
    finally:
        if started:  # the victims need no Ray: its processes stop taking memory and CPU now
            import ray

            ray.shutdown()
    return ray_info, manifests, generation


def _victims(s: DemoSettings, train_sets: dict, test, test_uri: str) -> tuple[dict, dict, dict]:
    """Every (training data, training kind) victim: (records, accuracy, per-epoch curves), keyed by data."""
    from .analysis.demo_report import NAMES
    from .device import resolve_device
    from .progress import bar
    from .victims.evaluate import evaluate_victims

    device = resolve_device(s.device)
    jobs = [(name, kind) for name in train_sets for kind in TRAININGS]
    n = len(train_sets["clean"][0])
    planned = {kind: s.victim(kind == "adversarial", n).total_steps(n) for kind in TRAININGS}
    records, accuracy, curves = {}, {}, {}
    with bar(sum(planned[kind] for _, kind in jobs), "victims", unit="step") as pb:
        done = 0
        for name, kind in jobs:
            train, uri = train_sets[name]
            pb.set_description(f"victim: {NAMES.get(name, name)}, {kind}")

            def progress(_, stats, base=done):
                pb.n = base + stats["step"]
                pb.refresh()
            rec = evaluate_victims(s.victim(kind == "adversarial", len(train)), train, test, device, [s.seed],
                                   train_uri=uri, test_uri=test_uri, progress=progress)
            done += planned[kind]
            records[f"{name}/{kind}"] = rec
            accuracy.setdefault(name, {})[kind] = rec["test_acc"]
            curves.setdefault(name, {})[kind] = [[round(p["step"] * s.victim_batch_size / len(train), 3), p["test_acc"]]
                                                 for p in rec["runs"][0]["curve"]]
    return records, accuracy, curves


def run_demo(s: DemoSettings, say: Callable[[str], None] = print) -> dict:
    """Run every stage; returns the record written to ``report.json``."""
    from .analysis.demo_report import NAMES, write_report
    from .analysis.figures import plot_victim_curves
    from .data import load_dataset
    from .report import per_class_indices, save_protection_grid

    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    n_stages = 4 + len(s.methods)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    timings: dict = {}
    ray_info, manifests, generation = _on_ray(s, out, say, n_stages, timings)

    data = out / "data"
    clean, test = load_dataset(str(data / "train")), load_dataset(str(data / "test"))
    train_sets = {"clean": (clean, str(data / "train"))}
    train_sets.update({m: (load_dataset(generation[m]["uri"]), generation[m]["uri"]) for m in s.methods})
    _stage(say, 3 + len(s.methods), n_stages,
           f"victims ({s.arch}, {s.victim_epochs:g} epochs) on {', '.join(NAMES.get(n, n) for n in train_sets)} "
           f"data, standard and adversarial training (ρ_a = {s.rho_a}); clean test set of {len(test)}")
    t = time.perf_counter()
    records, accuracy, curves = _victims(s, train_sets, test, str(data / "test"))
    timings["victims_s"] = time.perf_counter() - t

    _stage(say, n_stages, n_stages, f"figures and report in {out}")
    idx = per_class_indices(clean.labels, s.per_class)
    save_protection_grid(clean.images[idx], {NAMES.get(m, m): _noise(clean, train_sets[m][0])[idx]
                                            for m in s.methods}, out / "samples.png",
                         labels=[clean.classes[clean.labels[i]] for i in idx])
    plot_victim_curves({(NAMES.get(n, n), kind): pts for n, by in curves.items() for kind, pts in by.items()},
                       out / "learning_curves.png",
                       f"{s.arch} victims on digits; adversarial training at ρ_a = {s.rho_a}")
    timings["total_s"] = time.perf_counter() - t_start
    record = {
        "schema": RECORD_SCHEMA,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": dataclasses.asdict(s),
        "ray": ray_info,
        "data": {"source": "digits (scikit-learn, 8×8 upsampled to 32×32 grey)", "uri": str(data),
                 "train": manifests["train"].count, "test": manifests["test"].count,
                 "train_shards": len(manifests["train"].shards)},
        "generation": generation,
        "accuracy": accuracy,
        "curves": curves,
        "victims": records,
        "figures": {"samples": "samples.png", "learning_curves": "learning_curves.png"},
        "timings": timings,
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "cpu_count": os.cpu_count(),
    }
    write_report(record, out)
    return record
