"""Configuration dataclasses for protection runs.

All radii and step sizes are in [0, 1] pixel units (``8/255`` means eight grey levels).
Defaults come from the paper's Table 9 and the official code (see ``configs/<method>.yaml``):
a method's YAML gives its variant choices plus defaults for small (32×32-style) and
large (ImageNet-size) images; the user's overrides are applied last.
"""
from __future__ import annotations

import dataclasses
import fractions
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

LARGE_IMAGE_MIN_SIDE = 64  # images at least this wide use the ImageNet-size defaults and transforms

INNER_KINDS = ("random", "adversarial", "none")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
COMPILE_MODES = ("auto", "on", "off")
GRAPH_MODES = ("auto", "on", "off")
AMP_MODES = ("auto", "on", "off")
PASS_CHUNK_MODES = ("auto", "off")  # or a number of rows
TRANSFORMS = ("auto", "crop_flip", "resized_crop_flip", "none")


def parse_fraction(value: Any) -> float:
    """Parse ``8/255``, ``0.03`` or a number into a float; reject anything else with a clear error."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                return float(fractions.Fraction(num.strip())) / float(fractions.Fraction(den.strip()))
            return float(text)
        except (ValueError, ZeroDivisionError):
            pass
    raise ValueError(f"not a number or fraction: {value!r} (write e.g. 8/255 or 0.0314)")


def parse_amp(value: Any) -> str:
    """``auto``, ``on`` or ``off``; YAML's and the Python API's booleans mean ``on`` / ``off``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    if text not in AMP_MODES:
        raise ValueError(f"trainer.amp={value!r}: choose one of {', '.join(AMP_MODES)}")
    return text


def parse_pass_chunk(value: Any) -> str | int:
    """``auto``, ``off`` or a positive number of rows (``"64"`` from a command line or YAML string)."""
    text = str(value).strip().lower()
    if text in PASS_CHUNK_MODES:
        return text
    if text.isdigit() and int(text) >= 1 and not isinstance(value, (bool, float)):
        return int(text)
    raise ValueError(f"trainer.pass_chunk={value!r}: choose auto, off or a number of rows >= 1")


@dataclass
class Budget:
    """ℓ∞ radii in [0,1] pixel units."""

    rho_u: float = 8 / 255  # defensive (protective) noise δ^u
    rho_a: float = 4 / 255  # adversarial perturbation δ^a (θ's robust training; REM's inner max)
    rho_r: float | None = None  # SEM's random perturbation δ^r ~ U(-ρ_r, ρ_r); None means ρ_r = ρ_a

    @property
    def rho_random(self) -> float:
        return self.rho_a if self.rho_r is None else self.rho_r


@dataclass
class NoiseSolver:
    """The δ^u solver (Alg. 1 lines 2–9, Alg. 4): K_u signed-gradient steps, gradient averaged over J draws."""

    steps: int = 10  # K_u
    alpha_div: float = 5.0  # α_u = ρ_u / alpha_div
    samples: int = 5  # J
    inner: str = "random"  # noise-side inner perturbation: random (SEM) | adversarial (REM) | none
    transform: str = "auto"  # EOT distribution T: auto picks crop_flip (32×32) or resized_crop_flip (large)


@dataclass
class Attack:
    """PGD for δ^a (Alg. 1 line 11) and for REM's noise-side inner maximisation."""

    steps: int = 10  # K_a
    alpha_div: float = 5.0  # α_a = ρ_a / alpha_div
    random_start: bool = True
    algorithm: str = "pgd"  # REM's inner maximiser (Table 14): pgd | fgsm | tpgd | apgd


@dataclass
class Trainer:
    """Algorithm 1's outer loop: SGD on θ with step decay."""

    steps: int = 5000  # M
    batch_size: int = 128  # B (global, across workers)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 2000  # lr ×= lr_gamma every lr_step steps (official code)
    lr_gamma: float = 0.1
    model_adv: bool = True  # δ^a in θ's update (Eq. 5); False gives REM-δu and Table 7's last rows
    arch: str = "resnet18"
    checkpoint_every: int = 500
    amp: str = "auto"  # auto | on | off: bf16 autocast on every pass (auto: on CPUs with bf16 hardware)
    memory_format: str = "auto"  # auto | channels_last | contiguous (auto: channels_last, measured faster)
    compile: str = "auto"  # auto | on | off: torch.compile (auto: on for long runs of models it speeds up)
    pass_chunk: str | int = "auto"  # auto | off | N: rows per chunk of an input-gradient pass (auto: by device)
    graphs: str = "auto"  # auto | on | off: fixed-shape work as CUDA graphs over static buffers (auto: on CUDA)


