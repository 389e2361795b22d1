"""A traced save + load, shared by tests/profiling (the record path) and tests/analysis (the
analyzers). Each folder's conftest imports the fixture; tests/ is on sys.path (tests/conftest.py)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 64 * 1024
# Delay the first chunk write of every checkpoint so the other writer thread must take chunks
# too: "records from each writer thread" then holds on any scheduler.
SPREAD_FAULT = "point=before_chunk_write,hit=1,action=delay=100"


def traced_state(nbytes: int = 1 << 20) -> dict:
    g = torch.Generator().manual_seed(7)
    n = nbytes // 4 // 2
    return {"w": torch.randn(n, generator=g), "opt": {"m": torch.randn(n, generator=g)}, "step": 3}


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
