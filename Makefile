# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv, install
# torch's CPU build (the one on this machine's disk: never a multi-GB CUDA wheel), the
# build tools, and ckptlab in editable mode with its test extras.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.ckptlab-installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-all test-slow demo validate campaign bench bench-cpu clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml CMakeLists.txt $(wildcard csrc/*.cpp csrc/*.hpp) | $(PY)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "scikit-build-core>=0.10" "pybind11>=2.12" "nvidia-nvtx>=13.0" ninja cmake
	$(PIP) install -q --no-build-isolation -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

test-slow: setup
	$(PY) -m pytest -q -p no:cacheprovider -m slow

test-all: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not gpu"

demo: setup
	$(PY) -m ckptlab.training.demo --out demo-out

validate: setup
	$(PY) -m ckptlab.training.validate --checkpointer pccheck --steps 150 --freq 50 --kill-after 50 --out runs/validate-pccheck
	$(PY) -m ckptlab.training.validate --checkpointer torchsave --steps 150 --freq 50 --kill-after 50 --out runs/validate-torchsave

campaign: setup
	$(PY) -m ckptlab.faults.campaign --out runs/campaign

bench-cpu: setup
	$(PY) benchmarks/bench_cpu.py --size-mb 1024 --out benchmarks/results

bench: bench-cpu

clean:
	rm -rf build runs demo-out .pytest_cache
