"""The search space of ``sem-dist tune``: a YAML mapping of dotted config keys to value specs.

    budget.rho_r: {grid: [0, 2/255, 4/255]}   # every value (a grid point), fractions accepted
    solver.samples: {choice: [1, 3, 5]}       # one value drawn per trial
    trainer.steps: {uniform: [500, 5000]}     # integer fields draw integers, float fields floats
    trainer.lr: {loguniform: [0.01, 0.1]}
    victim.adv_rho: 4/255                     # a plain value: fixed for every trial

Keys are the protection config's (``budget.*``, ``solver.*``, ``attack.*``, ``trainer.*``, ``seed``,
``regen_batch_size``, ``extra.*``) or the victim's (``victim.*``: the attacker's setting — ``adv_rho``,
``filter``, ``arch``, ``epochs``, ...). Everything is checked before any trial starts: an unknown key, an
empty range, a fraction that does not parse or a radius outside [0, 1] is a one-line ``ValueError``.
This module knows nothing of Ray; :func:`to_ray` turns a parsed space into Tune's domains.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import ProtectConfig, parse_fraction, resolve_config
from ..victims.train import VictimConfig

KINDS = ("grid", "choice", "uniform", "loguniform")
VICTIM_PREFIX = "victim."
# victim fields the search sets itself: it trains for whole epochs and evaluates once per epoch
VICTIM_RESERVED = {"steps", "eval_every"}
RADII = {"budget.rho_u", "budget.rho_a", "budget.rho_r", "victim.adv_rho"}

# ρ_r, J and M: the paper's sensitivity study (Table 6 and Figure 5) at the official CIFAR-10 scale.
DEFAULT_SPACE = {"budget.rho_r": {"grid": ["0", "2/255", "4/255"]},
                 "solver.samples": {"grid": [1, 3, 5]},
                 "trainer.steps": {"grid": [1000, 5000]}}
# --quick: a few-minute search on a tiny digits subset (small CNN, a handful of generator steps).
# ρ_u = 16/255 as in the demo: at this scale 8/255 protects only partly.
QUICK_SPACE = {"budget.rho_r": {"grid": ["0", "4/255"]},
               "trainer.steps": {"grid": [4, 12]},
               "budget.rho_u": "16/255", "budget.rho_a": "4/255", "trainer.arch": "small_cnn",
               "trainer.batch_size": 64, "trainer.lr_step": 10 ** 9, "solver.steps": 3, "solver.samples": 1,
               "attack.steps": 1, "victim.arch": "small_cnn", "victim.epochs": 5, "victim.batch_size": 16}


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` is one of ``KINDS`` or ``fixed``; ``values`` are parsed (radii as floats)."""

    key: str
    kind: str
    values: tuple
    integer: bool = False  # an int config field: ranges draw integers


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]

    def fixed(self) -> dict[str, Any]:
        return {p.key: p.values[0] for p in self.params if p.kind == "fixed"}

    def searched(self) -> list[Param]:
        return [p for p in self.params if p.kind != "fixed"]

    def to_dict(self) -> dict:
        """The JSON/YAML form (what :func:`parse_space` reads back)."""
        return {p.key: (p.values[0] if p.kind == "fixed" else {p.kind: list(p.values)}) for p in self.params}


def _field_default(key: str) -> Any:
    """The default of a dotted config key, or raise naming it when it is not a config field."""
    if key.startswith(VICTIM_PREFIX):
        name = key[len(VICTIM_PREFIX):]
        fields = {f.name: f for f in dataclasses.fields(VictimConfig)}
        if name in VICTIM_RESERVED or name not in fields:
            raise ValueError(f"unknown victim key {key!r} in the search space"
                             + (" (the search trains whole epochs: use victim.epochs)" if name in VICTIM_RESERVED
                                else f"; victim keys: {', '.join(sorted(set(fields) - VICTIM_RESERVED))}"))
        return getattr(VictimConfig(), name)
    parts = key.split(".")
    if parts[0] == "extra" and len(parts) == 2:
        return None
    node: Any = ProtectConfig()
    for part in parts:
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            raise ValueError(f"unknown config key {key!r} in the search space (write e.g. budget.rho_r, "
                             "solver.samples, trainer.steps or victim.adv_rho)")
        node = getattr(node, part)
    if dataclasses.is_dataclass(node) or key == "method":
        raise ValueError(f"config key {key!r} cannot be searched (name a field, e.g. {key}.…)"
                         if dataclasses.is_dataclass(node) else "the method is --method, not a space key")
    return node


