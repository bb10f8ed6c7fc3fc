"""The second pass of `make test` really runs the AVX2 kernel set: otherwise the `trained` tests would be
checked on one CPU class only (see Makefile, AVX2_KERNELS)."""
from __future__ import annotations

import os

import pytest
import torch

from sem_dist.runtime.device import cpu_bf16_kernels, resolve_amp


@pytest.mark.trained
def test_the_kernel_set_asked_for_is_the_one_torch_runs():
    capability = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("ATEN_CPU_CAPABILITY") == "avx2":
        assert capability == "AVX2"
    else:  # this CPU's own kernels: whatever the machine has, never below AVX2 on the x86 CPUs we support
        assert capability in ("AVX2", "AVX512", "DEFAULT")


@pytest.mark.trained
def test_amp_auto_follows_the_kernel_set():
    # bf16 on the generator's passes where the kernels compute it in hardware; under the AVX2 set (or on an AVX2
    # CPU) it would be an emulation, and auto keeps fp32, so the second pass checks the fp32 numbers
    cpu = torch.cpu
    hardware = cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported()
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2"
    assert cpu_bf16_kernels() == (hardware and not capped)
    assert resolve_amp("auto", torch.device("cpu")) == (hardware and not capped)
    assert resolve_amp("off", torch.device("cpu")) is False and resolve_amp(True, torch.device("cpu")) is True
