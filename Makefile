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

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python -m sem_dist.bench alg1 --json

clean:
	rm -rf $(VENV) sem-dist-demo .pytest_cache
