"""``python -m sem_dist.bench gpu`` runs where only PyTorch is installed, and measures SEM and REM as their presets
define them."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sem_dist.bench.gpu import METHOD_OVERRIDES, bench_config
from sem_dist.config import resolve_config

ROOT = Path(__file__).resolve().parents[1]
# what a bare GPU machine lacks (pip's torch wheel brings none of them but fsspec, which we must not need either)
ABSENT = ("ray", "yaml", "numpy", "pyarrow", "s3fs", "fsspec")
TINY = ["--device", "cpu", "--arch", "small_cnn", "--batch-size", "4", "--ku", "1", "--samples", "2", "--ka", "1",
        "--reps", "1", "--regen-batch", "8", "--matmul-size", "64", "--json"]
VARIANTS = ("sem", "sem_bf16", "sem_graphed", "sem_graphed_bf16", "rem", "rem_graphed", "rem_graphed_bf16")


def _torch_only_site(folder: Path) -> Path:
    """This venv's site-packages without the ABSENT distributions: links to every other entry, no ``.pth``
    files (so no editable install of sem_dist either: the bench must run from the repository root, as on the
    device machine). Absent modules are really absent: ``importlib.util.find_spec`` finds nothing, as torch's
    own optional-import probes expect (a meta-path finder that raises instead breaks them)."""
    site = Path(sysconfig.get_paths()["purelib"])
    folder.mkdir()
    for entry in site.iterdir():
        top = entry.name.lower().lstrip("_").replace("-", ".").split(".")[0]
        if top in ABSENT or top == "pyyaml" or entry.suffix == ".pth":
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.parametrize("method", sorted(METHOD_OVERRIDES))
def test_bench_configs_are_the_method_presets(method):
    overrides = {"trainer.arch": "small_cnn", "trainer.batch_size": 64, "solver.steps": 3, "trainer.graphs": "on"}
    assert bench_config(method, overrides).to_dict() == resolve_config(method, 32, overrides=overrides).to_dict()


def test_bench_gpu_runs_with_only_torch(tmp_path):
    site = _torch_only_site(tmp_path / "site")
    out = tmp_path / "gpu.json"
    # -S: no site-packages of this venv; the repository root (the working directory) and the torch-only folder
    # are the whole path. The script first proves the ABSENT modules cannot be imported there.
    script = ("import importlib, runpy, sys\n"
              f"for name in {ABSENT!r}:\n"
              "    try:\n        importlib.import_module(name)\n"
              "    except ModuleNotFoundError:\n        continue\n"
              "    sys.exit(f'{name} is importable')\n"
              f"sys.argv = ['sem_dist.bench', 'gpu', *{TINY!r}, '--out', {str(out)!r}]\n"
              "runpy.run_module('sem_dist.bench', run_name='__main__', alter_sys=True)\n"
              f"assert not [m for m in sys.modules if m.split('.')[0] in {ABSENT!r}]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", SEM_DIST_PROGRESS="0")
    proc = subprocess.run([sys.executable, "-S", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == result
    assert not [k for k in result if k.endswith("_error")], result
    assert result["gpu"] is None and result["device"] == "cpu" and result["graphs_mode"] == "static"
    assert result["torch"] and (result["K_u"], result["J"], result["K_a"], result["batch_size"]) == (1, 2, 1, 4)
    measured = [f"{v}_step_s" for v in VARIANTS] + [f"{k}_{v}" for v in VARIANTS for k in
                ("image_passes_per_s", "passes_share", "tflops", "peak_fraction")]
    measured += [f"t_input_grad_pass{s}_s" for s in ("", "_bf16", "_graphed", "_graphed_bf16")] + ["t_train_pass_s"]
    measured += [f"alg4{s}_images_per_s" for s in ("", "_bf16", "_graphed", "_graphed_bf16")]
    measured += ["rem_over_sem", "rem_over_sem_graphed", "rem_over_sem_graphed_bf16", "flops_sem_step",
                 "flops_rem_step", "flops_input_grad_per_image", "flops_train_per_image", "peak_tflops_bf16",
                 "peak_tflops_fp32", "peak_tflops_tf32"]
    for key in measured:
        assert isinstance(result.get(key), float) and math.isfinite(result[key]) and result[key] > 0, key
    # a training pass also computes weight gradients; REM's step runs K_a + 1 times SEM's noise passes
    assert result["flops_train_per_image"] > result["flops_input_grad_per_image"]
    assert result["flops_rem_step"] > result["flops_sem_step"]
    # on a CPU the static-buffer solve runs the eager kernels in the eager order: bitwise the same noise
    assert result["alg4_graphed_max_diff_levels"] == 0.0 and result["alg4_graphed_equal_fraction"] == 1.0
    assert result["alg1_graphed_max_loss_diff"] == 0.0 and result["alg1_graphed_max_param_diff"] == 0.0
    for variant in VARIANTS:
        assert f"bench gpu: {variant} done" in proc.stderr
