"""Search the protection's hyperparameters (ρ_r, J, M, or any config field) by victim evaluation on Ray Tune.

Each trial trains the generator (Algorithm 1), regenerates the noise (Algorithm 4) on the training set
(or a seeded --subset of it), trains a victim on the protected copy under the attacker's setting in the
space (victim.adv_rho for adversarial training, victim.filter, ...) and reports the victim's clean test
accuracy after every victim epoch: lower is better protection. ASHA (--scheduler asha) stops trials
whose victims learn faster than the others' at the same epoch.

Space file (YAML): dotted config keys mapped to {grid: [...]}, {choice: [...]}, {uniform: [lo, hi]},
{loguniform: [lo, hi]} or a fixed value; radii are ℓ∞ in [0,1] pixel units and accept fractions:

    budget.rho_r: {grid: [0, 2/255, 4/255]}   # SEM's random-perturbation radius ρ_r
    solver.samples: {grid: [1, 3, 5]}         # J
    trainer.steps: {grid: [1000, 5000]}       # M (generator steps)
    victim.adv_rho: 4/255                     # the attacker: adversarial training radius ρ_a
    victim.arch: resnet18

Without --space: ρ_r ∈ {0, 2/255, 4/255} × J ∈ {1, 3, 5} × M ∈ {1000, 5000}. --quick: a few-minute search
on 300 training / 200 test images with a small CNN and a handful of generator steps.

Results go to STORAGE/NAME: results.csv and results.md (every trial's config, victim accuracy, times),
figure5.png (accuracy vs M and vs J) and table6.png (ρ_r × ρ_a heat map) when the space spans them. With
--json the last stdout line is {"best_config", "best_test_acc", "trials", "table"}.
"""
from __future__ import annotations

import json

from ._storage_args import (URI_HELP, add_shared_fs_argument, add_storage_arguments, add_verbose_argument,
                            storage_options)

NAME = "tune"
HELP = "search ρ_r, J, M (any config field) by victim accuracy on Ray Tune"


def add_arguments(p) -> None:
    from ..distributed.resources import RESOURCE_TIMEOUT_HELP
    from ..distributed.tune import SCHEDULERS, SEARCHERS

    p.epilog = URI_HELP
    p.add_argument("--data", required=True, metavar="URI", help="training set to protect (e.g. DIR/train)")
    p.add_argument("--test", required=True, metavar="URI", help="clean test set the victims are scored on")
    p.add_argument("--method", default="sem", help="noise method (default: %(default)s)")
    p.add_argument("--space", metavar="FILE", help="YAML search space (default: ρ_r × J × M, see above)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N",
                   help="grid: runs of every grid point; random/optuna: number of trials (default: 1)")
    p.add_argument("--search", choices=SEARCHERS, default="grid",
                   help="grid: every grid point; random: draw each key (grids as choices); optuna: TPE "
                        "(default: %(default)s)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="asha",
                   help="asha: stop trials early on victim epochs; none: run every trial to the end")
    p.add_argument("--grace-period", type=int, default=1, metavar="EPOCHS",
                   help="ASHA: victim epochs every trial runs before it may be stopped (default: 1)")
    p.add_argument("--reduction-factor", type=float, default=2.0,
                   help="ASHA: the best 1/F of trials continue at each rung (default: 2)")
    p.add_argument("--max-protect-s", type=float, metavar="SECONDS",
                   help="time budget of Algorithm 1 + 4 per trial: trials over it rank below every trial within "
                        "it (objective = accuracy + 1)")
    p.add_argument("--subset", type=int, metavar="N",
                   help="regenerate noise for and train victims on a seeded subset of N training images "
                        "(the generator still trains on all of them)")
    p.add_argument("--max-concurrent", type=int, metavar="K",
                   help="trials at once (default: as many as the cluster's CPUs fit)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="Algorithm-1 workers per trial: 1 trains in the trial; N > 1 runs Ray Train from it")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs reserved per trial (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="G",
                   help="GPUs reserved per trial, on the trial's node (default: 0); a request no node can hold "
                        "fails in one line")
    p.add_argument("--resource-timeout", type=float, metavar="SECONDS", help=RESOURCE_TIMEOUT_HELP)
    p.add_argument("--storage", default="~/sem_dist_tune", metavar="URI",
                   help="local folder or s3://bucket/prefix for the search state and results (default: %(default)s)")
    p.add_argument("--name", default="sem-dist-tune", help="the search's folder under --storage (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted search (same --storage/--name); finished trials are kept")
    p.add_argument("--quick", action="store_true",
                   help="a few-minute search: 300/200 images, small CNN, few generator steps")
    p.add_argument("--seed", type=int, default=0, help="searcher seed and the --quick/--subset sample")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] inside each trial")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: $RAY_ADDRESS, else embedded)")
    add_shared_fs_argument(p, "--data, --test, --storage: every trial reads or writes them")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    add_storage_arguments(p)
    add_verbose_argument(p)


def run(args) -> int:
    from ..analysis.sensitivity import fmt_value
    from ..distributed.tune import SearchRequest, run_search

    req = SearchRequest(data=args.data, test=args.test, method=args.method, space=args.space,
                        num_samples=args.num_samples, search=args.search, scheduler=args.scheduler,
                        max_concurrent=args.max_concurrent, storage=args.storage, name=args.name, resume=args.resume,
                        quick=args.quick, workers=args.workers, cpus_per_trial=args.cpus_per_trial,
                        gpus_per_trial=args.gpus_per_trial, subset=args.subset,
                        grace_period=args.grace_period, reduction_factor=args.reduction_factor,
                        max_protect_s=args.max_protect_s, seed=args.seed, device=args.device, address=args.address,
                        shared_fs=args.shared_fs, store=storage_options(args),
                        **({} if args.resource_timeout is None else {"resource_timeout_s": args.resource_timeout}))
    result = run_search(req)
    counts = {s: sum(r["status"] == s for r in result.rows) for s in ("done", "stopped", "error", "unfinished")}
    print(f"{result.trials} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + f"; table: {result.table}" + (f"; figures: {', '.join(result.figures)}" if result.figures else ""))
    if result.best_config is not None:
        shown = ", ".join(f"{k}={fmt_value(k, v)}" for k, v in result.best_config.items())
        print(f"best: {shown or '(no searched keys)'} → victim test accuracy {100 * result.best_test_acc:.2f}%")
    if result.interrupted:
        print(f"sem-dist tune: interrupted with {counts['unfinished']} trial(s) unfinished; "
              "rerun with --resume to finish them")
    if args.json:
        print(json.dumps(result.summary()))
    if result.interrupted:
        return 130
    if result.best_config is None:
        raise RuntimeError(f"no trial trained its victim to the end ({counts['error']} failed); see {result.table}")
    return 0
