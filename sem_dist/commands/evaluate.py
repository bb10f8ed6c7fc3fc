"""Train victim models on a (protected) dataset and report their accuracy on clean test images.

The victim trains from scratch with SGD (lr 0.1, momentum 0.9, weight decay 5e-4, ×0.1 at 40% and
80% of the steps) and the dataset's augmentation (crop + flip for 32×32, RandomResizedCrop + flip for
large images). Low test accuracy means the protection works. Options mirror the paper's stress tests:
adversarial training (--adv-rho), low-pass filters (--filter), early stopping with a partly clean
validation set (--patience, --val-clean-ratio), partial poisoning (--poison-ratio, --mode), and defenses
from the literature (--defense: JPEG, grayscale, bit-depth reduction, ISS, noise + blur, UEraser-style
augmentation), all composable.

Units: radii are ℓ∞ in [0,1] pixel units and accept fractions (--adv-rho 4/255 = 4 grey levels);
ratios are fractions in [0,1]; --patience and --steps count SGD steps (minibatches).

Data: one seed on data below 256 MiB of uint8 pixels loads them in this process (stderr says so); more
seeds, or larger data, train one Ray task per seed that reads --train/--test from storage itself, so this
process never holds the split (docs/evaluation.md).

Output: one line per seed and a mean ± std summary; a JSON record (--record, RobustBench style) and a
learning-curve PNG next to it. With --json the last stdout line is a JSON object with test_acc,
test_acc_std, seeds and the record's path.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._storage_args import (URI_HELP, add_shared_fs_argument, add_storage_arguments, add_verbose_argument,
                            storage_options)

NAME = "evaluate"
HELP = "train victims on (protected) data and report clean test accuracy"


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def fraction_arg(text: str) -> float:
    from ..config import parse_fraction

    try:
        return parse_fraction(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p) -> None:
    p.epilog = URI_HELP
    p.add_argument("--train", required=True, metavar="URI", help="training set (canonical dataset URI, local or s3://)")
    p.add_argument("--test", required=True, metavar="URI", help="clean test set (canonical dataset URI)")
    p.add_argument("--arch", default="resnet18",
                   help="victim architecture: resnet18, resnet50, vgg16, densenet121, wrn34_10, small_cnn, "
                        "tv_<torchvision name> (default: %(default)s)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="training length in passes over the data (default: 40)")
    length.add_argument("--steps", type=int, help="training length in SGD steps (the paper: 40000)")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.1, help="initial SGD learning rate (default: %(default)s)")
    p.add_argument("--adv-rho", type=fraction_arg, default=0.0, metavar="R",
                   help="Madry adversarial training radius ρ_a, ℓ∞ in [0,1] pixel units, e.g. 4/255; "
                        "0 = standard training (default)")
    p.add_argument("--adv-steps", type=int, default=10, help="PGD steps of adversarial training (default: %(default)s)")
    p.add_argument("--adv-alpha-div", type=float, default=5.0,
                   help="PGD step size is ρ_a / this (default: %(default)s, Table 9)")
    p.add_argument("--filter", choices=("none", "mean", "median", "gaussian"), default="none",
                   help="3×3 low-pass filter on every training image before augmentation (default: %(default)s)")
    p.add_argument("--defense", action="append", default=[], metavar="NAME[:ARG]",
                   help="a defense, repeatable or comma-separated, applied in order. Once on the training images: "
                        "jpeg:Q (Pillow JPEG re-compression at quality Q in 1-100, default 10), grayscale, "
                        "bdr:BITS (bit-depth reduction to 2^BITS grey levels, default 2), iss (grayscale then "
                        "jpeg:10), noise-blur:SIGMA (Gaussian noise of std SIGMA in [0,1] pixel units, e.g. 8/255 "
                        "(default), truncated at 3 SIGMA, then a 3x3 Gaussian blur). On every minibatch: "
                        "ueraser:K (UEraser-style heavy random augmentation; K > 1 keeps the highest-loss of K "
                        "draws per image, default 1). The test set is never changed.")
    p.add_argument("--poison-ratio", type=fraction_arg, default=1.0, metavar="P",
                   help="fraction in [0,1] of the training set that keeps its noise, a seeded subset; the rest "
                        "uses the clean originals (needs a dataset written by `sem-dist protect`; default: 1)")
    p.add_argument("--mode", choices=("mixed", "clean-only"), default="mixed",
                   help="partial poisoning: train on protected + clean rest (mixed) or on the clean rest alone "
                        "(default: %(default)s)")
    p.add_argument("--patience", type=int, default=None, metavar="STEPS",
                   help="early stopping: stop when validation accuracy has not improved for this many SGD steps "
                        "and keep the best weights (default: off)")
    p.add_argument("--val-fraction", type=fraction_arg, default=0.1,
                   help="early stopping: fraction of the training set held out for validation (default: 0.1)")
    p.add_argument("--val-clean-ratio", type=fraction_arg, default=0.0,
                   help="early stopping: fraction in [0,1] of the validation set replaced by clean originals "
                        "(default: 0)")
    p.add_argument("--clean", metavar="URI",
                   help="the clean originals of --train (same ids), for --poison-ratio and --val-clean-ratio when "
                        "--train was protected without --keep-noise")
    p.add_argument("--seeds", type=_seeds, default=[0], metavar="S,S,...",
                   help="one victim per seed, reported as mean ± std (the paper: 0,6178,42; default: 0). Two or "
                        "more seeds (or one seed on data of 256 MiB of uint8 pixels or more, "
                        "$SEM_DIST_STREAM_MIN_BYTES) "
                        "train as Ray tasks (one CPU each) on --address or an embedded local Ray, each reading the "
                        "data from storage itself; the numbers equal a --sequential run's")
    p.add_argument("--sequential", action="store_true",
                   help="train the seeds one after another in this process, which loads the data (no Ray); refused "
                        "for data of 256 MiB of pixels or more")
    p.add_argument("--address", metavar="ADDR",
                   help="Ray cluster for the per-seed tasks (default: $RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--gpus-per-victim", type=float, default=0.0, metavar="G",
                   help="GPUs per per-seed Ray task (0 = CPU; default: %(default)s)")
    add_shared_fs_argument(p, "--train, --test, --clean: each per-seed Ray task reads them")
    p.add_argument("--eval-every", type=int, default=0, metavar="STEPS",
                   help="steps between learning-curve points (default: about 10 points per run)")
    p.add_argument("--record", default="evaluation.json", metavar="PATH",
                   help="where to write the JSON record; the learning curve goes next to it as .png "
                        "(default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    add_storage_arguments(p)
    add_verbose_argument(p)


def _pixel_bytes(data, storage) -> int | None:
    """Bytes of uint8 pixels the victims' data hold, from metadata alone (None: unknown before reading)."""
    from ..engine.input import open_input

    sizes = [open_input(uri, storage).info.pixel_bytes for uri in (data.train, data.test, data.clean) if uri]
    return None if None in sizes else sum(sizes)


