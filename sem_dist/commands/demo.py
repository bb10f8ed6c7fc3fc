"""The embedded default, end to end: start a local Ray, convert scikit-learn's bundled digits to canonical
shards, protect them with SEM and REM once per seed (`protect`: Algorithm 1, then Algorithm 4), train victims
on the clean, SEM and REM data with standard and with adversarial training for every seed — every generator and
victim a one-CPU Ray task, in parallel — and write a report (report.md, a self-contained report.html,
report.json, samples.png, learning_curves.png) to --out: each cell is mean ± std over the seeds, and every
sentence comparing methods is computed from those numbers. Time on a 2-core CPU: docs/demo.md.

Units: radii are ℓ∞ bounds in [0,1] pixel units; fractions are accepted (16/255 = sixteen grey levels).
"""
from __future__ import annotations

NAME = "demo"
HELP = "protect the bundled digits with SEM and REM on an embedded Ray, evaluate victims, write a report"

# The CPU-scale generator with a short M: the session fixture of the tests and the defences bench use it
# (the demo itself runs sem_dist.demo.DemoSettings, M = 100).
DEMO_OVERRIDES = {"trainer.arch": "small_cnn", "trainer.steps": 60, "trainer.batch_size": 64,
                  "trainer.lr_step": 10 ** 9, "solver.steps": 5, "solver.samples": 2, "attack.steps": 3,
                  "budget.rho_u": "16/255", "budget.rho_a": "4/255"}


def add_arguments(p) -> None:
    from ..demo import DemoSettings
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
    from ..demo import DemoSettings, run_demo

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
