"""glibc malloc settings for tensor work on a CPU, for this process and for every Ray worker of a run.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves a request above its mmap threshold
(128 KiB at start, adapting up to at most 32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` on
free, and it trims the heap's free top back to the kernel, so each large activation of each pass is
page-faulted in and zeroed again. Measured on this 2-core machine (issue #13, docs/performance.md), that
costs half of Algorithm 4's time (38 → 80 img/s) and a quarter of a ResNet-18 Algorithm-1 step; the
same code ran twice as fast in a process that happened to have freed one large array earlier (glibc had
raised its threshold). PyTorch's CPU tuning guide answers this with jemalloc or tcmalloc through
``LD_PRELOAD``; glibc's own tunables do the same without a new dependency: no mmap for large blocks, keep up
to 1 GiB of free heap instead of trimming it, and grow the heap 256 MiB at a time. The cost is memory a
process keeps after its peak (up to ``TRIM_THRESHOLD`` of it free). No setting here can make an allocation
fail: ``M_MMAP_MAX = 0`` stops glibc serving a large block with its own mmap, not mapping memory; where the heap
cannot grow by ``brk``, glibc's ``sysmalloc`` maps the main arena's new space anyway (ignoring the mmap limits)
and a thread arena maps a block no heap can hold (tests/test_allocator.py walls the heap off and allocates 1 GiB).

This process is set with ``mallopt`` (:func:`tune_this_process`, from the CLI and the benchmarks); Ray workers
get the same values as environment variables (:func:`worker_env`, in the job's runtime environment), which
glibc reads when the worker starts. ``SEM_DIST_MALLOC=default`` leaves glibc's defaults everywhere; a
``MALLOC_*_`` variable the user set wins over ours. Other C libraries (musl, macOS) are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

TRIM_THRESHOLD = 1 << 30
TOP_PAD = 256 << 20
# glibc's mallopt parameters and the environment variables it reads at start-up for the same settings
_SETTINGS = (  # (mallopt number, variable, value)
    (-4, "MALLOC_MMAP_MAX_", 0),  # M_MMAP_MAX: large blocks from the heap, never a fresh mmap
    (-1, "MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD),  # M_TRIM_THRESHOLD
    (-2, "MALLOC_TOP_PAD_", TOP_PAD),  # M_TOP_PAD
)
OPT_OUT = "SEM_DIST_MALLOC"


def enabled() -> bool:
    return os.environ.get(OPT_OUT, "tuned") != "default"


def worker_env() -> dict[str, str]:
    """The settings as environment variables for Ray workers (those the user set are left to them)."""
    if not enabled():
        return {}
    return {var: str(value) for _, var, value in _SETTINGS if var not in os.environ}


def _mallopt():
    if not hasattr(os, "confstr"):
        return None
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, ValueError, AttributeError):
        return None


def tune_this_process() -> bool:
    """Apply the settings to this process's allocator; True when glibc took every one of them."""
    mallopt = _mallopt() if enabled() else None
    if mallopt is None:
        return False
    return all(mallopt(param, value) == 1 for param, var, value in _SETTINGS if var not in os.environ)
