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

.PHONY: setup test test-all test-slow test-cpp test-arm64 demo validate campaign campaign-full bench bench-cpu bench-dist affinity clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The editable install builds in $(DEV_BUILD) with the C++ self-test on (one compile of the
# engine serves the Python module and test-cpp).
DEV_BUILD := build/dev
$(STAMP): pyproject.toml CMakeLists.txt csrc/_engine.pyi $(wildcard csrc/*.cpp csrc/*.hpp csrc/tests/*.cpp) | $(PY)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "scikit-build-core>=0.10" "pybind11>=2.12" "nvidia-nvtx>=13.0" ninja cmake
	$(PIP) install -q --no-build-isolation -e '.[test]' \
	  --config-settings=build-dir=$(DEV_BUILD) --config-settings=cmake.define.CKPTLAB_BUILD_TESTS=ON
	touch $(STAMP)

setup: $(STAMP)

# CMake (CMakeLists.txt) is the one build description of the engine: the Python module that
# pip builds, and the standalone C++ self-test (csrc/tests/engine_selftest.cpp, option
# CKPTLAB_BUILD_TESTS, no pybind11). make setup builds both into $(DEV_BUILD); test-cpp
# brings the self-test up to date there and runs it with CTest (~4 s). test-arm64 configures
# its own build directories. Tools from .venv (make setup) where it has them, else from PATH.
CMAKE_BIN ?= $(firstword $(wildcard $(VENV)/bin/cmake) cmake)
CTEST_BIN ?= $(firstword $(wildcard $(VENV)/bin/ctest) ctest)
NINJA_BIN ?= $(firstword $(wildcard $(VENV)/bin/ninja) ninja)
NVTX_INCLUDE ?= $(shell $(if $(wildcard $(PY)),$(PY),$(PYTHON)) csrc/find_nvtx.py)
SELFTEST_CMAKE_FLAGS = -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(shell command -v $(NINJA_BIN))) \
	-DCKPTLAB_BUILD_TESTS=ON -DCKPTLAB_BUILD_PYTHON=OFF

test-cpp: setup
	$(CMAKE_BIN) --build $(DEV_BUILD) --target engine_selftest
	$(CTEST_BIN) --test-dir $(DEV_BUILD) --output-on-failure

# The suite runs on TEST_WORKERS pytest-xdist workers (default 2, CI's cores); each test file
# stays on one worker (--dist loadfile) so module fixtures such as a shared 2-rank world start
# once. Most tests wait on child processes (training runs, crash victims, rank worlds), so two
# workers on two cores overlap their startup. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
PYTEST_PARALLEL = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: setup test-cpp
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_PARALLEL)

test-slow: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_PARALLEL) -m slow

test-all: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not gpu"

# ARM64 (Grace-Hopper) without an ARM machine: the same CMake self-test build as test-cpp,
# once natively and once cross-compiled with cmake/aarch64-linux-gnu.cmake, whose CTest runs go
# through qemu-aarch64 (CMAKE_CROSSCOMPILING_EMULATOR) with 4 KiB and 64 KiB pages
# (docs/ARM64.md); -Wall -Wextra warnings are errors here. Installs nothing: a missing tool
# stops it with the Debian packages to install. NVTX3 headers, cmake and ninja come from .venv
# (make setup). ARM64_CXX=clang++-14 checks clang (the toolchain file gives it --target).
ARM64_CXX ?= aarch64-linux-gnu-g++
ARM64_SYSROOT ?= /usr/aarch64-linux-gnu
QEMU_AARCH64 ?= qemu-aarch64
SELFTEST_DIR ?= build/selftest
ARM64_CMAKE_FLAGS = -DCMAKE_COMPILE_WARNING_AS_ERROR=ON -DCKPTLAB_NVTX_INCLUDE_DIR=$(NVTX_INCLUDE)

test-arm64:
	@missing=""; \
	command -v $(firstword $(CXX)) >/dev/null || missing="$$missing g++"; \
	command -v $(firstword $(ARM64_CXX)) >/dev/null || missing="$$missing g++-aarch64-linux-gnu"; \
	[ -e $(ARM64_SYSROOT)/lib/ld-linux-aarch64.so.1 ] || missing="$$missing libc6-dev-arm64-cross"; \
	command -v $(QEMU_AARCH64) >/dev/null || missing="$$missing qemu-user"; \
	if [ -n "$$missing" ]; then \
	  echo "test-arm64: missing tools; install the Debian packages:$$missing" >&2; \
	  echo "  sudo apt-get install -y$$missing" >&2; exit 1; fi; \
	for tool in $(CMAKE_BIN) $(NINJA_BIN); do command -v $$tool >/dev/null || { \
	  echo "test-arm64: $$tool not found: run 'make setup' (it installs cmake and ninja into .venv)" >&2; exit 1; }; done; \
	if [ -z "$(NVTX_INCLUDE)" ]; then \
	  echo "test-arm64: NVTX3 headers not found: run 'make setup' (or pip install nvidia-nvtx)" >&2; exit 1; fi
	$(CMAKE_BIN) -S . -B $(SELFTEST_DIR)/native $(SELFTEST_CMAKE_FLAGS) $(ARM64_CMAKE_FLAGS) \
	  -DCMAKE_CXX_COMPILER=$(firstword $(CXX))
	$(CMAKE_BIN) -S . -B $(SELFTEST_DIR)/aarch64 $(SELFTEST_CMAKE_FLAGS) $(ARM64_CMAKE_FLAGS) \
	  --toolchain $(abspath cmake/aarch64-linux-gnu.cmake) -DCKPTLAB_ARM64_CXX=$(ARM64_CXX) \
	  -DCKPTLAB_ARM64_SYSROOT=$(ARM64_SYSROOT) -DCKPTLAB_QEMU_AARCH64=$(QEMU_AARCH64)
	$(CMAKE_BIN) --build $(SELFTEST_DIR)/native --target engine_selftest
	$(CMAKE_BIN) --build $(SELFTEST_DIR)/aarch64 --target engine_selftest
	$(CTEST_BIN) --test-dir $(SELFTEST_DIR)/native -V
	$(CTEST_BIN) --test-dir $(SELFTEST_DIR)/aarch64 -V

demo: setup
	$(PY) -m ckptlab.training.demo --out demo-out

validate: setup
	$(PY) -m ckptlab.training.validate --checkpointer pccheck --steps 150 --freq 50 --kill-after 50 --out runs/validate-pccheck
	$(PY) -m ckptlab.training.validate --checkpointer torchsave --steps 150 --freq 50 --kill-after 50 --out runs/validate-torchsave

# make campaign: every tier, a few minutes; campaign-full: over 10,000 trials, every cell of
# its coverage table (tier x writer x fault point x action), under 40 min on 2 cores. Both
# print that table and record it in OUT/summary.json. As root they include realfs (ext4/xfs
# on loop devices); otherwise it is skipped with the reason.
campaign: setup
	$(PY) -m ckptlab.faults.campaign --out runs/campaign

campaign-full: setup
	$(PY) -m ckptlab.faults.campaign --full --out runs/campaign-full

# Every checkpointer kind in training on a 1 GiB state (docs/PERFORMANCE.md); about 20 min on
# 2 cores. Run it on a quiet machine; it refuses an --out that already holds a bench.json.
bench-cpu: setup
	$(PY) -m ckptlab.core.cli bench --state-mb 1024 --batch-size 1 --sequence-length 16 --steps 30 \
	  --every 5,10 --repeats 3 --out benchmarks/results/bench_cpu_1gib

# Multi-rank: 1, 2 and 4 CPU ranks (gloo) vs the raw disk (docs/DISTRIBUTED.md, "Measured").
bench-dist: setup
	$(PY) benchmarks/bench_distributed.py --size-mb 256 --ranks 1,2,4 --repeats 3 --out benchmarks/results

# Writer placement on this machine (docs/PROFILING.md); a new results directory each time.
affinity: setup
	$(PY) -m ckptlab.core.cli experiment affinity --dir runs/affinity/ckpt \
	  --out runs/affinity/$$(date +%Y%m%dT%H%M%S) --threads 1,2 --repeats 5 --size-mb 128 --load-procs 1

bench: bench-cpu

clean:
	rm -rf build runs demo-out .pytest_cache