@dataclass
class ProtectConfig:
    """A fully resolved protection run: method, budgets, solver, trainer, seed."""

    method: str = "sem"
    seed: int = 0
    budget: Budget = field(default_factory=Budget)
    solver: NoiseSolver = field(default_factory=NoiseSolver)
    attack: Attack = field(default_factory=Attack)
    trainer: Trainer = field(default_factory=Trainer)
    regen_batch_size: int = 256  # Algorithm 4 batch (memory only: results do not depend on it)
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific knobs (baselines)

    @property
    def alpha_u(self) -> float:
        return self.budget.rho_u / self.solver.alpha_div

    @property
    def alpha_a(self) -> float:
        return self.budget.rho_a / self.attack.alpha_div

    def validate(self) -> "ProtectConfig":
        b, s = self.budget, self.solver
        for name, v in (("rho_u", b.rho_u), ("rho_a", b.rho_a), ("rho_r", b.rho_random)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v} is outside [0, 1] (radii are in [0,1] pixel units, e.g. 8/255)")
        if b.rho_u <= 0:
            raise ValueError("rho_u must be > 0")
        if s.inner not in INNER_KINDS:
            raise ValueError(f"solver.inner={s.inner!r}: choose one of {', '.join(INNER_KINDS)}")
        if s.transform not in TRANSFORMS:
            raise ValueError(f"solver.transform={s.transform!r}: choose one of {', '.join(TRANSFORMS)}")
        for name, v in (("solver.steps", s.steps), ("solver.samples", s.samples), ("trainer.batch_size",
                        self.trainer.batch_size), ("regen_batch_size", self.regen_batch_size)):
            if int(v) < 1:
                raise ValueError(f"{name}={v} must be >= 1")
        for name, v, choices in (("trainer.memory_format", self.trainer.memory_format, MEMORY_FORMATS),
                                 ("trainer.compile", self.trainer.compile, COMPILE_MODES),
                                 ("trainer.graphs", self.trainer.graphs, GRAPH_MODES)):
            if v not in choices:
                raise ValueError(f"{name}={v!r}: choose one of {', '.join(choices)}")
        self.trainer.pass_chunk = parse_pass_chunk(self.trainer.pass_chunk)
        self.trainer.amp = parse_amp(self.trainer.amp)
        if self.trainer.steps < 0:
            raise ValueError(f"trainer.steps={self.trainer.steps} must be >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["derived"] = {"alpha_u": self.alpha_u, "alpha_a": self.alpha_a, "rho_r": self.budget.rho_random}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProtectConfig":
        d = {k: v for k, v in d.items() if k != "derived"}
        return _build(cls, d)


_SECTIONS = {"budget": Budget, "solver": NoiseSolver, "attack": Attack, "trainer": Trainer}
_RADII = {"rho_u", "rho_a", "rho_r"}


def _build(cls, d: Mapping[str, Any]):
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in names:
            raise ValueError(f"unknown config key {key!r} for {cls.__name__}")
        if key in _SECTIONS and isinstance(value, Mapping):
            value = _build(_SECTIONS[key], value)
        elif key in _RADII and value is not None:
            value = parse_fraction(value)
        kwargs[key] = value
    return cls(**kwargs)


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _load_yaml(text: str) -> Any:
    # imported here, not at the top: the dataclasses above are the engine's config and must import where only
    # PyTorch is installed (``python -m sem_dist.bench gpu`` on a bare GPU machine); only reading YAML needs it
    import yaml

    return yaml.safe_load(text)


def method_defaults(method: str, image_side: int = 32) -> dict[str, Any]:
    """The YAML defaults of ``method`` for images of side ``image_side`` (Table 9's two regimes)."""
    path = resources.files("sem_dist") / "configs" / f"{method}.yaml"
    if not path.is_file():
        known = sorted(p.name[:-5] for p in (resources.files("sem_dist") / "configs").iterdir()
                       if p.name.endswith(".yaml"))
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(known)}")
    raw = _load_yaml(path.read_text()) or {}
    large = raw.pop("large", {}) or {}
    return _merge(raw, large) if image_side >= LARGE_IMAGE_MIN_SIDE else raw


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    """Set ``trainer.steps``-style keys in a nested dict."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


def resolve_config(method: str = "sem", image_side: int = 32, config_file: str | Path | None = None,
                   overrides: Mapping[str, Any] | None = None) -> ProtectConfig:
    """Method YAML defaults ← optional user YAML ← dotted overrides (``{"trainer.steps": 100}``)."""
    d = method_defaults(method, image_side)
    if config_file is not None:
        user = _load_yaml(Path(config_file).read_text()) or {}
        if not isinstance(user, Mapping):
            raise ValueError(f"{config_file}: expected a mapping of config keys")
        user.pop("method", None)
        d = _merge(d, user)
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(d, key, value)
    d["method"] = method
    return ProtectConfig.from_dict(d).validate()
