"""The embedded default, end to end: start a local Ray, convert scikit-learn's bundled digits to canonical
shards, protect them with SEM and REM once per seed (`protect`: Algorithm 1, then Algorithm 4), train victims
on the clean, SEM and REM data with standard and with adversarial training for every seed — every generator and
victim a one-CPU Ray task, in parallel — and write a report (report.md, a self-contained report.html,
report.json, samples.png, learning_curves.png) to --out: each cell is mean ± std over the seeds, and every
sentence comparing methods is computed from those numbers. Time on a 2-core CPU: docs/demo.md.

Units: radii are ℓ∞ bounds in [0,1] pixel units; fractions are accepted (16/255 = sixteen grey levels).
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

NAME = "demo"
HELP = "protect the bundled digits with SEM and REM on an embedded Ray, evaluate victims, write a report"

# The CPU-scale generator with a short M: the session fixture of the tests and the defenses bench use it
# (the demo itself runs DemoSettings below, M = 100).
DEMO_OVERRIDES = {"trainer.arch": "small_cnn", "trainer.steps": 60, "trainer.batch_size": 64,
                  "trainer.lr_step": 10 ** 9, "solver.steps": 5, "solver.samples": 2, "attack.steps": 3,
                  "budget.rho_u": "16/255", "budget.rho_a": "4/255"}


# How it runs. ``sem-dist demo``: the product's real path on the embedded default, end to end, with one report.
#
# 1. an embedded local Ray (``distributed.cluster.connect``: loopback, token auth, dashboard on 127.0.0.1);
# 2. scikit-learn's bundled digits → canonical Parquet shards (``data.convert``);
# 3. every (method, seed) protected by ``protect`` (Algorithm 1, then Algorithm 4, written as a canonical
#    dataset with its manifest) and every (training data, training kind, seed) victim scored on the clean test
#    set, each a one-CPU Ray task (``distributed.cells``): a victim of protected data starts as soon as its
#    seed's generator is done, so a cluster finishes in about one generator-then-victim chain;
# 4. ``report.md``, a self-contained ``report.html`` and ``report.json`` (every number), with the accuracy
#    table as mean ± std over the seeds, sentences comparing the methods computed from those numbers
#    (``analysis.demo_report``), generation times, a Figure-4 grid (``samples.png``) and the victims' mean
#    learning curves (``learning_curves.png``).
#
# Seed ``s`` seeds both the generator and the victims of its row, so the spread covers both sources of
# variation (docs/evidence.md measures each alone). Scale: the CPU-scale generator of docs/evidence.md (small
# CNN, batch 64, K_u = 5, K_a = 3; M = 100, J = 1) at ρ_u = 16/255 — at this scale 8/255 protects nothing.

RECORD_SCHEMA = "sem-dist/demo/2"


@dataclass
class DemoSettings:
    out: str = "sem-dist-demo"
    methods: tuple[str, ...] = ("sem", "rem")
    seeds: tuple[int, ...] = (0, 1, 2)  # each seeds a generator per method and the victims of its row
    # generator (Algorithm 1 / 4): docs/evidence.md's CPU scale; the paper's Table 9 values in comments
    # M, J and the victims' epochs are sized for ~10 min on 2 cores with three seeds; measured cost against M = 200,
    # J = 2, 10 epochs: SEM's victims 19-20 points higher, REM's about the same (docs/demo.md "Settings and why")
    steps: int = 100  # M (paper 5000)
    rho_u: str = "16/255"  # paper 8/255: protects nothing at CPU scale (docs/evidence.md)
    rho_a: str = "4/255"  # the generator's ρ_a (= ρ_r) and the adversarially trained victim's
    arch: str = "small_cnn"  # paper ResNet-18
    batch_size: int = 64  # paper 128
    solver_steps: int = 5  # K_u, paper 10
    samples: int = 1  # J, paper 5: one draw of (t, δ^r) per K_u step, a fresh one each step
    attack_steps: int = 3  # K_a, paper 10
    shard_rows: int = 720  # digits' 1,437 training images → 2 canonical shards
    # victims
    victim_epochs: float = 6
    victim_batch_size: int = 64
    victim_adv_steps: int = 3  # PGD steps of adversarial training, step ρ_a/2 from a random start
    per_class: int = 2  # samples per class in the Figure-4 grid
    device: str = "auto"  # the tasks' device: auto takes a GPU per task where the Ray cluster has GPUs
    amp: str = "auto"  # the generators' precision (trainer.amp): auto = bf16 on CPUs with AMX or avx512_bf16
    shared_fs: bool = False  # every node of a multi-node Ray mounts ``out`` (the cells pass datasets by path)

    def generator_overrides(self, method: str, seed: int) -> dict:
        o = {"trainer.arch": self.arch, "trainer.steps": self.steps, "trainer.batch_size": self.batch_size,
             # M is far below the paper's first decay at step 2000: constant lr 0.1 (as docs/evidence.md)
             "trainer.lr_step": 10 ** 9, "solver.steps": self.solver_steps, "solver.samples": self.samples,
             "attack.steps": self.attack_steps, "budget.rho_u": self.rho_u, "trainer.amp": self.amp, "seed": seed}
        if method != "em":  # EM (min-min) has no adversary, so no ρ_a to set
            o["budget.rho_a"] = self.rho_a
        return o

    def victim(self, adversarial: bool, n_train: int, seed: int):
        from ..config import parse_fraction
        from ..victims.train import VictimConfig

        per_epoch = math.ceil(n_train / self.victim_batch_size)
        return VictimConfig(arch=self.arch, epochs=self.victim_epochs, batch_size=self.victim_batch_size,
                            adv_rho=parse_fraction(self.rho_a) if adversarial else 0.0,
                            adv_steps=self.victim_adv_steps, adv_alpha_div=2.0, seed=seed,
                            eval_every=per_epoch).validate()


TRAININGS = ("standard", "adversarial")


@dataclass(frozen=True)
class Generator:
    """One protected copy of the training set: ``method`` with ``seed``."""

    method: str
    seed: int


@dataclass(frozen=True)
class Victim:
    """One victim: trained on ``data`` ("clean" or a method's copy of the same seed), ``kind`` of training."""

    data: str
    kind: str
    seed: int


def _stage(say: Callable[[str], None], i: int, n: int, text: str) -> None:
    say(f"sem-dist demo [{i}/{n}] {text}")


def _start_ray() -> bool:
    """Connect as every Ray path of the package does; True if this call started the (embedded) Ray."""
    import ray

    from ..distributed.cluster import connect

    if ray.is_initialized():  # e.g. a test session's Ray: join it, and leave it running afterwards
        return False
    connect()
    return True


def _ray_summary() -> dict:
    import ray

    from ..distributed.resources import is_embedded

    res = ray.cluster_resources()
    return {"embedded": is_embedded(), "cpus": res.get("CPU", 0.0), "gpus": res.get("GPU", 0.0),
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "auth_mode": os.environ.get("RAY_AUTH_MODE") or "token (Ray's default for a cluster ray.init starts)"}


def protect_cell(s: DemoSettings, g: Generator, train_uri: str, out_uri: str) -> dict:
    """A generator task: ``protect`` of the training set with ``g``'s method and seed, in this worker."""
    from ..engine.spec import RunSpec
    from ..protect.run import protect

    t0 = time.perf_counter()
    # the stage's one bar is the driver's: a task's own bars would reach the console through Ray's log stream
    os.environ["SEM_DIST_PROGRESS"] = "0"
    m = protect(RunSpec(data=train_uri, out=out_uri, method=g.method,
                        overrides=s.generator_overrides(g.method, g.seed), overwrite=True))
    p = m.protection
    return {"uri": out_uri, "seed": g.seed, "wall_s": time.perf_counter() - t0, "timings": p["timings"],
            "train_steps_per_s": p["train_steps_per_s"], "regeneration": p["regeneration"], "noise": p["noise"],
            "config": p["config"]}


def victim_cell(cfg, train_uri: str, test_uri: str) -> dict:
    """A victim task: train on ``train_uri``, score on the clean ``test_uri``; the record without the model."""
    from ..data import load_dataset
    from ..runtime.device import resolve_device
    from ..victims.train import train_victim

    r = train_victim(cfg, load_dataset(train_uri), load_dataset(test_uri), resolve_device("auto"))
    return r.to_dict()


def _cells(s: DemoSettings, data: Path, out: Path, n_train: int, gpus: float,
           on_done: Callable[[object, dict], None]) -> tuple[dict, dict]:
    """Every generator and victim as Ray tasks (generators first; a protected-data victim once its generator
    is done); returns ({Generator: record}, {Victim: record})."""
    from ..distributed.cells import run_in_order, submit

    train_uri, test_uri = str(data / "train"), str(data / "test")
    gens = [Generator(m, seed) for seed in s.seeds for m in s.methods]
    victims = [Victim(d, kind, seed) for seed in s.seeds for d in ("clean", *s.methods) for kind in TRAININGS]
    made: dict = {}

    def uri(d: str, seed: int) -> str:
        return train_uri if d == "clean" else made[Generator(d, seed)]["uri"]

    def start(cell):
        if isinstance(cell, Generator):
            return submit(protect_cell, s, cell, train_uri, str(out / f"{cell.method}-s{cell.seed}"), num_gpus=gpus)
        cfg = s.victim(cell.kind == "adversarial", n_train, cell.seed)
        return submit(victim_cell, cfg, uri(cell.data, cell.seed), test_uri, num_gpus=gpus)

    def ready(cell, finished: set) -> bool:
        return isinstance(cell, Generator) or cell.data == "clean" or Generator(cell.data, cell.seed) in finished

    trained = {}
    for cell, rec in run_in_order([*gens, *victims], start, ready):
        (made if isinstance(cell, Generator) else trained)[cell] = rec
        on_done(cell, rec)
    return made, trained


def _noise(clean, protected) -> np.ndarray:
    """The int8 noise of ``protected`` (aligned to ``clean`` by id): protected − clean is exact, since
    the solver keeps x + δ^u inside the pixel range (``training.pgd.project``)."""
    where = {i: k for k, i in enumerate(protected.ids)}
    order = [where[i] for i in clean.ids]
    return (protected.images[order].astype(np.int16) - clean.images.astype(np.int16)).astype(np.int8)


def _generation(s: DemoSettings, made: dict) -> dict:
    """Per method: each seed's record and the mean times."""
    out = {}
    for method in s.methods:
        per_seed = {str(g.seed): rec for g, rec in made.items() if g.method == method}
        recs = list(per_seed.values())
        out[method] = {"seeds": per_seed,
                       "fit_s": float(np.mean([r["timings"]["fit_s"] for r in recs])),
                       "regenerate_s": float(np.mean([r["timings"]["regenerate_s"] for r in recs])),
                       "wall_s": float(np.mean([r["wall_s"] for r in recs])),
                       "train_steps_per_s": float(np.mean([r["train_steps_per_s"] or 0 for r in recs])),
                       "images_per_s": float(np.mean([r["regeneration"]["images_per_s"] or 0 for r in recs])),
                       "linf_levels": max(r["noise"]["linf_levels"] for r in recs)}
    return out


def _victim_records(s: DemoSettings, trained: dict, n_train: int) -> tuple[dict, dict, dict]:
    """(records keyed "data/kind", accuracy {data: {kind: {mean, std, n, per_seed}}}, mean curves)."""
    from ..victims.evaluate import mean_std

    records, accuracy, curves = {}, {}, {}
    for data in ("clean", *s.methods):
        for kind in TRAININGS:
            runs = [(v.seed, r) for v, r in trained.items() if (v.data, v.kind) == (data, kind)]
            runs.sort(key=lambda sr: s.seeds.index(sr[0]))
            accs = [r["test_acc"] for _, r in runs]
            mean, std = mean_std(accs)
            cfg = dataclasses.asdict(s.victim(kind == "adversarial", n_train, 0))
            cfg.pop("seed")
            records[f"{data}/{kind}"] = {"victim": cfg, "seeds": [sd for sd, _ in runs], "test_acc": mean,
                                         "test_acc_std": std, "runs": [dict(seed=sd, **r) for sd, r in runs]}
            accuracy.setdefault(data, {})[kind] = {"mean": mean, "std": std, "n": len(accs),
                                                   "per_seed": {str(sd): r["test_acc"] for sd, r in runs}}
            # the mean curve over seeds (every run evaluates at the same steps)
            steps = [p["step"] for p in runs[0][1]["curve"]]
            curves.setdefault(data, {})[kind] = [
                [round(step * s.victim_batch_size / n_train, 3),
                 float(np.mean([r["curve"][i]["test_acc"] for _, r in runs]))] for i, step in enumerate(steps)]
    return records, accuracy, curves


def run_demo(s: DemoSettings, say: Callable[[str], None] = print) -> dict:
    """Run every stage; returns the record written to ``report.json``."""
    from ..analysis.demo_report import NAMES, comparisons, write_report
    from ..analysis.figures import plot_victim_curves
    from ..analysis.protection_grid import per_class_indices, save_protection_grid
    from ..data import load_dataset
    from ..data.convert import convert
    from ..distributed.storage import check_cluster_visible
    from ..runtime.device import cpu_summary
    from ..runtime.progress import bar

    if not s.seeds:
        raise ValueError("give at least one seed")
    out = Path(s.out)
    n_stages = 4
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    timings: dict = {}
    _stage(say, 1, n_stages, "Ray: an embedded local Ray unless this process is connected to one already")
    started = _start_ray()
    try:
        import ray

        ray_info = _ray_summary()
        check_cluster_visible({"demo folder --out": str(out.resolve())}, s.shared_fs,
                              remedy="run the demo on one machine (its embedded Ray: no RAY_ADDRESS), or "
                                     "--shared-fs if every node mounts it")
        out.mkdir(parents=True, exist_ok=True)
        which = ("started an embedded Ray on 127.0.0.1 (token auth, dashboard on loopback)" if started
                 else "joined the running Ray")
        say(f"  {which}: {ray_info['cpus']:g} CPUs, {ray_info['gpus']:g} GPUs")
        timings["ray_start_s"] = time.perf_counter() - t_start
        data = out / "data"
        _stage(say, 2, n_stages, f"digits → canonical Parquet shards in {data} ({s.shard_rows} rows per shard)")
        t = time.perf_counter()
        manifests = convert("digits", str(data), shard_rows=s.shard_rows, overwrite=True)
        timings["convert_s"] = time.perf_counter() - t
        n_train = manifests["train"].count
        gpus = 1.0 if (s.device.startswith("cuda") or (s.device == "auto" and ray_info["gpus"] > 0)) else 0.0
        names = ", ".join(NAMES.get(m, m) for m in s.methods)
        n_gen, n_vic = len(s.methods) * len(s.seeds), (1 + len(s.methods)) * len(TRAININGS) * len(s.seeds)
        _stage(say, 3, n_stages,
               f"{n_gen} generators ({names} × seeds {', '.join(map(str, s.seeds))}: Algorithm 1, M = {s.steps}, then "
               f"Algorithm 4, ρ_u = {s.rho_u}) and {n_vic} victims ({s.arch}, {s.victim_epochs:g} epochs, standard and "
               f"adversarial at ρ_a = {s.rho_a}), each a one-CPU Ray task")
        t = time.perf_counter()
        with bar(n_gen + n_vic, "generators and victims", unit="task") as pb:
            def done(cell, rec):
                if isinstance(cell, Generator):
                    pb.write(f"  {NAMES.get(cell.method, cell.method)} seed {cell.seed}: Algorithm 1 "
                             f"{rec['timings']['fit_s']:.0f} s, Algorithm 4 {rec['timings']['regenerate_s']:.0f} s, "
                             f"noise ℓ∞ = {rec['noise']['linf_levels']}/255")
                pb.update(1)
            made, trained = _cells(s, data, out, n_train, gpus, done)
        timings["cells_s"] = time.perf_counter() - t
    finally:
        if started:
            ray.shutdown()

    _stage(say, 4, n_stages, f"figures and report in {out}")
    generation = _generation(s, made)
    records, accuracy, curves = _victim_records(s, trained, n_train)
    clean = load_dataset(str(data / "train"))
    first = s.seeds[0]
    idx = per_class_indices(clean.labels, s.per_class)
    save_protection_grid(clean.images[idx], {
        NAMES.get(m, m): _noise(clean, load_dataset(made[Generator(m, first)]["uri"]))[idx] for m in s.methods},
        out / "samples.png", labels=[clean.classes[clean.labels[i]] for i in idx])
    plot_victim_curves({(NAMES.get(n, n), kind): pts for n, by in curves.items() for kind, pts in by.items()},
                       out / "learning_curves.png",
                       f"{s.arch} victims on digits, mean of {len(s.seeds)} seeds; adversarial training at "
                       f"ρ_a = {s.rho_a}")
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
        "comparisons": comparisons(accuracy),
        "curves": curves,
        "victims": records,
        "figures": {"samples": "samples.png", "learning_curves": "learning_curves.png"},
        "timings": timings,
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "cpu_count": os.cpu_count(),
        "cpu": cpu_summary(),
    }
    write_report(record, out)
    return record