def _in_process(args, size: int | None) -> bool:
    """Whether the victims train in this process (which then loads the data): --sequential, or one seed on
    data below the streaming threshold. Otherwise each victim is a Ray task that reads the data itself."""
    import sys

    from ..data.info import STREAM_MIN_BYTES_ENV, SplitTooLarge, mib, stream_min_bytes

    limit = stream_min_bytes()
    big = size is not None and size >= limit
    if args.sequential and big:
        raise SplitTooLarge(f"--sequential would load {mib(size)} of pixels into this process, at or above "
                            f"{mib(limit)} (${STREAM_MIN_BYTES_ENV}); drop --sequential: each victim then reads "
                            "the data in its own Ray task")
    local = args.sequential or (len(args.seeds) == 1 and size is not None and not big)
    held = "size unknown before reading" if size is None else f"{mib(size)} of pixels"
    where = "loaded in this process" if local else "read from storage by each victim's Ray task, not by this process"
    print(f"sem-dist evaluate: --train and --test ({held}) {where}", file=sys.stderr)
    return local


def run(args) -> int:
    from ..analysis.figures import plot_learning_curves
    from ..runtime.device import resolve_device
    from ..runtime.progress import bar
    from ..victims.defenses import parse_defenses
    from ..victims.evaluate import VictimData, evaluate_victims, seed_configs, victim_record
    from ..victims.train import VictimConfig

    cfg = VictimConfig(arch=args.arch, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       adv_rho=args.adv_rho, adv_steps=args.adv_steps, adv_alpha_div=args.adv_alpha_div,
                       eval_every=args.eval_every, amp=args.amp, filter=args.filter, poison_ratio=args.poison_ratio,
                       poison_mode=args.mode, patience=args.patience, val_fraction=args.val_fraction,
                       val_clean_ratio=args.val_clean_ratio, defenses=[str(d) for d in parse_defenses(args.defense)]).validate()
    device = resolve_device(args.device)
    storage = storage_options(args)
    data = VictimData(args.train, args.test, args.clean, storage)
    if _in_process(args, _pixel_bytes(data, storage)):
        train, test = data.load()
        planned = cfg.total_steps(len(train))  # an upper bound: poisoning and hold-out shrink the set
        with bar(planned * len(args.seeds), f"victims ({cfg.arch})", unit="step") as pb:
            def progress(i: int, stats: dict) -> None:
                pb.n = i * planned + stats["step"]
                pb.set_postfix(seed=args.seeds[i], loss=f"{stats['loss']:.3f}", refresh=False)
                pb.refresh()
            record = evaluate_victims(cfg, train, test, device, args.seeds, train_uri=args.train,
                                      test_uri=args.test, progress=progress)
    else:
        import time

        from ..distributed.cells import train_victims

        t0 = time.perf_counter()
        with bar(len(args.seeds), f"victims ({cfg.arch}, one Ray task per seed)", unit="victim") as pb:
            runs, described = train_victims(seed_configs(cfg, args.seeds), data, gpus=args.gpus_per_victim,
                                            address=args.address, shared_fs=args.shared_fs,
                                            progress=lambda i: pb.update(1))
        record = victim_record(cfg, args.seeds, runs, described, str(device), time.perf_counter() - t0,
                               args.train, args.test)
    path = Path(args.record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    plot_learning_curves(record, path.with_suffix(".png"))
    for run_ in record["runs"]:
        notes = []
        if run_["early_stopping"]:
            es = run_["early_stopping"]
            notes.append(f"early stopping: best step {es['best_step']}, stopped at {es['stopped_at'] or 'end'}")
        if run_["poisoning"]:
            notes.append(f"{run_['poisoning']['poisoned']} poisoned, trained on {run_['poisoning']['train_size']}")
        print(f"seed {run_['seed']}: test accuracy {100 * run_['test_acc']:.2f}% after {run_['steps']} steps"
              + (f" ({'; '.join(notes)})" if notes else ""))
    method = (record["protection"] or {}).get("method", "unprotected")
    defended = f" with defense {', '.join(cfg.defenses)}" if cfg.defenses else ""
    print(f"{cfg.arch} on {method} data{defended}: {100 * record['test_acc']:.2f} ± {100 * record['test_acc_std']:.2f}% "
          f"clean test accuracy over {len(args.seeds)} seed(s); record: {path}, curve: {path.with_suffix('.png')}")
    if args.json:
        print(json.dumps({"test_acc": record["test_acc"], "test_acc_std": record["test_acc_std"],
                          "seeds": record["seeds"], "per_seed": [r["test_acc"] for r in record["runs"]],
                          "record": str(path)}))
    return 0
