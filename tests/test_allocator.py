"""The malloc settings: this process takes them, Ray workers of a run start with them, users can opt out."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sem_dist.runtime import allocator

GLIBC = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc") if hasattr(os, "confstr") else False


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_this_process_takes_the_settings_unless_opted_out(monkeypatch):
    assert allocator.tune_this_process()
    monkeypatch.setenv(allocator.OPT_OUT, "default")
    assert not allocator.tune_this_process() and allocator.worker_env() == {}


def test_a_variable_the_user_set_is_left_to_them(monkeypatch):
    monkeypatch.setenv("MALLOC_TOP_PAD_", "4096")
    env = allocator.worker_env()
    assert "MALLOC_TOP_PAD_" not in env and env["MALLOC_MMAP_MAX_"] == "0"


WORKER_ENV = """
import json, os, ray
from sem_dist.distributed.cluster import connect
connect(num_cpus=1)
seen = ray.get(ray.remote(lambda: {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}).remote())
print(json.dumps(seen))
"""


def test_ray_workers_of_a_run_start_with_the_settings(tmp_path):
    # a fresh embedded Ray, started the way every sem-dist command starts it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "RAY_ADDRESS"))}
    env.pop(allocator.OPT_OUT, None)
    out = subprocess.run([sys.executable, "-c", WORKER_ENV], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD),
                    "MALLOC_TOP_PAD_": str(allocator.TOP_PAD)}


BRK_BLOCKED = r"""
import ctypes, json, threading
from sem_dist.runtime import allocator
assert allocator.tune_this_process()
libc = ctypes.CDLL(None)
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
top = libc.sbrk(0)
# a page mapped 1 MiB above the heap's end: brk cannot grow it past that
# (PROT_READ; MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, Linux >= 4.17)
wall = libc.mmap(top + (1 << 20), 4096, 1, 0x02 | 0x20 | 0x100000, -1, 0)
got = {"walled": wall == top + (1 << 20)}
def big(name):
    p = libc.malloc(1 << 30)  # 1 GiB: more than the heap's free top, more than a thread arena's 64 MiB heap
    got[name] = bool(p)
    libc.free(p)
big("main")
t = threading.Thread(target=big, args=("thread",))
t.start(); t.join()
got["heap_grew"] = libc.sbrk(0) != top
print(json.dumps(got))
"""


@pytest.mark.skipif(not GLIBC or not sys.platform.startswith("linux"), reason="glibc on Linux")
def test_a_large_malloc_succeeds_where_the_heap_cannot_grow():
    """M_MMAP_MAX = 0 stops mmap for large blocks, not mmap altogether: when brk fails, glibc's sysmalloc maps
    the main arena's new space instead ("we ignore mmap max count and threshold limits"), and a thread
    arena maps a block that no heap can hold. So the settings cannot make an allocation fail that glibc's
    defaults would serve (issue #18 suspected they could; its failure was a deleted working directory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop(allocator.OPT_OUT, None)
    out = subprocess.run([sys.executable, "-c", BRK_BLOCKED], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if not got["walled"]:
        pytest.skip("could not map a page above the heap (kernel without MAP_FIXED_NOREPLACE)")
    assert got == {"walled": True, "main": True, "thread": True, "heap_grew": False}
