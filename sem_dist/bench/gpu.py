"""Algorithm 1 and Algorithm 4 on whatever GPU this machine has (issue 21): step times eager and as CUDA graphs,
fp32 and bf16, against the GPU's measured matmul peak. Runs where only PyTorch is installed (no Ray, YAML,
NumPy or storage libraries): ``python -m sem_dist.bench gpu --json --out gpu.json`` from the repository root.
Without CUDA it runs on the CPU (``--device cpu``; the graphed variants then run the same static-buffer code
uncaptured), which is what its test does at a tiny size.

Defaults: CIFAR ResNet-18, B = 128, the paper's K_u = 10, J = 5, K_a = 10, random 3×32×32 data and labels.
Each variant is built, warmed up (WARMUP_STEPS steps: the graphed ones record their graphs there), timed over
``--reps`` steps (median) and released before the next, so each has the GPU and its memory to itself; the eager
variants run first, then the graphed ones. A variant that fails leaves ``<key>_error`` (one line) and the
others run; ``--out`` is rewritten after every variant. Progress: one line per variant on stderr. Keys (times
in seconds, medians):

- sem_step_s, sem_bf16_step_s, sem_graphed_step_s, sem_graphed_bf16_step_s: one SEM step (Algorithm 1) eager
  fp32, eager under bf16 autocast (fp32 master weights), as CUDA graphs (``trainer.graphs: on``) fp32, bf16.
- rem_step_s, rem_graphed_step_s, rem_graphed_bf16_step_s; rem_over_sem (eager fp32),
  rem_over_sem_graphed, rem_over_sem_graphed_bf16 (each REM step over the SEM step of the same variant).
- t_input_grad_pass_s (eager fp32), t_input_grad_pass_bf16_s, t_input_grad_pass_graphed_s,
  t_input_grad_pass_graphed_bf16_s: one input-gradient pass over B images, as the solvers run it;
  t_train_pass_s: one eager fp32 training step (forward, backward, SGD) on B images.
- passes_share_<variant>: (a step's input-gradient passes counted in B-image passes × the matching pass time +
  t_train_pass_s) / step time: 1 means the step costs exactly its passes; below 1, time goes elsewhere
  (launches between passes, Python, transforms, draws); above 1, the step runs its big J·B passes faster per
  image than B-image passes.
- image_passes_per_s_<variant>: images through a forward/backward pass per second (input-gradient passes + the
  training pass).
- flops_input_grad_per_image, flops_train_per_image: counted by ``torch.utils.flop_counter`` on the model
  (convolutions and matmuls); flops_sem_step, flops_rem_step from them and the step's pass counts;
  tflops_<variant>: achieved TFLOP/s; peak_tflops_bf16, peak_tflops_fp32 (TF32 off), peak_tflops_tf32:
  square ``--matmul-size`` matmuls; peak_fraction_<variant>: tflops over the peak of its precision (bf16 for
  bf16 variants; for fp32 ones TF32 when cuDNN may use it for convolutions, PyTorch's default, else fp32).
- alg4_images_per_s, alg4_bf16_images_per_s, alg4_graphed_images_per_s, alg4_graphed_bf16_images_per_s:
  Algorithm 4's solve (K_u·J passes per image, per-sample keys from ids, ``KeyedSolver``) over batches of
  ``--regen-batch`` images on one GPU; alg4_graphed_max_diff_levels and alg4_graphed_equal_fraction: the
  graphed fp32 solve against the eager one on the same batch (largest |δ| difference in 1/255 levels; share
  of bitwise-equal elements). alg1_graphed_max_loss_diff, alg1_graphed_max_param_diff: graphed SEM steps
  against eager ones from the same start on the same batches, across two learning-rate changes.
- peak_memory_gib_<variant> (CUDA only), gpu, capability, memory_gib, torch, cuda, device, settings.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import platform
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import ProtectConfig, set_dotted
from ..models import build_model
from ..perturb.generator import GeneratorTraining
from ..perturb.noise import KeyedSolver, NoiseSpec
from ..runtime.device import CapturedCall, graph_mode, prepare_for, resolve_device
from ..runtime.rng import CounterStream
from ..training.pgd import frozen, input_gradient
from .alg1 import _timed

WARMUP_STEPS = 2  # graphed variants: one eager call per graph, then the call that records it
FLOP_COUNT_IMAGES = 2  # images in the counted passes (FLOPs scale with the batch)
AGREEMENT_STEPS, AGREEMENT_LR_STEP = 7, 3  # replays at lr 0.1 and 0.01, then a third lr

# The bench measures SEM and REM as their presets (configs/sem.yaml, rem.yaml) define them without reading YAML,
# which a bare GPU machine may lack: the config dataclasses' defaults are SEM's preset for 32×32 images, and
# REM differs from it only in the noise-side inner perturbation. tests/test_bench_gpu.py checks both against
# resolve_config, so a preset that changes fails there rather than drifting from what this bench measures.
METHOD_OVERRIDES = {"sem": {}, "rem": {"solver.inner": "adversarial"}}

# (key, method, amp, trainer.graphs)
STEP_VARIANTS = (("sem", "sem", False, "off"), ("sem_bf16", "sem", True, "off"),
                 ("sem_graphed", "sem", False, "on"), ("sem_graphed_bf16", "sem", True, "on"),
                 ("rem", "rem", False, "off"), ("rem_graphed", "rem", False, "on"),
                 ("rem_graphed_bf16", "rem", True, "on"))
# (key, amp, trainer.graphs) for the input-gradient pass and Algorithm 4
PASS_VARIANTS = (("", False, "off"), ("_bf16", True, "off"), ("_graphed", False, "on"), ("_graphed_bf16", True, "on"))


def add_arguments(group) -> None:
    group.add_argument("--device", default="auto", help="auto (default: CUDA when available), cuda[:N] or cpu")
    group.add_argument("--arch", default="resnet18", help="generator model (default resnet18, the paper's)")
    group.add_argument("--batch-size", type=int, default=128, help="images per step B (default 128)")
    group.add_argument("--ku", type=int, default=10, help="noise steps K_u (default 10)")
    group.add_argument("--samples", type=int, default=5, help="draws J per noise step (default 5)")
    group.add_argument("--ka", type=int, default=10, help="PGD steps K_a (default 10)")
    group.add_argument("--reps", type=int, help="timed SEM steps per variant (default 10; 3 with --quick); "
                                                "REM and Algorithm 4 take a third of them, at least 2")
    group.add_argument("--regen-batch", type=int, help="Algorithm 4 batch (default 512; 256 with --quick)")
    group.add_argument("--matmul-size", type=int, help="side of the square matmuls of the peak "
                                                       "(default 8192; 4096 with --quick)")
    group.add_argument("--out", help="also write the JSON result to this file")


def bench_config(method: str, overrides: dict) -> ProtectConfig:
    """``method``'s preset for 32×32 images with dotted ``overrides``, built without YAML (see METHOD_OVERRIDES)."""
    d: dict = {"method": method}
    for key, value in {**METHOD_OVERRIDES[method], **overrides}.items():
        set_dotted(d, key, value)
    return ProtectConfig.from_dict(d).validate()


