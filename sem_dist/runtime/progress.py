"""Progress bars on stderr (quiet when not a terminal unless forced), so stdout stays machine-readable."""
from __future__ import annotations

import os
import sys

from tqdm import tqdm


def enabled() -> bool:
    """``SEM_DIST_PROGRESS=0`` turns every progress bar off (ours and Ray Data's)."""
    return os.environ.get("SEM_DIST_PROGRESS", "auto") != "0"


def bar(total: int | None, desc: str, unit: str = "it", disable: bool | None = None) -> tqdm:
    if disable is None:
        disable = not enabled()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True,
                mininterval=1.0)
