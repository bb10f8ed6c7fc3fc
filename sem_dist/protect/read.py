"""Read stage: the run's source spec → the split to protect, described from its manifest, its plan or its
first chunk (no whole-split load), and the content identity a resumed run is checked against."""
from __future__ import annotations

from ..engine.input import Input, input_files, open_input
from ..engine.spec import RunSpec


def read(spec: RunSpec) -> Input:
    return open_input(spec.data, spec.storage)


def identity(inp: Input) -> dict[str, list] | None:
    """What the fingerprint holds of a file-backed input's files (see ``engine.input.input_files``)."""
    return input_files(inp)
