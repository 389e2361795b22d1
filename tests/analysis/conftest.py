"""Fixtures for tests/analysis: a traced save + load (made here), and the committed results."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from trace_fixtures import REPO, traced_run  # noqa: F401  (a fixture)

RESULTS = Path(REPO) / "benchmarks" / "results"


@pytest.fixture(scope="session")
def h100_trace() -> str:
    """The committed trace of a seed-1024 run on an H100 box (4 checkpoints, 8 writer threads)."""
    path = RESULTS / "h100_seed1024_trace" / "trace.arrow"
    assert path.is_file(), f"{path} is part of the repository"
    return os.fspath(path)


@pytest.fixture(scope="session")
def affinity_results() -> Path:
    """A small writer-placement experiment made on the 2-core development VM (its README says how)."""
    path = RESULTS / "affinity_2core_vm"
    assert (path / "runs.jsonl").is_file(), f"{path} is part of the repository"
    return path
