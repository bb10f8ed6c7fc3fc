"""Analyses of the protection method.

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

NAME = "analyze"
HELP = "analyses of the method: robustness terms R_θ, R_δu and their correlation with protection"


def _steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps must be comma-separated integers, got {text!r}") from None


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    r = sub.add_parser("robustness", help="R_θ, R_δu and F for Algorithm-1 snapshots, with correlations",
                       description=__doc__, epilog=URI_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--data", required=True, metavar="URI",
                   help="training set (canonical dataset URI; a protected set is used through its clean originals)")
    r.add_argument("--test", required=True, metavar="URI", help="clean test set for F's victim")
    r.add_argument("--method", default="rem",
                   help="min-min(-max) method whose Algorithm 1 is analysed: rem (the paper's choice, following "
                        "Fu et al.), sem, em, rem-theta, rem-delta (default: %(default)s)")
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
    r.add_argument("--snapshots", type=_steps, metavar="T,T,...",
                   help="Algorithm-1 steps to snapshot (0 = the untrained surrogate; at least 3)")
    r.add_argument("--num-snapshots", type=int, default=5,
                   help="without --snapshots: this many evenly spaced up to M (default: %(default)s)")
    r.add_argument("--theta-steps", type=int, help="M of R_θ in minibatches (default: one pass over the data)")
    r.add_argument("--delta-steps", type=int, help="M of R_δu in training steps (default: Algorithm 1's M)")
    r.add_argument("--victim-arch", help="F's victim architecture (default: the surrogate's)")
    length = r.add_mutually_exclusive_group()
    length.add_argument("--victim-epochs", type=float, help="F's victim training length in epochs (default: 40)")
    length.add_argument("--victim-steps", type=int, help="F's victim training length in steps")
    r.add_argument("--victim-adv-rho", type=fraction_arg,
                   help="F's victim adversarial training radius in [0,1] units (default: ρ_a; 0 = standard)")
    r.add_argument("--out", default="sem-dist-robustness", help="output folder (default: %(default)s)")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s)")
    r.add_argument("--json", action="store_true", help="print the correlations as JSON on the last stdout line")
    add_storage_arguments(r)


def run(args) -> int:
    if args.analysis != "robustness":
        raise ValueError(f"unknown analysis {args.analysis!r}")
    from ..analysis.figures import plot_robustness
    from ..analysis.snapshots import evenly_spaced
    from ..analysis.study import TERMS, robustness_analysis
    from ..config import resolve_config
    from ..data import load_dataset
    from ..device import resolve_device
    from ..progress import bar
    from ..victims.train import VictimConfig

    device = resolve_device(args.device)
    storage = storage_options(args)
    data, test = load_dataset(args.data, storage=storage), load_dataset(args.test, storage=storage)
    if data.noise is None and (data.meta.get("manifest") or {}).get("protection"):
        raise ValueError(f"{args.data} is protected without its noise; give the clean dataset (the analysis "
                         "trains its own noise)")
    clean = data.with_images(data.clean_images(), None)  # the terms re-solve or re-train from clean images
    overrides = {"budget.rho_u": args.rho_u, "budget.rho_a": args.rho_a, "budget.rho_r": args.rho_r,
                 "trainer.steps": args.steps, "solver.samples": args.samples, "solver.steps": args.ku,
                 "attack.steps": args.ka, "trainer.batch_size": args.batch_size,
                 "trainer.arch": args.arch}
    cfg = resolve_config(args.method, clean.image_side, args.config, overrides)
    cfg.seed = args.seed
    at = args.snapshots if args.snapshots else evenly_spaced(cfg.trainer.steps, args.num_snapshots)
    victim = VictimConfig(arch=args.victim_arch or cfg.trainer.arch, epochs=args.victim_epochs,
                          steps=args.victim_steps, batch_size=cfg.trainer.batch_size,
                          adv_rho=cfg.budget.rho_a if args.victim_adv_rho is None else args.victim_adv_rho,
                          seed=args.seed).validate()
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
