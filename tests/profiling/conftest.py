"""Fixtures for tests/profiling: the NVTX injection library, and a traced save + load."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from profiling_helpers import INJECT_SRC, nvtx_include_dir
from trace_fixtures import traced_run  # noqa: F401  (a fixture)


@pytest.fixture(scope="session")
def nvtx_inject_lib(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The test NVTX tool (tests/profiling/nvtx_inject), built with the system compiler."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the NVTX injection library")
    out = str(tmp_path_factory.mktemp("nvtx_inject") / "libnvtx_inject.so")
    cmd = [cxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-I", nvtx_include_dir(), INJECT_SRC, "-o", out,
           "-lpthread"]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"building the NVTX injection library failed:\n{build.stderr}"
    return out
