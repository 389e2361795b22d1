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

.PHONY: setup test test-all test-slow test-arm64 demo validate campaign bench bench-cpu affinity clean

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

# ARM64 (Grace-Hopper) without an ARM machine: the engine's standalone C++ self-test
# (csrc/tests/engine_selftest.cpp) built natively and with the aarch64 cross compiler, the
# latter run under qemu-aarch64 with 4 KiB and 64 KiB pages (docs/ARM64.md). Installs
# nothing: a missing tool stops it with the Debian packages to install. NVTX3 headers come
# from .venv (make setup). ARM64_CXX="clang++ --target=aarch64-linux-gnu" checks clang.
ARM64_CXX ?= aarch64-linux-gnu-g++
ARM64_SYSROOT ?= /usr/aarch64-linux-gnu
QEMU_AARCH64 ?= qemu-aarch64
SELFTEST_DIR ?= build/selftest
NVTX_INCLUDE ?= $(shell $(if $(wildcard $(PY)),$(PY),$(PYTHON)) csrc/find_nvtx.py)
SELFTEST_SRCS := csrc/tests/engine_selftest.cpp $(filter-out csrc/bindings.cpp csrc/checksum.cpp,$(wildcard csrc/*.cpp))
SELFTEST_FLAGS = -std=c++17 -O2 -Wall -Wextra -Wno-missing-field-initializers -Icsrc -isystem $(NVTX_INCLUDE) -pthread

test-arm64:
	@missing=""; \
	command -v $(firstword $(CXX)) >/dev/null || missing="$$missing g++"; \
	command -v $(firstword $(ARM64_CXX)) >/dev/null || missing="$$missing g++-aarch64-linux-gnu"; \
	[ -e $(ARM64_SYSROOT)/lib/ld-linux-aarch64.so.1 ] || missing="$$missing libc6-dev-arm64-cross"; \
	command -v $(QEMU_AARCH64) >/dev/null || missing="$$missing qemu-user"; \
	if [ -n "$$missing" ]; then \
	  echo "test-arm64: missing tools; install the Debian packages:$$missing" >&2; \
	  echo "  sudo apt-get install -y$$missing" >&2; exit 1; fi; \
	if [ -z "$(NVTX_INCLUDE)" ]; then \
	  echo "test-arm64: NVTX3 headers not found: run 'make setup' (or pip install nvidia-nvtx)" >&2; exit 1; fi
	mkdir -p $(SELFTEST_DIR)
	$(CXX) $(SELFTEST_FLAGS) $(SELFTEST_SRCS) -o $(SELFTEST_DIR)/engine_selftest-native -ldl
	$(ARM64_CXX) $(SELFTEST_FLAGS) $(SELFTEST_SRCS) -o $(SELFTEST_DIR)/engine_selftest-aarch64 -ldl
	$(SELFTEST_DIR)/engine_selftest-native
	$(QEMU_AARCH64) -L $(ARM64_SYSROOT) $(SELFTEST_DIR)/engine_selftest-aarch64
	$(QEMU_AARCH64) -L $(ARM64_SYSROOT) -p 65536 $(SELFTEST_DIR)/engine_selftest-aarch64

demo: setup
	$(PY) -m ckptlab.training.demo --out demo-out

validate: setup
	$(PY) -m ckptlab.training.validate --checkpointer pccheck --steps 150 --freq 50 --kill-after 50 --out runs/validate-pccheck
	$(PY) -m ckptlab.training.validate --checkpointer torchsave --steps 150 --freq 50 --kill-after 50 --out runs/validate-torchsave

campaign: setup
	$(PY) -m ckptlab.faults.campaign --out runs/campaign

bench-cpu: setup
	$(PY) benchmarks/bench_cpu.py --size-mb 1024 --out benchmarks/results

# Writer placement on this machine (docs/PROFILING.md); a new results directory each time.
affinity: setup
	$(PY) -m ckptlab.core.cli experiment affinity --dir runs/affinity/ckpt \
	  --out runs/affinity/$$(date +%Y%m%dT%H%M%S) --threads 1,2 --repeats 5 --size-mb 128 --load-procs 1

bench: bench-cpu

clean:
	rm -rf build runs demo-out .pytest_cache
