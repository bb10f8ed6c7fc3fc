"""Read stage: the run's source spec → the split to protect, described from its manifest, its plan or its
first chunk (no whole-split load). The content identity a resumed run is checked against is
``engine.input.input_files``."""
from __future__ import annotations

from ..engine.input import Input, open_input
from ..engine.spec import RunSpec


def read(spec: RunSpec) -> Input:
    return open_input(spec.data, spec.storage)
