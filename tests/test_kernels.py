"""The second pass of `make test` really runs the AVX2 kernel set: otherwise the `trained` tests would be
checked on one CPU class only (see Makefile, AVX2_KERNELS)."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.mark.trained
def test_the_kernel_set_asked_for_is_the_one_torch_runs():
    capability = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("ATEN_CPU_CAPABILITY") == "avx2":
        assert capability == "AVX2"
    else:  # this CPU's own kernels: whatever the machine has, never below AVX2 on the x86 CPUs we support
        assert capability in ("AVX2", "AVX512", "DEFAULT")
