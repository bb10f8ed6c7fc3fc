"""Ray Tune search of the protection's hyperparameters (ρ_r, J, M, or any config field) by victim evaluation.

One trial = Algorithm 1 (train the generator; in-process, or with ``workers > 1`` as the driver of a Ray
Train run) → Algorithm 4 (regenerate the noise of the training set, or of a seeded subset) → train a
victim under the attacker's setting (standard or adversarial ρ_a, optionally a filter) and report its
clean test accuracy after every victim epoch, so ASHA can stop a poor trial on victim epochs.

The objective is minimised: ``objective`` = the victim's accuracy, plus 1 when the trial's protection
time (Algorithm 1 + 4) exceeds ``max_protect_s``, so any trial within the budget ranks above every trial
over it (accuracy subject to a time budget). Each trial also reports ``gen_s`` (Algorithm 1's wall time),
``regen_s`` (Algorithm 4's), ``protect_s`` (their sum) and ``cost_worker_s`` (worker-seconds spent).

Data: the driver reads only metadata (classes, image size); each trial reads ``--data`` and ``--test`` from
storage in its own process (``trial_data``), so no driver holds a split and no object is put per trial. A
multi-worker trial hands its copy to its Ray Train workers through the object store, once.

Storage (a local folder or ``s3://bucket/prefix``) holds Tune's experiment state, the generators'
checkpoints of multi-worker trials, one record per trial start (``starts/``), and the results:
``results.csv``, ``results.md``, ``figure5.png`` and ``table6.png`` when the space spans them.
``resume`` continues an interrupted search (``Tuner.restore``): finished trials are not rerun.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from ..data.info import STREAM_MIN_BYTES_ENV, SplitTooLarge, mib, stream_min_bytes
from ..data.storage import StorageOptions, refuse_credentials
from ..engine.spec import DEFAULT_RESOURCE_TIMEOUT_S
from .search_space import Space, load_space, parse_space, protect_config, to_ray, victim_config

SEARCHERS = ("grid", "random", "optuna")
SCHEDULERS = ("asha", "none")
METRIC = "objective"
SEARCH_FILE = "search.json"  # the search's settings, written first: --resume reads them back
QUICK_TRAIN, QUICK_TEST = 300, 200  # --quick: a seeded subset of the data


@dataclass
class SearchRequest:
    data: str  # training set URI (canonical dataset or any source spec with ?split=)
    test: str  # clean test set URI
    method: str = "sem"
    space: str | None = None  # YAML file; None: the default (ρ_r × J × M) or, with quick, the quick space
    num_samples: int = 1  # grid: repeats of every grid point; random/optuna: the number of trials
    search: str = "grid"
    scheduler: str = "asha"
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs fit
    storage: str = "~/sem_dist_tune"  # local folder or s3://bucket/prefix
    name: str = "sem-dist-tune"  # the search's folder under storage
    resume: bool = False
    quick: bool = False
    workers: int = 1  # Algorithm-1 workers per trial (> 1: Ray Train, one DDP worker per CPU)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # GPUs reserved for each trial's process (Algorithm 1 in the trial, 4, victim)
    resource_timeout_s: float = DEFAULT_RESOURCE_TIMEOUT_S
    subset: int | None = None  # regenerate noise for / train victims on this many training samples
    grace_period: int = 1  # ASHA: victim epochs before a trial may be stopped
    reduction_factor: float = 2.0  # ASHA: keep the best 1/reduction_factor at each rung
    max_protect_s: float | None = None  # time budget of Algorithm 1 + 4 per trial (seconds)
    seed: int = 0  # searcher seed and the --quick / --subset sample
    device: str = "auto"
    address: str | None = None
    shared_fs: bool = False  # a local storage folder every node of the cluster mounts
    store: StorageOptions = StorageOptions()  # endpoint and profile the driver and every trial's node resolve


@dataclass
class SearchResult:
    best_config: dict | None
    best_test_acc: float | None
    trials: int
    table: str  # results.md (URI)
    csv: str
    figures: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    interrupted: bool = False  # some trials unfinished: rerun with resume
    experiment: str = ""

    def summary(self) -> dict:
        return {"best_config": self.best_config, "best_test_acc": self.best_test_acc, "trials": self.trials,
                "table": self.table}


@dataclass
class TrialSettings:
    """What every trial shares (the search-wide part of a trial's config)."""

    data: str  # the training set's URI: each trial reads it (and ``test``) from storage itself
    test: str
    quick: bool  # trials take seeded subsets of QUICK_TRAIN / QUICK_TEST images
    method: str
    device: str
    workers: int
    cpus_per_worker: float
    subset: int | None
    seed: int
    storage: str  # the search's folder (URI): generators/ and starts/ go under it
    store: StorageOptions
    max_protect_s: float | None
    shared_fs: bool = False  # a local storage every node mounts (a multi-worker trial's Train run checks it)


# ---- one trial ------------------------------------------------------------------------------------

def _write(uri: str, data: bytes, store: StorageOptions) -> None:
    """Write a file at a local path or s3:// URI; local writes are atomic (temp file + rename)."""
    from .storage import storage_for

    path, fs = storage_for(uri, store)
    if fs is None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def _read(uri: str, store: StorageOptions) -> bytes | None:
    import pyarrow.fs

    from .storage import storage_for

    path, fs = storage_for(uri, store)
    fs = fs or pyarrow.fs.LocalFileSystem()
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def _list(uri: str, store: StorageOptions) -> list[str]:
    """Base names of the files directly under a folder URI ([] when it does not exist)."""
    import pyarrow.fs

    from .storage import storage_for

    path, fs = storage_for(uri, store)
    fs = fs or pyarrow.fs.LocalFileSystem()
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return [i.base_name for i in infos if i.type == pyarrow.fs.FileType.File]


def trial_starts(storage: str, store: StorageOptions) -> dict[str, int]:
    """How many times each trial started (a restarted trial counts twice), from the start records."""
    counts: dict[str, int] = {}
    for name in _list(f"{storage}/starts", store):
        trial_id = name.split(".", 1)[0]
        counts[trial_id] = counts.get(trial_id, 0) + 1
    return counts


def _victim_subset(data, subset: int | None, seed: int):
    import numpy as np

    if subset is None or subset >= len(data):
        return data
    return data.subset(np.sort(np.random.default_rng(seed).permutation(len(data))[:subset]))


def trial_data(settings: TrialSettings):
    """The trial's training and test sets, read from storage in the trial's own process (``--quick``: seeded
    subsets): no driver gathers them and no object holds them for every trial."""
    import numpy as np

    from ..data import load_dataset

    train, test = (load_dataset(uri, storage=settings.store) for uri in (settings.data, settings.test))
    if settings.quick:
        rng = np.random.default_rng(settings.seed)
        train = train.subset(np.sort(rng.permutation(len(train))[:QUICK_TRAIN]))
        test = test.subset(np.sort(rng.permutation(len(test))[:QUICK_TEST]))
    return train, test


def run_trial(config: dict, settings: TrialSettings) -> None:
    """Tune function trainable: read the data → generator → noise → victim, reporting after every victim epoch."""
    from ray import tune

    from ..perturb.algorithm4 import apply_noise
    from ..perturb.in_memory import fit_method, regenerate_all
    from ..runtime.device import resolve_device
    from ..victims.train import train_victim
    from .trial_phases import PHASE, VICTIM

    os.environ["SEM_DIST_PROGRESS"] = "0"  # this trial's process only: Tune's status table is the progress view
    train, test = trial_data(settings)
    trial_id = tune.get_context().get_trial_id()
    _write(f"{settings.storage}/starts/{trial_id}.{time.time_ns()}.json",
           json.dumps({"trial_id": trial_id, "config": config, "time": time.time()}).encode(), settings.store)
    device = resolve_device(settings.device)
    cfg = protect_config(settings.method, train.image_side, config)
    t0 = time.perf_counter()
    if settings.workers > 1:
        from ..engine.spec import EngineSpec
        from .algorithm1 import RayTrainOptions, fit_method_distributed
        from .trial_phases import GeneratorProgress

        # same (storage, name) on a restarted trial: Ray Train continues from the generator's checkpoint
        engine = EngineSpec(workers=settings.workers, cpus_per_worker=settings.cpus_per_worker,
                            shared_fs=settings.shared_fs)
        opts = RayTrainOptions(engine=engine, checkpoint=f"{settings.storage}/generators", name=trial_id, resume=True,
                               storage=settings.store)
        # the trial is the Train run's driver: rank 0's reports reach Tune as generator-phase results
        method, _ = fit_method_distributed(cfg, train, device, opts, callbacks=[GeneratorProgress(METRIC)])
    else:
        method = fit_method(cfg, train, device)
    gen_s = time.perf_counter() - t0
    target = _victim_subset(train, settings.subset, settings.seed)
    noise = regenerate_all(method, target, device, method.regen_batch_size())
    protected = target.with_images(apply_noise(target.images, noise), noise)
    regen_s = time.perf_counter() - t0 - gen_s
    protect_s = gen_s + regen_s
    over_budget = settings.max_protect_s is not None and protect_s > settings.max_protect_s

    victim = victim_config(config)
    per_epoch = math.ceil(len(protected) / victim.batch_size)
    victim = dataclasses.replace(victim, eval_every=per_epoch)
    epochs = victim.total_steps(len(protected)) * victim.batch_size / len(protected)
    t1 = time.perf_counter()

    def report(stats: dict) -> None:
        if stats.get("test_acc") is None:
            return  # not an evaluation point
        epoch = min(epochs, stats["step"] * victim.batch_size / len(protected))
        victim_s = time.perf_counter() - t1
        tune.report({METRIC: stats["test_acc"] + (1.0 if over_budget else 0.0), PHASE: VICTIM,
                     "test_acc": stats["test_acc"],
                     "train_acc": stats["train_acc"], "victim_epoch": round(epoch, 4),
                     "victim_epochs": round(epochs, 4), "victim_step": stats["step"], "gen_s": gen_s,
                     "regen_s": regen_s, "protect_s": protect_s, "victim_s": victim_s,
                     "cost_worker_s": gen_s * max(1, settings.workers) + regen_s + victim_s,
                     "over_budget": over_budget})

    train_victim(victim, protected, test, device, progress=report)


# ---- the search -----------------------------------------------------------------------------------

def _check(req: SearchRequest) -> None:
    if req.search not in SEARCHERS:
        raise ValueError(f"unknown search {req.search!r}; choose one of {', '.join(SEARCHERS)}")
    if req.scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {req.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    for name in ("num_samples", "workers", "grace_period"):
        if getattr(req, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(req, name)}")
    if req.cpus_per_trial <= 0 or req.gpus_per_trial < 0:
        raise ValueError(f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0, got {req.cpus_per_trial:g} and "
                         f"{req.gpus_per_trial:g}")
    if req.max_concurrent is not None and req.max_concurrent < 1:
        raise ValueError(f"--max-concurrent must be >= 1, got {req.max_concurrent}")
    if req.subset is not None and req.subset < 1:
        raise ValueError(f"--subset must be >= 1, got {req.subset}")
    if req.reduction_factor <= 1:
        raise ValueError(f"--reduction-factor must be > 1, got {req.reduction_factor}")
    refuse_credentials(req.storage, "--storage")
    if req.search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ValueError("--search optuna needs the optuna package (pip install optuna==5.0.0)") from None


def _image_side(req: SearchRequest) -> int:
    """The training images' side, from metadata: the driver reads no pixels (each trial reads its own data).
    --data and --test must have the same classes."""
    from ..engine.input import open_input

    train_input = open_input(req.data, req.store)
    train, test = train_input.info, open_input(req.test, req.store).info
    if train.classes != test.classes:
        raise ValueError(f"--data and --test have different classes ({len(train.classes)} vs {len(test.classes)})")
    size, limit = train.pixel_bytes, stream_min_bytes()
    if req.workers > 1 and not req.quick and size is not None and size >= limit:
        # a multi-worker trial hands its copy to its Train workers as one object (fit_method_distributed)
        raise SplitTooLarge(f"tune --workers {req.workers}: each trial would put {train_input.split.display} "
                            f"({mib(size)} of pixels) in Ray's object store as one object, at or above {mib(limit)} "
                            f"(${STREAM_MIN_BYTES_ENV}); search with --workers 1 or --quick")
    return train.image_side


def _scheduler(req: SearchRequest, space: Space):
    if req.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    epochs = [p.values for p in space.params if p.key == "victim.epochs"]
    max_t = max(max(v) for v in epochs) if epochs else victim_config({}).epochs or 40
    return ASHAScheduler(time_attr="victim_epoch", max_t=max(max_t, req.grace_period),
                         grace_period=req.grace_period, reduction_factor=req.reduction_factor)


def _searcher(req: SearchRequest, concurrency: int):
    """Seeded, so a search draws the same trials every time. Tune ignores ``max_concurrent_trials`` for a
    BasicVariantGenerator, which takes the bound itself."""
    if req.search != "optuna":
        from ray.tune.search import BasicVariantGenerator

        # grid points expanded, distributions sampled
        return BasicVariantGenerator(max_concurrent=concurrency, random_state=req.seed)
    from ray.tune.search.optuna import OptunaSearch

    from .trial_phases import VictimResultsLimiter

    return VictimResultsLimiter(OptunaSearch(seed=req.seed), max_concurrent=concurrency)


def trial_resources(req: SearchRequest):
    """What Tune reserves for each trial: one bundle of --cpus-per-trial CPUs and --gpus-per-trial GPUs, so the
    trial's process lands on a node with both and Ray sets its CUDA_VISIBLE_DEVICES to its GPUs. A multi-worker
    trial's Train workers are placed by their own trainer, outside this bundle."""
    from ray import tune

    bundle = {"CPU": req.cpus_per_trial, **({"GPU": req.gpus_per_trial} if req.gpus_per_trial > 0 else {})}
    return tune.PlacementGroupFactory([bundle])


def _refuse_impossible_trials(req: SearchRequest) -> None:
    """A trial no node can hold would wait in Tune's queue forever: fail at once on an embedded Ray, after
    --resource-timeout on a cluster that may autoscale, in one line naming the flags."""
    from .resources import wait_for_resources

    wait_for_resources(req.cpus_per_trial, req.gpus_per_trial,
                       f"a trial of --cpus-per-trial {req.cpus_per_trial:g} --gpus-per-trial {req.gpus_per_trial:g}",
                       req.resource_timeout_s, units=1)


def _concurrency(req: SearchRequest) -> int:
    """Trials at once: --max-concurrent, else as many as the cluster's CPUs fit. A multi-worker trial holds
    its own CPU while its Train workers need theirs outside that reservation (a V2 trainer places its
    workers in a placement group of its own), so more trials than fit would each hold a CPU and wait
    forever for workers: the bound is then capped at what fits."""
    import ray

    per_trial = req.cpus_per_trial + (req.workers if req.workers > 1 else 0)
    fits = max(1, int(ray.cluster_resources().get("CPU", 1) // per_trial))
    if req.workers > 1 and req.max_concurrent is not None and req.max_concurrent > fits:
        print(f"sem-dist tune: --max-concurrent {req.max_concurrent} lowered to {fits}: each trial needs "
              f"{per_trial:g} CPUs ({req.cpus_per_trial:g} for the trial + {req.workers} Train workers)",
              file=sys.stderr)
        return fits
    return req.max_concurrent or fits


def _result_rows(exp_path: str, fs, keys: list[str], starts: dict[str, int]) -> list[dict]:
    from ray.tune import ExperimentAnalysis

    rows = []
    for trial in ExperimentAnalysis(exp_path, storage_filesystem=fs).trials:
        last = trial.last_result or {}
        acc = last.get("test_acc")
        complete = acc is not None and last.get("victim_epoch", 0) >= last.get("victim_epochs", math.inf)
        status = {"TERMINATED": "done" if complete else "stopped", "ERROR": "error"}.get(trial.status, "unfinished")
        row = {"trial_id": trial.trial_id, "status": status, **{k: trial.config.get(k) for k in keys}}
        row.update({k: last.get(k) for k in (METRIC, "test_acc", "victim_epoch", "gen_s", "regen_s", "protect_s",
                                              "victim_s", "cost_worker_s")})
        row["starts"] = starts.get(trial.trial_id, 0)
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"])


def best_row(rows: list[dict]) -> dict | None:
    """The lowest objective among trials that trained their victim to the end (ASHA-stopped trials
    report an earlier epoch's accuracy, which is not comparable); None without any."""
    done = [r for r in rows if r["status"] == "done" and r.get(METRIC) is not None]
    return min(done, key=lambda r: (r[METRIC], r["trial_id"])) if done else None


def _write_results(exp_uri: str, rows: list[dict], keys: list[str], store: StorageOptions) -> list[str]:
    from ..analysis.sensitivity import plot_figure5, plot_table6, to_csv, to_markdown

    columns = ["trial_id", "status", *keys, "test_acc", METRIC, "victim_epoch", "gen_s", "regen_s", "protect_s",
               "victim_s", "cost_worker_s", "starts"]
    _write(f"{exp_uri}/results.csv", to_csv(rows, columns).encode(), store)
    md_columns = [c for c in columns if c != METRIC or any(r.get(METRIC) != r.get("test_acc") for r in rows)]
    _write(f"{exp_uri}/results.md", to_markdown(rows, md_columns).encode(), store)
    figures = []
    finished = [r for r in rows if r["status"] == "done"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, plot in (("figure5.png", plot_figure5), ("table6.png", plot_table6)):
            local = os.path.join(tmp, name)
            if plot(finished, local):
                with open(local, "rb") as f:
                    _write(f"{exp_uri}/{name}", f.read(), store)
                figures.append(f"{exp_uri}/{name}")
    return figures


def _settings_record(req: SearchRequest, space: Space) -> dict:
    """What --resume needs to rebuild the trials exactly (no data URIs: they may carry credentials)."""
    keep = ("method", "search", "scheduler", "num_samples", "workers", "cpus_per_trial", "gpus_per_trial", "subset",
            "grace_period", "reduction_factor", "max_protect_s", "seed", "quick", "device")
    return {"space": space.to_dict(), **{k: getattr(req, k) for k in keep}}


def run_search(req: SearchRequest) -> SearchResult:
    """Run (or with ``req.resume`` continue) a search; returns the best config and the results' paths."""
    from ray import tune

    from ..data.storage import redact_uri
    from .cluster import connect
    from .storage import check_cluster_visible, storage_for

    _check(req)
    store = req.store
    storage_path, fs = storage_for(req.storage, store)
    exp_path = f"{storage_path}/{req.name}"
    exp_uri = f"{req.storage.rstrip('/')}/{req.name}" if fs is not None else exp_path
    stored = _read(f"{exp_uri}/{SEARCH_FILE}", store)
    if stored is not None and not req.resume:
        raise FileExistsError(f"a search named {req.name!r} already exists under {redact_uri(req.storage)}; "
                              "pass --resume to continue it or choose another --name")
    if req.resume and stored is not None:  # the stored space and settings win: the trials must not change
        record = json.loads(stored)
        req = dataclasses.replace(req, **{k: v for k, v in record.items() if k != "space"})
    side = _image_side(req)
    if req.resume and stored is not None:
        space = parse_space(record["space"], req.method, side, SEARCH_FILE)
    else:
        space = load_space(req.space, req.method, side, req.quick)
        if req.resume:
            print(f"sem-dist tune: nothing to resume at {exp_uri}; starting the search", file=sys.stderr)
    keys = [p.key for p in space.searched()]
    # trials, on any node, read the data and write the search's state and records. Checked (joining Ray) after
    # every check that needs no Ray, so a bad profile, space or split is one line, not one after Ray's start-up
    # line; and before anything is written.
    check_cluster_visible({"--data": req.data, "--test": req.test, "--storage": req.storage}, req.shared_fs,
                          address=req.address)
    connect(req.address)
    _refuse_impossible_trials(req)
    settings = TrialSettings(data=req.data, test=req.test, quick=req.quick, method=req.method, device=req.device,
                             workers=req.workers, cpus_per_worker=1.0, subset=req.subset, seed=req.seed,
                             storage=exp_uri, store=store,
                             max_protect_s=req.max_protect_s, shared_fs=req.shared_fs)
    trainable = tune.with_resources(tune.with_parameters(run_trial, settings=settings), trial_resources(req))
    if req.resume and tune.Tuner.can_restore(exp_path, storage_filesystem=fs):
        tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        _write(f"{exp_uri}/{SEARCH_FILE}", json.dumps(_settings_record(req, space), indent=2).encode(), store)
        tuner = tune.Tuner(
            trainable, param_space=to_ray(space, req.search),
            tune_config=tune.TuneConfig(metric=METRIC, mode="min", num_samples=req.num_samples,
                                        search_alg=_searcher(req, _concurrency(req)),
                                        scheduler=_scheduler(req, space), reuse_actors=False),
            run_config=tune.RunConfig(name=req.name, storage_path=storage_path, storage_filesystem=fs,
                                      failure_config=tune.FailureConfig(max_failures=1), verbose=1))
    tuner.fit()
    rows = _result_rows(exp_path, fs, keys, trial_starts(exp_uri, store))
    figures = _write_results(exp_uri, rows, keys, store)
    best = best_row(rows)
    return SearchResult(best_config=None if best is None else {k: best[k] for k in keys},
                        best_test_acc=None if best is None else best["test_acc"], trials=len(rows),
                        table=f"{exp_uri}/results.md", csv=f"{exp_uri}/results.csv", figures=figures, rows=rows,
                        interrupted=any(r["status"] == "unfinished" for r in rows), experiment=exp_uri)
