"""The malloc settings: this process takes them, Ray workers of a run start with them, users can opt out."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sem_dist import allocator

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