def _progress(text: str) -> None:
    print(f"bench gpu: {text}", file=sys.stderr, flush=True)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device, key: str) -> dict:
    if device.type != "cuda":
        return {}
    return {f"peak_memory_gib_{key}": torch.cuda.max_memory_allocated(device) / 2 ** 30}


def _attempt(out: dict, key: str, device: torch.device, path: str | None, fn: Callable[[], dict]) -> None:
    """Run one variant; its keys into ``out``, or ``<key>_error`` with the failure's first line. With ``path``
    the result so far is written there after every variant, so a run cut short still leaves its figures."""
    _release(device)
    _progress(f"{key} ...")
    t0 = time.perf_counter()
    try:
        out.update(fn())
        _progress(f"{key} done in {time.perf_counter() - t0:.1f} s")
    except Exception as exc:  # one variant's failure (a capture error, out of memory) must not end the run
        line = (str(exc).strip().splitlines() or [""])[0]
        out[f"{key}_error"] = f"{type(exc).__name__}: {line}"[:400]
        _progress(f"{key} failed after {time.perf_counter() - t0:.1f} s: {out[f'{key}_error']}")
    finally:
        _release(device)
    if path:
        _write(out, path)


def _write(result: dict, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1, sort_keys=True)


def _median_time(device: torch.device, fn: Callable[[], object], warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(_timed(device, fn) for _ in range(reps))


def _step(key: str, cfg: ProtectConfig, x: torch.Tensor, y: torch.Tensor, reps: int) -> dict:
    training = GeneratorTraining.create(cfg, 10, x.shape[1], x.shape[-1], x.device)
    seconds = _median_time(x.device, lambda: training.run_step(x, y), WARMUP_STEPS, reps)
    return {f"{key}_step_s": seconds, **_peak_memory(x.device, key)}


def _frozen_pass(net, x, y, amp: bool) -> torch.Tensor:
    with frozen(net):
        return input_gradient(net, x, y, amp)


def _input_grad_pass(key: str, net, x: torch.Tensor, y: torch.Tensor, amp: bool, graphs: str, reps: int) -> dict:
    call = CapturedCall(lambda xs, ys: _frozen_pass(net, xs, ys, amp), graphs)
    return {f"t_input_grad_pass{key}_s": _median_time(x.device, lambda: call(x, y), WARMUP_STEPS, reps)}


def _train_pass(net, x: torch.Tensor, y: torch.Tensor, reps: int) -> dict:
    opt = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9)  # lr 0: θ stays as the other passes see it

    def step():
        net.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return {"t_train_pass_s": _median_time(x.device, step, WARMUP_STEPS, reps)}


