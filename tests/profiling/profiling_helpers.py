"""Helpers shared by tests/profiling (a uniquely named module: every test folder has a conftest)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
INJECT_SRC = os.path.join(HERE, "nvtx_inject", "nvtx_inject.cpp")

CHUNK = 64 * 1024
# Delay the first chunk write of every checkpoint so the other writer thread must take chunks
# too: "records from each writer thread" then holds on any scheduler.
SPREAD_FAULT = "point=before_chunk_write,hit=1,action=delay=100"


def nvtx_include_dir() -> str:
    out = subprocess.run([sys.executable, os.path.join(REPO, "csrc", "find_nvtx.py")], capture_output=True,
                         text=True, check=True).stdout.strip()
    if not out:
        pytest.skip("NVTX3 headers not found (pip install nvidia-nvtx)")
    return out


def traced_state(nbytes: int = 1 << 20) -> dict:
    g = torch.Generator().manual_seed(7)
    n = nbytes // 4 // 2
    return {"w": torch.randn(n, generator=g), "opt": {"m": torch.randn(n, generator=g)}, "step": 3}
