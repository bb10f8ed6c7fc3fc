"""Memory layout, compilation and autocast are speed choices only: the noise stays what the plain path gives."""
from __future__ import annotations

import pytest
import torch

from sem_dist.config import resolve_config
from sem_dist.models import build_model
from sem_dist.perturb.generator import GeneratorTraining
from sem_dist.perturb.noise import NoiseSpec, RepeatStream, noise_gradient, solve_noise
from sem_dist.runtime.device import (CPU_CHUNK_PIXELS, MIN_CHUNK_ROWS, prepare_model, resolve_amp, resolve_compile,
                                     resolve_pass_chunk, trainer_layout)
from sem_dist.runtime.rng import CounterStream
from sem_dist.training.pgd import frozen, pgd

CPU = torch.device("cpu")
RHO = 8 / 255


def _setup(**over):
    cfg = resolve_config("sem", 16, overrides={"trainer.arch": "small_cnn", "solver.steps": 3, "solver.samples": 2,
                                               **over})
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)
    return NoiseSpec.from_config(cfg, 16), x, y


def _model(memory_format="contiguous", compile=False, backend="inductor"):
    return prepare_model(build_model("small_cnn", 10, 3, seed=0), CPU, memory_format, compile, backend)


def _grad_and_noise(model, spec, x, y):
    with frozen(model):
        delta = torch.full_like(x, RHO / 2)
        grad = noise_gradient(model, x, y, delta, spec, RepeatStream(CounterStream.for_rows(1, torch.arange(4)), 2))
        noise = solve_noise(model, x, y, spec, CounterStream.for_rows(2, torch.arange(4)))
    return grad, noise


def _assert_same(a, b):
    (ga, na), (gb, nb) = a, b
    assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-7)
    # signed steps turn float noise in a near-zero gradient element into a 2α step: allow a few such elements
    assert (na - nb).abs().gt(1e-6).float().mean() < 0.01


def test_channels_last_gives_the_plain_paths_noise():
    spec, x, y = _setup()
    plain = _model("contiguous")
    fast = _model("channels_last")
    convs = [p for p in fast.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    _assert_same(_grad_and_noise(plain, spec, x, y), _grad_and_noise(fast, spec, x, y))


def _textbook_order(model):
    """The same model (same parameters) with each ReLU back before its max-pooling."""
    import copy

    model = copy.deepcopy(model)
    layers = list(model.net.features)
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, torch.nn.MaxPool2d)]
    for i in pools:
        layers[i], layers[i + 1] = layers[i + 1], layers[i]
    assert isinstance(layers[2], torch.nn.ReLU)
    model.net.features = torch.nn.Sequential(*layers)
    return model


@pytest.mark.parametrize("arch", ["small_cnn", "vgg16"])
def test_pooling_before_relu_gives_the_textbook_orders_numbers_bit_for_bit(arch):
    # models/blocks.py pools before the ReLU for speed; outputs, input and weight gradients and BatchNorm's
    # running statistics must be those of conv → BN → ReLU → pool exactly, in fp32 and under bf16 autocast
    fast = build_model(arch, 10, 3, seed=0).to(memory_format=torch.channels_last)
    textbook = _textbook_order(fast)
    assert list(fast.state_dict()) == list(textbook.state_dict())  # old checkpoints load
    g = torch.Generator().manual_seed(0)
    for amp in (False, True):
        for train in (False, True):
            x = (torch.rand(16, 3, 32, 32, generator=g) * 2 - 0.5).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (16,), generator=g)
            got = []
            for model in (fast, textbook):
                model.train(train)
                model.zero_grad()
                xi = x.clone().requires_grad_(True)
                with torch.autocast("cpu", torch.bfloat16, enabled=amp, cache_enabled=False):
                    out = model(xi)
                torch.nn.functional.cross_entropy(out.float(), y).backward()
                got.append([out, xi.grad, *(p.grad for p in model.parameters()), *model.buffers()])
            assert all(torch.equal(a, b) for a, b in zip(*got)), (arch, amp, train)


def test_compiled_model_gives_the_plain_paths_noise():
    # Dynamo graph capture + AOT autograd, which is what `trainer.compile: on` adds around the model; the
    # inductor code generator itself is not run here (it needs minutes of compilation on a 2-core CPU)
    spec, x, y = _setup()
    _assert_same(_grad_and_noise(_model(), spec, x, y),
                 _grad_and_noise(_model("channels_last", compile=True, backend="aot_eager"), spec, x, y))