def _flops(arch: str, device: torch.device, shape: tuple[int, ...]) -> dict:
    """FLOPs per image of an input-gradient pass (frozen model, gradient to the input only) and of a training
    pass (gradients to the weights), counted on a fresh model. ``loss.backward()`` rather than
    ``autograd.grad``: the counter's module hooks do not support the latter."""
    from torch.utils.flop_counter import FlopCounterMode  # torch >= 2.1

    net = build_model(arch, 10, shape[0], seed=0).to(device)
    x = torch.rand(FLOP_COUNT_IMAGES, *shape, device=device)
    y = torch.zeros(FLOP_COUNT_IMAGES, dtype=torch.long, device=device)
    counts = {}
    for name, train in (("input_grad", False), ("train", True)):
        net.train(train)
        for p in net.parameters():
            p.requires_grad_(train)
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(net(x.clone().requires_grad_(not train)), y, reduction="sum").backward()
        counts[f"flops_{name}_per_image"] = counter.get_total_flops() / FLOP_COUNT_IMAGES
    return counts


def _matmul_peak(device: torch.device, n: int) -> dict:
    """TFLOP/s of n×n matmuls: bf16, fp32 with TF32 off (true fp32) and on (what cuDNN uses for fp32 convs)."""
    out = {}
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for key, dtype, tf32 in (("bf16", torch.bfloat16, False), ("fp32", torch.float32, False),
                                 ("tf32", torch.float32, True)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.rand(n, n, device=device, dtype=dtype)
            b = torch.rand(n, n, device=device, dtype=dtype)
            seconds = _median_time(device, lambda: torch.mm(a, b), 3, 10)
            out[f"peak_tflops_{key}"] = 2 * n ** 3 / seconds / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return out


def _alg4(key: str, net, spec: NoiseSpec, graphs: str, batch: int, reps: int) -> dict:
    solver = KeyedSolver(net, spec, graphs)
    device = next(net.parameters()).device
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    ids = [f"img{i:07d}" for i in range(batch)]  # keys hashed per batch, as ``MinMinMax.perturb`` does
    seconds = _median_time(device, lambda: solver(x, y, CounterStream.for_samples(0, ids, device).keys),
                           WARMUP_STEPS, reps)
    return {f"alg4{key}_images_per_s": batch / seconds, **_peak_memory(device, f"alg4{key}")}


def _alg4_agreement(net, spec: NoiseSpec, batch: int) -> dict:
    """The graphed solve against the eager one on one batch (what a GPU run of Algorithm 4 would store)."""
    device = next(net.parameters()).device
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    keys = CounterStream.for_samples(1, [str(i) for i in range(batch)], device).keys
    eager = KeyedSolver(net, spec, "off")(x, y, keys)
    graphed = KeyedSolver(net, spec, "on")
    for _ in range(WARMUP_STEPS + 1):  # warm-up, record, replay
        delta = graphed(x, y, keys)
    return {"alg4_graphed_max_diff_levels": float((delta - eager).abs().max()) * 255.0,
            "alg4_graphed_equal_fraction": float((delta == eager).float().mean())}


def _alg1_agreement(cfg: ProtectConfig, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Graphed Algorithm-1 steps against eager ones from the same start on the same batches, across two
    learning-rate changes (lr_step AGREEMENT_LR_STEP): the steps a graph replays, the eager call of a new lr
    that keeps the old graph, and the warm-up and record of the new one. Largest differences of the per-step
    loss and of any weight after the last step; zero up to non-deterministic GPU kernels."""
    runs = [GeneratorTraining.create(dataclasses.replace(cfg, trainer=dataclasses.replace(
        cfg.trainer, graphs=graphs, lr_step=AGREEMENT_LR_STEP)), 10, x.shape[1], x.shape[-1], x.device)
        for graphs in ("off", "on")]
    losses = [[], []]
    for step in range(AGREEMENT_STEPS):
        xs = x.roll(step, 0)  # another batch each step, the same for both runs
        for run, loss in zip(runs, losses):
            loss.append(run.run_step(xs, y)["loss"])
    params = zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values())
    return {"alg1_graphed_max_loss_diff": max(abs(a - b) for a, b in zip(*losses)),
            "alg1_graphed_max_param_diff": max(float((a.float() - b.float()).abs().max()) for a, b in params)}


def _derived(out: dict, cfg: ProtectConfig, batch: int) -> None:
    """Ratios, shares and rates from the measured keys (only where the keys they need exist)."""
    k_u, j, k_a = cfg.solver.steps, cfg.solver.samples, cfg.attack.steps
    grad_images = {"sem": k_u * j * batch + k_a * batch, "rem": k_u * j * batch * (1 + k_a) + k_a * batch}
    per_image = (out.get("flops_input_grad_per_image"), out.get("flops_train_per_image"))
    if None not in per_image:
        for method, images in grad_images.items():
            out[f"flops_{method}_step"] = images * per_image[0] + batch * per_image[1]
    convs_tf32 = torch.backends.cudnn.allow_tf32
    for key, method, amp, graphs in STEP_VARIANTS:
        step = out.get(f"{key}_step_s")
        if step is None:
            continue
        out[f"image_passes_per_s_{key}"] = (grad_images[method] + batch) / step
        pass_key = ("_graphed" if graphs == "on" else "") + ("_bf16" if amp else "")
        t_pass, t_train = out.get(f"t_input_grad_pass{pass_key}_s"), out.get("t_train_pass_s")
        if t_pass is not None and t_train is not None:
            out[f"passes_share_{key}"] = (grad_images[method] / batch * t_pass + t_train) / step
        if f"flops_{method}_step" in out:
            out[f"tflops_{key}"] = out[f"flops_{method}_step"] / step / 1e12
            peak = out.get("peak_tflops_" + ("bf16" if amp else "tf32" if convs_tf32 else "fp32"))
            if peak:
                out[f"peak_fraction_{key}"] = out[f"tflops_{key}"] / peak
    for suffix in ("", "_graphed", "_graphed_bf16"):
        if f"rem{suffix}_step_s" in out and f"sem{suffix}_step_s" in out:
            out[f"rem_over_sem{suffix}"] = out[f"rem{suffix}_step_s"] / out[f"sem{suffix}_step_s"]


def _device_facts(device: torch.device) -> dict:
    facts = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
             "machine": platform.machine(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                     memory_gib=props.total_memory / 2 ** 30, cudnn=torch.backends.cudnn.version(),
                     cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    else:
        facts.update(gpu=None, cpu=platform.processor() or platform.machine())
    return facts


def run(quick: bool = False, verbose: bool = True, device: str = "auto", arch: str = "resnet18",
        batch_size: int = 128, ku: int = 10, samples: int = 5, ka: int = 10, reps: int | None = None,
        regen_batch: int | None = None, matmul_size: int | None = None, out: str | None = None) -> dict:
    dev = resolve_device(device)
    reps = reps or (3 if quick else 10)
    slow_reps = max(2, reps // 3)
    regen_batch = regen_batch or (256 if quick else 512)
    matmul_size = matmul_size or (4096 if quick else 8192)
    overrides = {"trainer.arch": arch, "trainer.batch_size": batch_size, "solver.steps": ku, "solver.samples": samples,
                 "attack.steps": ka}
    torch.manual_seed(0)
    result = {"bench": "gpu", "quick": quick, "arch": arch, "image": [3, 32, 32], "batch_size": batch_size,
              "K_u": ku, "J": samples, "K_a": ka, "reps": reps, "slow_reps": slow_reps, "regen_batch": regen_batch,
              "matmul_size": matmul_size, "warmup_steps": WARMUP_STEPS, **_device_facts(dev),
              "graphs_mode": graph_mode("on", dev)}
    x = torch.rand(batch_size, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch_size,), device=dev)
    sem = bench_config("sem", overrides)

    _attempt(result, "flops", dev, out, lambda: _flops(arch, dev, (3, 32, 32)))
    _attempt(result, "matmul_peak", dev, out, lambda: _matmul_peak(dev, matmul_size))
    net = prepare_for(sem.trainer, build_model(arch, 10, 3, seed=0), dev)
    spec = NoiseSpec.from_config(sem, 32)
    for phase in ("off", "on"):  # every eager figure first: a capture that took the process down leaves them in --out
        for key, amp, graphs in PASS_VARIANTS:
            if graphs == phase:
                _attempt(result, f"input_grad_pass{key}", dev, out,
                         lambda: _input_grad_pass(key, net, x, y, amp, graphs, reps))
        if phase == "off":
            _attempt(result, "train_pass", dev, out, lambda: _train_pass(net, x, y, reps))
        for key, method, amp, graphs in STEP_VARIANTS:
            if graphs == phase:
                cfg = bench_config(method, {**overrides, "trainer.amp": amp, "trainer.graphs": graphs})
                n = reps if method == "sem" else slow_reps
                _attempt(result, key, dev, out, lambda: _step(key, cfg, x, y, n))
        if phase == "on":
            _attempt(result, "alg1_agreement", dev, out, lambda: _alg1_agreement(sem, x, y))
        for key, amp, graphs in PASS_VARIANTS:
            if graphs == phase:
                _attempt(result, f"alg4{key}", dev, out,
                         lambda: _alg4(key, net, dataclasses.replace(spec, amp=amp), graphs, regen_batch, slow_reps))
        if phase == "on":
            _attempt(result, "alg4_agreement", dev, out, lambda: _alg4_agreement(net, spec, regen_batch))
    _derived(result, sem, batch_size)
    bad = [k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        result["nonfinite"] = bad
    if out:
        _write(result, out)
    return result