def _value(key: str, raw: Any, default: Any) -> Any:
    """One value of ``key`` parsed like the config does: fractions for numbers, strings kept."""
    if raw is None:
        if key == "budget.rho_r":
            return None  # ρ_r = ρ_a
        raise ValueError(f"{key}: a value is missing")
    if isinstance(default, bool):
        if not isinstance(raw, bool):
            raise ValueError(f"{key}: expected true or false, got {raw!r}")
        return raw
    if isinstance(default, str) or (default is None and isinstance(raw, str) and "/" not in raw
                                    and key not in RADII):
        return raw
    try:
        value = parse_fraction(raw)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    if key in RADII and not 0.0 <= value <= 1.0:
        raise ValueError(f"{key}={raw} is outside [0, 1] (radii are in [0,1] pixel units, e.g. 8/255)")
    if isinstance(default, int) and not isinstance(default, bool):
        if value != int(value):
            raise ValueError(f"{key}: {raw!r} is not a whole number")
        return int(value)
    return value


def _param(key: str, spec: Any) -> Param:
    default = _field_default(key)
    if not isinstance(spec, dict):
        return Param(key, "fixed", (_value(key, spec, default),))
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ValueError(f"{key}: write one of {', '.join(f'{k}: [...]' for k in KINDS)} or a plain value, "
                         f"got {spec!r}")
    kind, raw = next(iter(spec.items()))
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{key}: {kind} needs a non-empty list, got {raw!r}")
    values = tuple(_value(key, v, default) for v in raw)
    integer = isinstance(default, int) and not isinstance(default, bool)
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values):
            raise ValueError(f"{key}: {kind} takes [low, high], got {raw!r}")
        lo, hi = values
        if not lo < hi:
            raise ValueError(f"{key}: empty range {kind} [{raw[0]}, {raw[1]}] (low must be below high)")
        if kind == "loguniform" and lo <= 0:
            raise ValueError(f"{key}: loguniform needs low > 0, got {raw[0]}")
    return Param(key, kind, values, integer)


def parse_space(spec: Any, method: str = "sem", image_side: int = 32, where: str = "search space") -> Space:
    """Validate a space mapping; every edge value must also give a valid config for ``method``."""
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"{where}: expected a non-empty mapping of dotted config keys to values or "
                         f"{{grid|choice|uniform|loguniform: [...]}}")
    params = tuple(_param(str(k), v) for k, v in spec.items())
    fixed = {p.key: p.values[0] for p in params if p.kind == "fixed"}
    # each listed value (a range's two ends) alone on top of the fixed ones must give a valid configuration
    for p in params:
        for v in p.values:
            trial = {**fixed, p.key: v}
            protect_config(method, image_side, trial)
            victim_config(trial)
    return Space(params)


def load_space(path: str | Path | None, method: str = "sem", image_side: int = 32, quick: bool = False) -> Space:
    """The space in a YAML file, or the default (``--quick``: the quick) space when ``path`` is None."""
    if path is None:
        return parse_space(QUICK_SPACE if quick else DEFAULT_SPACE, method, image_side, "default space")
    text = Path(path).read_text()
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if quick:  # --quick keeps the user's keys and adds the small-scale settings they leave unset
        spec = {**{k: v for k, v in QUICK_SPACE.items() if not isinstance(v, dict)}, **(spec or {})}
    return parse_space(spec, method, image_side, str(path))


def protect_config(method: str, image_side: int, values: dict[str, Any]) -> ProtectConfig:
    """The protection config of a trial: method defaults ← the trial's non-victim keys."""
    overrides = {k: v for k, v in values.items() if not k.startswith(VICTIM_PREFIX)}
    cfg = resolve_config(method, image_side, overrides={k: v for k, v in overrides.items() if k != "budget.rho_r"})
    if "budget.rho_r" in overrides:  # None is meaningful here (ρ_r = ρ_a), which overrides would skip
        cfg.budget.rho_r = overrides["budget.rho_r"]
        cfg.validate()
    return cfg


def victim_config(values: dict[str, Any], **settings) -> VictimConfig:
    """The victim of a trial: ``settings`` (search-wide) ← the trial's ``victim.*`` keys."""
    fields = {k[len(VICTIM_PREFIX):]: v for k, v in values.items() if k.startswith(VICTIM_PREFIX)}
    return VictimConfig(**{**settings, **fields}).validate()


def to_ray(space: Space, search: str) -> dict[str, Any]:
    """Tune's ``param_space``. ``grid`` (search=grid) expands every grid point; with random and optuna
    searchers a grid becomes a choice, since they draw each trial's values instead of enumerating."""
    from ray import tune

    out: dict[str, Any] = {}
    for p in space.params:
        v = list(p.values)
        if p.kind == "fixed":
            out[p.key] = v[0]
        elif p.kind == "grid" and search == "grid":
            out[p.key] = tune.grid_search(v)
        elif p.kind in ("grid", "choice"):
            out[p.key] = tune.choice(v)
        elif p.kind == "uniform":
            out[p.key] = tune.randint(v[0], v[1] + 1) if p.integer else tune.uniform(*v)
        else:
            out[p.key] = tune.lograndint(v[0], v[1] + 1) if p.integer else tune.loguniform(*v)
    return out
