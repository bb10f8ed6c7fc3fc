"""The import graph runs down the layers of docs/architecture.md: a module imports only from its own package or
from packages on lower floors (every import counts, including those inside functions), and no package's modules
import each other in a circle. Read from the source with ``ast``; nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "sem_dist"

# bottom → top; a package may import from the packages before it, never after
FLOORS = ["sem_dist", "config", "testing", "runtime", "models", "data", "training", "victims", "perturb", "analysis",
          "engine", "distributed", "protect", "commands", "cli", "bench", "__main__"]


def _module(path: Path) -> str:
    parts = ["sem_dist", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in ROOT.rglob("*.py")}


def _package(module: str) -> str:
    """The floor a module lives on: ``sem_dist.data.sources.cifar`` → ``data``; the package face → ``sem_dist``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sem_dist"


def _imports(module: str) -> set[str]:
    """Every ``sem_dist`` module ``module`` imports (a package's ``__init__`` when a name is not a submodule)."""
    path = MODULES[module]
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "sem_dist"}
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] != "sem_dist":
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & MODULES.keys()
            found |= subs or {target}
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_package_has_a_floor():
    assert {_package(m) for m in MODULES} <= set(FLOORS)


def test_no_import_runs_back_up():
    floor = {name: i for i, name in enumerate(FLOORS)}
    upward = sorted(f"{m} → {t}" for m, targets in GRAPH.items() for t in targets
                    if _package(t) != _package(m) and floor[_package(t)] > floor[_package(m)])
    assert upward == []


def test_no_circle_inside_a_package():
    seen, on_path, circles = set(), [], []

    def visit(m: str) -> None:
        if m in on_path:
            circles.append(" → ".join(on_path[on_path.index(m):] + [m]))
            return
        if m in seen:
            return
        seen.add(m)
        on_path.append(m)
        for t in sorted(GRAPH[m]):
            if _package(t) == _package(m):
                visit(t)
        on_path.pop()

    for m in sorted(GRAPH):
        visit(m)
    assert circles == []


def test_the_check_sees_function_level_and_relative_imports():
    """The graph is read as the code is written: an import inside a function and ``from . import x`` count."""
    assert "sem_dist.distributed.logs" in GRAPH["sem_dist.distributed.cluster"]  # `from . import logs`, in a function
    assert "sem_dist.distributed.engine" in GRAPH["sem_dist.protect.run"]


# what a stage may take from the storage layers: errors, types and pure functions of URIs, never an operation on OUT
STAGE_MAY_IMPORT = {"sem_dist.data.storage": {"DataError", "redact_uri"}, "sem_dist.data.canonical": {"Manifest"}}
OUTPUT_MODULES = ("sem_dist.data.storage", "sem_dist.data.canonical", "sem_dist.data.ledger", "sem_dist.data.output",
                  "sem_dist.data.unique")
OUTPUT_NAMES = {"sem_dist.engine.ledger.Ledger", "sem_dist.engine.checkpoint.save_method"}


def test_the_stages_reach_the_output_only_through_output():
    """docs/architecture.md: OUT's staging area, ledger and commit belong to ``protect.output.Output``; the other
    modules of ``protect/`` import nothing from storage but errors, types and URI redaction."""
    found = []
    for module in sorted(m for m in MODULES if m.startswith("sem_dist.protect.") and m != "sem_dist.protect.output"):
        here = module.split(".")[:-1]
        for node in ast.walk(ast.parse(MODULES[module].read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                target = ".".join(here[:len(here) - node.level + 1] + [node.module or ""])
                for alias in node.names:
                    output_side = target in OUTPUT_MODULES or f"{target}.{alias.name}" in OUTPUT_NAMES
                    if output_side and alias.name not in STAGE_MAY_IMPORT.get(target, set()):
                        found.append(f"{module}: {target}.{alias.name}")
    assert found == []