def add_arguments(p) -> None:
    from ._storage_args import add_verbose_argument

    d = DemoSettings()
    p.add_argument("--out", default=d.out, help="output folder, reused on every run (default: %(default)s)")
    p.add_argument("--methods", default=",".join(d.methods),
                   help="comma-separated noise methods to compare with clean data (default: %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps, metavar="M",
                   help="generator training steps M of Algorithm 1 (default: %(default)s; the paper: 5000)")
    p.add_argument("--rho-u", default=d.rho_u, metavar="R",
                   help="noise radius ρ_u (default: %(default)s; the paper's 8/255 protects nothing at this scale, "
                        "see docs/demo.md)")
    p.add_argument("--rho-a", default=d.rho_a, metavar="R",
                   help="adversarial radius ρ_a of the generator (ρ_r = ρ_a) and of the adversarially trained "
                        "victims (default: %(default)s)")
    p.add_argument("--epochs", type=float, default=d.victim_epochs,
                   help="victim training epochs (default: %(default)s)")
    p.add_argument("--seeds", default=",".join(map(str, d.seeds)),
                   help="comma-separated seeds; each seeds one generator per method and the victims trained on its "
                        "data (default: %(default)s)")
    p.add_argument("--device", default=d.device,
                   help="the tasks' device: auto (a GPU per task where the Ray cluster has GPUs), cpu or cuda "
                        "(default: %(default)s)")
    p.add_argument("--amp", default=d.amp, choices=["auto", "on", "off"],
                   help="the generators' bf16 autocast (default: %(default)s = on for CPUs with AMX or avx512_bf16, "
                        "where the table moves within its seed spread; off reproduces fp32 runs)")
    p.add_argument("--shared-fs", action="store_true",
                   help="--out is a file system every node of the Ray cluster mounts (NFS, EFS); without it a "
                        "multi-node Ray is refused, since the tasks pass datasets by path under --out")
    add_verbose_argument(p)


