"""Protect a dataset with unlearnable-example noise and write a protected canonical copy.

Trains the method's generator (Algorithm 1), then regenerates the noise of every sample shard by shard
(Algorithm 4) and writes PNG images (exact: protected = clip(image + noise, 0, 255)) with a manifest
recording the method, the full resolved config, the seed, the input URI (no credentials), noise
statistics, timings and the worker settings.

Units: every radius is an ℓ∞ bound in [0,1] pixel units; fractions are accepted, so 8/255 means eight
grey levels. Config precedence: the method's defaults (per image size) < --config FILE < flags.

Engines: by default every stage runs in this process. --workers N (N > 1) trains the generator on Ray
Train; any of --workers, --regen-actors or --address regenerates the noise on Ray Data (an actor pool over
units: a canonical input's shards, or the class folders / Parquet files / tar shards of imagefolder:,
parquet: and webdataset: sources, decoded and resized in the actors), byte-identical to the in-process
output for the same seed.

--data takes any source spec ``convert`` takes (a canonical URI, digits, cifar10:DIR, ...); for sources
with splits the train split is protected unless ``?split=NAME`` says otherwise (a source with one split:
that split). digits, mnist: and cifar: files load in this process: with --workers they reach Ray Train
through the object store and are regenerated here (stderr says so). --out must be new or
empty; --resume continues an interrupted run (generator checkpoint and finished shards are kept in
OUT/_staging, or in a local cache folder / --checkpoint-dir for remote outputs).
"""
from __future__ import annotations

from ._storage_args import (URI_HELP, add_bad_record_argument, add_output_arguments, add_ray_arguments,
                            add_storage_arguments, add_verbose_argument)
from ._train_args import add_ray_train_arguments

NAME = "protect"
HELP = "train the noise generator and write a protected copy of a dataset"

# flag dest -> dotted config key
OVERRIDES = {"rho_u": "budget.rho_u", "rho_a": "budget.rho_a", "rho_r": "budget.rho_r", "steps": "trainer.steps",
             "samples": "solver.samples", "ku": "solver.steps", "ka": "attack.steps", "arch": "trainer.arch",
             "seed": "seed", "batch_size": "trainer.batch_size",
             "checkpoint_every": "trainer.checkpoint_every", "source_model": "extra.source_model",
             "block_size": "extra.block_size", "amp": "trainer.amp", "compile": "trainer.compile",
             "memory_format": "trainer.memory_format", "pass_chunk": "trainer.pass_chunk", "graphs": "trainer.graphs"}


def add_arguments(p) -> None:
    p.epilog = URI_HELP
    p.add_argument("--data", required=True, metavar="URI", help="dataset to protect")
    p.add_argument("--out", required=True, metavar="URI", help="output folder; new or empty, not inside --data")
    p.add_argument("--method", default="sem", help="sem (default), rem, em, rem-theta, rem-delta, tap, sc, ntga")
    g = p.add_argument_group("budgets (ℓ∞ radii in [0,1] pixel units; 8/255 accepted)")
    g.add_argument("--rho-u", metavar="R", help="protective noise radius ρ_u (default 8/255)")
    g.add_argument("--rho-a", metavar="R", help="adversarial radius ρ_a of the generator's training (default 4/255)")
    g.add_argument("--rho-r", metavar="R", help="SEM's random-perturbation radius ρ_r (default ρ_a)")
    g = p.add_argument_group("generator")
    g.add_argument("--steps", type=int, metavar="M", help="generator training steps M (default 5000)")
    g.add_argument("--samples", type=int, metavar="J", help="draws J averaged per noise step (default 5)")
    g.add_argument("--ku", type=int, metavar="K", help="noise solver steps K_u (default 10)")
    g.add_argument("--ka", type=int, metavar="K", help="PGD steps K_a for δ^a (default 10)")
    g.add_argument("--arch", metavar="NAME", help="generator model: resnet18 (default), small_cnn, vgg16, ...")
    g.add_argument("--batch-size", type=int, metavar="B", help="generator batch size (default 128)")
    g.add_argument("--seed", type=int, metavar="S", help="run seed (default 0); noise depends on (seed, id)")
    g.add_argument("--source-model", metavar="FILE",
                   help="tap: a trained clean model's state dict (.pt loaded with weights_only, or .safetensors) "
                        "instead of training one")
    g.add_argument("--block-size", type=int, metavar="N",
                   help="ntga: training-set block size of the kernel predictor (default 4000; 100 for large images)")
    g.add_argument("--config", metavar="FILE", help="YAML of config keys (overridden by the flags above)")
    g = p.add_argument_group("execution (see docs/data-plane.md)")
    g.add_argument("--device", default="auto",
                   help="in-process stages: auto (CUDA when available), cpu or cuda[:N]")
    g.add_argument("--amp", nargs="?", const="on", choices=["auto", "on", "off"],
                   help="bf16 autocast on every forward/backward pass, losses and gradient signs in fp32 (default "
                        "auto: on CPUs with AMX or avx512_bf16, where a SEM step ran 1.6-1.9x faster; --amp alone = on)")
    g.add_argument("--compile", choices=["auto", "on", "off"],
                   help="torch.compile the model (default auto: on for runs of >= 500 steps of models it speeds up)")
    g.add_argument("--memory-format", choices=["auto", "channels_last", "contiguous"],
                   help="layout of the passes (default auto = channels_last, measured faster on CPU and GPU)")
    g.add_argument("--pass-chunk", metavar="N",
                   help="rows per chunk of an input-gradient pass: auto (default; on a CPU chunks of 128 images at "
                        "32×32, measured faster; on a GPU whole passes), off, or a number of rows")
    g.add_argument("--graphs", choices=["auto", "on", "off"],
                   help="run each half of a generator step and each Algorithm-4 batch as one CUDA graph (default "
                        "auto: on CUDA devices; a CPU runs eagerly, exactly as off)")
    add_ray_arguments(g, train=True)
    add_ray_train_arguments(g)
    g.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="generator steps between checkpoints (default 500)")
    g.add_argument("--checkpoint-dir", metavar="URI",
                   help="where generator checkpoints go (default OUT/_staging/checkpoint, on the output's "
                        "storage): a local folder or s3://bucket/prefix (Ray Train storage, any --workers); "
                        "same folder + --resume continues the run, from any machine for s3://")
    add_output_arguments(g)
    add_bad_record_argument(p)
    add_storage_arguments(p)
    add_verbose_argument(p)


def run(args) -> int:
    from ..protect.run import protect
    from ._storage_args import run_spec, summary

    overrides = {key: getattr(args, dest) for dest, key in OVERRIDES.items() if getattr(args, dest) is not None}
    spec = run_spec(args, method=args.method, overrides=overrides, config_file=args.config,
                    checkpoint_dir=args.checkpoint_dir)
    print(summary(protect(spec)))
    return 0
