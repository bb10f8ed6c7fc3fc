# Set-up commands (each creates/updates .venv at the repo root as needed):
#   make demo   — run the main job on the embedded default (bundled digits)
#   make test   — run the test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sem-dist demo

# The kernels an AVX2-only CPU runs (oneDNN convolutions, MKL matmul, ATen's vectorised math): tests that
# assert trained numbers (marker `trained`) run again under them, so none passes on one CPU class only.
AVX2_KERNELS := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q --durations=15
	$(AVX2_KERNELS) $(VENV)/bin/python -m pytest -q -m trained

bench: $(STAMP)
	$(VENV)/bin/python -m sem_dist.bench alg1 --json

clean:
	rm -rf $(VENV) sem-dist-demo .pytest_cache