def run(args) -> int:
    from ..analysis.demo_report import accuracy_table
    from ..config import parse_fraction

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if not methods:
        raise ValueError("--methods names no method")
    for flag, value in (("--rho-u", args.rho_u), ("--rho-a", args.rho_a)):
        try:
            parse_fraction(value)  # a bad radius fails here, before Ray starts
        except ValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None
    if args.steps < 1 or args.epochs <= 0:
        raise ValueError("--steps must be >= 1 and --epochs > 0")
    try:
        seeds = tuple(dict.fromkeys(int(x) for x in args.seeds.split(",") if x.strip()))
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise ValueError("--seeds names no seed")
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise ValueError(f"--device {args.device!r}: choose auto, cpu or cuda")
    settings = DemoSettings(out=args.out, methods=methods, seeds=seeds, steps=args.steps, rho_u=args.rho_u,
                            rho_a=args.rho_a, victim_epochs=args.epochs, device=args.device, amp=args.amp,
                            shared_fs=args.shared_fs)
    record = run_demo(settings, say=lambda line: print(line, flush=True))
    table = accuracy_table(record)
    print("\nvictim accuracy on the clean test set:")
    widths = [max(len(r[i]) for r in [table.header, *table.rows]) for i in range(len(table.header))]
    for row in [table.header, *table.rows]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)))
    for sentence in record["comparisons"]:
        print(f"  - {sentence}")
    print(f"demo finished in {record['timings']['total_s']:.0f} s; report: {args.out}/report.html "
          f"(also report.md, report.json)")
    return 0
