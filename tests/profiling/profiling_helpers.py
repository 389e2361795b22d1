"""Helpers shared by tests/profiling (a uniquely named module: every test folder has a conftest)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trace_fixtures import CHUNK, REPO, SPREAD_FAULT, traced_state  # noqa: F401  (re-exported)

HERE = os.path.dirname(os.path.abspath(__file__))
INJECT_SRC = os.path.join(HERE, "nvtx_inject", "nvtx_inject.cpp")


def nvtx_include_dir() -> str:
    out = subprocess.run([sys.executable, os.path.join(REPO, "csrc", "find_nvtx.py")], capture_output=True,
                         text=True, check=True).stdout.strip()
    if not out:
        pytest.skip("NVTX3 headers not found (pip install nvidia-nvtx)")
    return out
