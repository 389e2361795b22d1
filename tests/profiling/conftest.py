"""Fixtures for tests/profiling: the NVTX injection library, and a traced save + load."""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest

from profiling_helpers import CHUNK, INJECT_SRC, SPREAD_FAULT, nvtx_include_dir, traced_state


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


@dataclass
class TracedRun:
    table: object  # pyarrow.Table of the trace file
    path: str
    ckpt_dir: str
    ckpt_path: str  # the committed step directory
    run_id: str
    stream_bytes: int
    total_bytes: int
    nchunks: int


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory: pytest.TempPathFactory) -> TracedRun:
    """One save (2 writer threads, 64 KiB chunks) and one load, recorded by a TraceSession."""
    from ckptlab.core import CheckpointConfig, load_latest, open_checkpointer
    from ckptlab.core.recovery import read_manifest
    from ckptlab.profiling import phase, read_trace, start_trace

    root = tmp_path_factory.mktemp("traced")
    ckpt_dir = str(root / "ckpt")
    cfg = CheckpointConfig(writer_threads=2, chunk_bytes=CHUNK, trace=True, faults=SPREAD_FAULT)
    ck = open_checkpointer("pccheck", ckpt_dir, cfg)
    session = start_trace(root / "trace.arrow", ck, config={"test": "traced_run"})
    with phase("save", step=3):
        ck.save(3, traced_state())
    with phase("wait", step=3):
        ck.wait()
    info = ck.latest()
    ck.close()
    load_latest(ckpt_dir)
    path = session.close()
    m = read_manifest(info.path)
    stream = sum(f.nbytes for f in m.files)
    return TracedRun(read_trace(path), path, ckpt_dir, info.path, session.run_id, stream, m.total_bytes, len(m.chunks))