@pytest.mark.trained
def test_pgd_under_autocast_keeps_its_bounds_and_ascends():
    _, x, y = _setup()
    model = _model("channels_last")
    with frozen(model):
        d32 = pgd(model, x, y, RHO, RHO / 4, 5)
        d16 = pgd(model, x, y, RHO, RHO / 4, 5, amp=True)
        loss = [float(torch.nn.functional.cross_entropy(model(x + d), y)) for d in (torch.zeros_like(x), d16)]
    assert d16.dtype == torch.float32 and d16.abs().max() <= RHO + 1e-6 and (x + d16).min() >= 0
    assert loss[1] > loss[0]
    # bf16 changes details, not the attack: agreement 0.928 (native) / 0.937 (AVX2 kernels), tests/spread.py small
    assert (d16.sign() == d32.sign()).float().mean() > 0.7


def test_layout_choices_resolve_by_the_documented_rule_and_bad_values_are_named():
    assert trainer_layout(resolve_config("sem", 32).trainer) == {"memory_format": "channels_last", "compile": True}
    assert not resolve_compile("auto", "resnet18", 60)  # a demo does not repay the compile time
    assert not resolve_compile("auto", "small_cnn", 5000)  # measured slower compiled
    assert resolve_compile("on", "small_cnn", 1) and not resolve_compile("off", "resnet18", 5000)
    with pytest.raises(ValueError, match="trainer.compile"):
        resolve_config("sem", 32, overrides={"trainer.compile": "sometimes"})
    with pytest.raises(ValueError, match="trainer.memory_format"):
        resolve_config("sem", 32, overrides={"trainer.memory_format": "nhwc"})


def test_chunked_passes_give_the_whole_passs_noise_and_attack():
    # J·B = 8 rows as chunks of 3, 3 and 2: on a frozen model each row's gradient is its own
    spec, x, y = _setup(**{"trainer.pass_chunk": "off"})
    chunked, _, _ = _setup(**{"trainer.pass_chunk": 3})
    assert spec.chunk_rows(x) is None and chunked.chunk_rows(x) == 3
    model = _model("channels_last")
    _assert_same(_grad_and_noise(model, spec, x, y), _grad_and_noise(model, chunked, x, y))
    with frozen(model):
        whole = pgd(model, x, y, RHO, RHO / 4, 3, stream=CounterStream.for_rows(3, torch.arange(4)))
        split = pgd(model, x, y, RHO, RHO / 4, 3, stream=CounterStream.for_rows(3, torch.arange(4)), chunk=3)
    assert (whole - split).abs().gt(1e-6).float().mean() < 0.01


def test_a_chunked_algorithm_1_step_trains_theta_as_the_whole_pass_does():
    over = {"trainer.arch": "small_cnn", "trainer.batch_size": 4, "solver.steps": 2, "solver.samples": 2,
            "attack.steps": 2}
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)
    runs = [GeneratorTraining.create(resolve_config("sem", 16, overrides={**over, "trainer.pass_chunk": c}),
                                     10, 3, 16, CPU) for c in ("off", 3)]
    for r in runs:
        r.run_step(x, y)
    for a, b in zip(*(r.model.state_dict().values() for r in runs)):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4)


def test_amp_setting_takes_auto_on_off_and_booleans_and_names_a_bad_value():
    t = resolve_config("sem", 32).trainer
    assert t.amp == "auto" and trainer_layout(t, CPU, (3, 32, 32))["amp"] == resolve_amp("auto", CPU)
    assert resolve_config("sem", 32, overrides={"trainer.amp": True}).trainer.amp == "on"  # YAML's `amp: true`
    assert resolve_config("sem", 32, overrides={"trainer.amp": "OFF"}).trainer.amp == "off"
    assert not resolve_amp("auto", torch.device("cuda"))  # measured no faster on an H200 (device.resolve_amp)
    with pytest.raises(ValueError, match="trainer.amp='fp16'"):
        resolve_config("sem", 32, overrides={"trainer.amp": "fp16"})


def test_pass_chunk_resolves_by_the_documented_rule_and_bad_values_are_named():
    cuda = torch.device("cuda")
    assert resolve_pass_chunk("auto", CPU, (3, 32, 32)) == CPU_CHUNK_PIXELS // 1024
    assert resolve_pass_chunk("auto", CPU, (3, 224, 224)) == MIN_CHUNK_ROWS  # large images: a floor
    assert resolve_pass_chunk("auto", cuda, (3, 32, 32)) is None  # a GPU runs the pass whole
    assert resolve_pass_chunk("off", CPU, (3, 32, 32)) is None and resolve_pass_chunk(7, cuda, (3, 8, 8)) == 7
    layout = trainer_layout(resolve_config("sem", 32, overrides={"trainer.pass_chunk": "16"}).trainer, CPU, (3, 32, 32))
    assert layout["pass_chunk"] == 16
    for bad in ("0", "sometimes", 2.5):
        with pytest.raises(ValueError, match="trainer.pass_chunk"):
            resolve_config("sem", 32, overrides={"trainer.pass_chunk": bad})
