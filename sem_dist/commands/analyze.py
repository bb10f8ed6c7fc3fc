"""Analyses of the protection method: `sem-dist analyze robustness` and `sem-dist analyze projection`.

`sem-dist analyze robustness` repeats the paper's correlation analysis (Figure 3, Table 10): train the
noise generator (Algorithm 1) and snapshot (surrogate θ_t, noise δ^u_t) at chosen steps t; for each
snapshot compute
  R_θ   robustness of the surrogate (Definition 1, Eq. 8): θ_t fixed, the noise re-solved against a PGD
        adversary on M_θ minibatches; minus the mean worst-case loss;
  R_δu  robustness of the noise (Definition 2, Eq. 9): δ^u_t fixed, a fresh model adversarially trained on
        x + δ^u_t for M_δ steps; minus the mean training loss;
  F     protection performance 1 − Acc of a victim trained on x + δ^u_t;
then Pearson, Spearman and Kendall correlations of F with each term (scipy.stats) and a scatter plot.

Units: radii are ℓ∞ in [0,1] pixel units and accept fractions (--rho-u 8/255); steps count minibatches.
Writes robustness.json, robustness.png and snapshots/step-<t>.pt to --out.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._storage_args import URI_HELP, add_storage_arguments, storage_options
from .evaluate import fraction_arg

PROJECTION_DOC = """Figure 7: a 2-D projection of the perturbations REM and SEM train their noise against and of
those a victim's adversarial training actually applies, on the same --points training images:
  rem_adversarial     REM's δ^a: PGD (K_a steps, radius ρ_a) on t(x + δ^u) against the trained REM
                      surrogate, the inner maximisation of its noise step (Eq. 6);
  sem_random          SEM's δ^r ~ U(−ρ_r, ρ_r) per pixel (Eq. 10);
  victim_adversarial  the PGD δ (radius --victim-adv-rho, --victim-adv-steps) that a victim adversarially
                      trained on the REM- (or, with --victim-on sem, SEM-) protected images applies to its
                      augmented inputs at the end of its training.
The projection is UMAP (umap-learn, as in the paper) or, without umap-learn, scikit-learn's t-SNE;
--projection picks one, and the output names the one used.

Units: radii are ℓ∞ in [0,1] pixel units and accept fractions (--rho-a 4/255); steps count minibatches;
pixel-space distances in the JSON are ℓ2 in grey levels (0–255), 2-D distances in the projection's units.
Writes projection.png and projection.json (the 2-D points, and per method group: centroid distance to
the victim's group, coverage distance = mean distance from a victim point to the group's nearest point,
the share of victim points whose nearest neighbour is in the group, each group's spread) to --out.
"""

NAME = "analyze"
HELP = "analyses of the method: robustness terms R_θ, R_δu vs protection; Figure 7's perturbation projection"


def _steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps must be comma-separated integers, got {text!r}") from None


def _generator_arguments(r) -> None:
    """Algorithm 1's settings (both analyses train their own generator on the clean images)."""
    r.add_argument("--data", required=True, metavar="URI",
                   help="training set (canonical dataset URI; a protected set is used through its clean originals)")
    r.add_argument("--config", metavar="FILE", help="YAML of config overrides (as for `sem-dist protect`)")
    r.add_argument("--rho-u", type=fraction_arg, help="defensive noise radius ρ_u in [0,1] units (default 8/255)")
    r.add_argument("--rho-a", type=fraction_arg, help="adversarial radius ρ_a in [0,1] units (default 4/255)")
    r.add_argument("--rho-r", type=fraction_arg, help="SEM's random radius ρ_r in [0,1] units (default ρ_a)")
    r.add_argument("--steps", type=int, help="Algorithm 1 steps M (default: the method's, 5000)")
    r.add_argument("--samples", type=int, help="J, draws per noise gradient (default: the method's)")
    r.add_argument("--ku", type=int, help="noise solver steps K_u (default: the method's, 10)")
    r.add_argument("--ka", type=int, help="PGD steps K_a for δ^a (default: the method's, 10)")
    r.add_argument("--batch-size", type=int, help="minibatch size of Algorithm 1 and of both terms (default 128)")
    r.add_argument("--arch", help="surrogate architecture (default: the method's, resnet18)")
    r.add_argument("--seed", type=int, default=0, help="seed of every stage (default: %(default)s)")


def _victim_arguments(r, what: str, standard: str = "; 0 = standard") -> None:
    r.add_argument("--victim-arch", help=f"{what} architecture (default: the surrogate's)")
    length = r.add_mutually_exclusive_group()
    length.add_argument("--victim-epochs", type=float, help=f"{what} training length in epochs (default: 40)")
    length.add_argument("--victim-steps", type=int, help=f"{what} training length in steps")
    r.add_argument("--victim-adv-rho", type=fraction_arg,
                   help=f"{what} adversarial training radius in [0,1] units (default: ρ_a{standard})")


def _output_arguments(r, out: str, what: str) -> None:
    r.add_argument("--out", default=out, help="output folder (default: %(default)s)")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s)")
    r.add_argument("--json", action="store_true", help=f"print {what} as JSON on the last stdout line")
    add_storage_arguments(r)


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    r = sub.add_parser("robustness", help="R_θ, R_δu and F for Algorithm-1 snapshots, with correlations",
                       description=__doc__, epilog=URI_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _generator_arguments(r)
    r.add_argument("--test", required=True, metavar="URI", help="clean test set for F's victim")
    r.add_argument("--method", default="rem",
                   help="min-min(-max) method whose Algorithm 1 is analysed: rem (the paper's choice, following "
                        "Fu et al.), sem, em, rem-theta, rem-delta (default: %(default)s)")
    r.add_argument("--snapshots", type=_steps, metavar="T,T,...",
                   help="Algorithm-1 steps to snapshot (0 = the untrained surrogate; at least 3)")
    r.add_argument("--num-snapshots", type=int, default=5,
                   help="without --snapshots: this many evenly spaced up to M (default: %(default)s)")
    r.add_argument("--theta-steps", type=int, help="M of R_θ in minibatches (default: one pass over the data)")
    r.add_argument("--delta-steps", type=int, help="M of R_δu in training steps (default: Algorithm 1's M)")
    _victim_arguments(r, "F's victim")
    _output_arguments(r, "sem-dist-robustness", "the correlations")

    q = sub.add_parser("projection", help="Figure 7: 2-D projection (UMAP or t-SNE) of REM's δ^a, SEM's δ^r and "
                                          "a victim's adversarial-training δ", description=PROJECTION_DOC,
                       epilog=URI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _generator_arguments(q)
    q.add_argument("--test", metavar="URI", help="clean test set: also report the victim's test accuracy")
    q.add_argument("--points", type=int, default=300, metavar="N",
                   help="perturbations per group, on N seeded training images (default: %(default)s)")
    q.add_argument("--projection", default="auto", metavar="auto|umap|tsne",
                   help="umap (the paper's), tsne, or auto: umap when umap-learn is installed (default: auto)")
    q.add_argument("--victim-on", choices=("rem", "sem"), default="rem",
                   help="whose protected images the victim trains on (sem trains a SEM generator too; "
                        "default: %(default)s)")
    q.add_argument("--victim-adv-steps", type=int, default=10, help="the victim's PGD steps (default: 10)")
    _victim_arguments(q, "the victim's", standard="; must be > 0")
    _output_arguments(q, "sem-dist-projection", "the summary")  # --out: a local folder or s3://


def _clean_data(args, storage):
    """The clean training set: a protected one through its originals (the analyses train their own noise)."""
    from ..data import load_dataset

    data = load_dataset(args.data, storage=storage)
    if data.noise is None and (data.meta.get("manifest") or {}).get("protection"):
        raise ValueError(f"{args.data} is protected without its noise; give the clean dataset (the analysis "
                         "trains its own noise)")
    return data.with_images(data.clean_images(), None)


def _generator_config(args, method: str, image_side: int):
    from ..config import resolve_config

    overrides = {"budget.rho_u": args.rho_u, "budget.rho_a": args.rho_a, "budget.rho_r": args.rho_r,
                 "trainer.steps": args.steps, "solver.samples": args.samples, "solver.steps": args.ku,
                 "attack.steps": args.ka, "trainer.batch_size": args.batch_size,
                 "trainer.arch": args.arch}
    cfg = resolve_config(method, image_side, args.config, overrides)
    cfg.seed = args.seed
    return cfg


def _victim_config(args, cfg, **extra):
    from ..victims.train import VictimConfig

    return VictimConfig(arch=args.victim_arch or cfg.trainer.arch, epochs=args.victim_epochs,
                        steps=args.victim_steps, batch_size=cfg.trainer.batch_size,
                        adv_rho=cfg.budget.rho_a if args.victim_adv_rho is None else args.victim_adv_rho,
                        seed=args.seed, **extra).validate()


def run(args) -> int:
    if args.analysis == "projection":
        return run_projection(args)
    if args.analysis != "robustness":
        raise ValueError(f"unknown analysis {args.analysis!r}")
    from ..analysis.figures import plot_robustness
    from ..analysis.snapshots import evenly_spaced
    from ..analysis.study import TERMS, robustness_analysis
    from ..data import load_dataset
    from ..runtime.device import resolve_device
    from ..runtime.progress import bar

    device = resolve_device(args.device)
    storage = storage_options(args)
    clean = _clean_data(args, storage)
    test = load_dataset(args.test, storage=storage)
    cfg = _generator_config(args, args.method, clean.image_side)
    at = args.snapshots if args.snapshots else evenly_spaced(cfg.trainer.steps, args.num_snapshots)
    victim = _victim_config(args, cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with bar(3 * len(set(at)), f"{cfg.method}: robustness terms", unit="stage") as pb:
        def progress(stage: str) -> None:
            pb.set_postfix_str(stage, refresh=False)
            pb.update(1)
        analysis = robustness_analysis(cfg, clean, test, device, at, victim, theta_steps=args.theta_steps,
                                       delta_steps=args.delta_steps, snapshot_dir=out / "snapshots",
                                       progress=progress)
    (out / "robustness.json").write_text(json.dumps(analysis, indent=2))
    plot_robustness(analysis, out / "robustness.png")
    print(f"{'step':>6} {'R_θ':>9} {'R_δu':>9} {'F':>7}")
    for row in analysis["snapshots"]:
        print(f"{row['step']:>6} {row['R_theta']:>9.4f} {row['R_delta_u']:>9.4f} {row['F']:>7.4f}")
    for term in TERMS:
        c = analysis["correlations"][term]
        print(f"F vs {term}: " + ", ".join(f"{name} {'n/a' if v['r'] is None else format(v['r'], '+.4f')}"
                                           for name, v in c.items()))
    print(f"record: {out / 'robustness.json'}; figure: {out / 'robustness.png'}")
    if args.json:
        print(json.dumps({"snapshots": analysis["snapshots"], "correlations": analysis["correlations"]}))
    return 0


def run_projection(args) -> int:
    import io
    import time

    import numpy as np

    from ..analysis.figures import plot_projection
    from ..analysis.projection import GROUPS, perturbation_groups, projection_analysis, resolve_projection
    from ..data import load_dataset
    from ..data.storage import open_location, redact_uri
    from ..perturb.algorithm4 import apply_noise
    from ..perturb.in_memory import fit_method, regenerate_all
    from ..runtime.device import resolve_device
    from ..runtime.progress import bar
    from ..victims.train import train_victim

    t0 = time.perf_counter()
    projection = resolve_projection(args.projection)
    device = resolve_device(args.device)
    storage = storage_options(args)
    out = open_location(args.out, storage)  # a bad --out fails before any work
    clean = _clean_data(args, storage)
    test = load_dataset(args.test, storage=storage) if args.test else None
    if not 2 <= args.points <= len(clean):  # 2 per group: a 2-D projection needs a few points
        raise ValueError(f"--points must be in [2, {len(clean)}] (the images in {redact_uri(args.data)}), "
                         f"got {args.points}")
    rem_cfg = _generator_config(args, "rem", clean.image_side)
    victim = _victim_config(args, rem_cfg, adv_steps=args.victim_adv_steps)
    if victim.adv_rho <= 0:
        raise ValueError("--victim-adv-rho must be > 0: the analysis needs the victim's adversarial perturbations")
    rem = fit_method(rem_cfg, clean, device)
    protector = rem if args.victim_on == "rem" else fit_method(_generator_config(args, "sem", clean.image_side),
                                                               clean, device)
    noise = regenerate_all(protector, clean, device, protector.regen_batch_size())
    protected = clean.with_images(apply_noise(clean.images, noise), noise)
    with bar(victim.total_steps(len(protected)), "victim (adversarial training)", unit="step") as pb:
        trained = train_victim(victim, protected, test, device, progress=lambda stats: pb.update(1))
    indices = np.sort(np.random.default_rng(args.seed).permutation(len(clean))[:args.points])
    groups = perturbation_groups(rem, rem_cfg.budget.rho_random, protected, trained.model, victim, indices, device)
    analysis = projection_analysis(groups, projection, args.seed)
    record = {"analysis": "projection", "data": redact_uri(args.data), "victim_on": args.victim_on,
              "rem_config": rem_cfg.to_dict(), "rho_r": rem_cfg.budget.rho_random,
              "victim": trained.config, "victim_test_acc": trained.test_acc,
              **analysis, "wall_s": time.perf_counter() - t0}
    png = io.BytesIO()
    plot_projection(analysis, png)
    out.write_bytes("projection.png", png.getvalue())  # each write whole-or-nothing, the record last
    out.write_bytes("projection.json", json.dumps(record, indent=2).encode())
    for space in ("2d", "pixels"):
        s = analysis[f"summary_{space}"]
        print(f"{space:>6}: coverage distance of the victim's δ: REM δ^a {s['coverage_distance'][GROUPS[0]]:.3f}, "
              f"SEM δ^r {s['coverage_distance'][GROUPS[1]]:.3f}; victim points nearest to SEM "
              f"{100 * s['victim_nn_share'][GROUPS[1]]:.0f}%; best cover: {s['covers_best']}")
    print(f"projection: {projection.upper()} of {3 * args.points} perturbations; "
          f"figure: {out.child('projection.png').display}; record: {out.child('projection.json').display}")
    if args.json:
        print(json.dumps({"projection": projection, "counts": analysis["counts"], "summary_2d": analysis["summary_2d"],
                          "summary_pixels": analysis["summary_pixels"],
                          "record": out.child("projection.json").display}))
    return 0
