"""Helpers for tests/training: run the trainer as a real subprocess (so SIGKILL is real)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from ckptlab.core.fault_spec import FAULTS_ENV

TRAIN = [sys.executable, "-m", "ckptlab.training.cli", "--no-progress"]


def core_import_error() -> str | None:
    """None if ckptlab.core (with its engine) imports, else why not."""
    try:
        from ckptlab.core import open_checkpointer  # noqa: F401
        from ckptlab import _engine  # noqa: F401
    except ImportError as exc:
        return f"ckptlab.core is not importable yet ({exc}); build it with `pip install -e .`"
    return None


def skip_without_core(kind: str) -> None:
    if kind in ("torchsave", "pccheck") and (reason := core_import_error()):
        pytest.skip(reason)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    summary: dict | None


def train(*args: str | os.PathLike, summary: Path | None = None, faults: str | None = None,
          timeout: float = 240) -> Run:
    """Run one training process; ``faults`` sets CKPTLAB_FAULTS for it alone."""
    env = {k: v for k, v in os.environ.items() if k != FAULTS_ENV}
    if faults:
        env[FAULTS_ENV] = faults
    cmd = TRAIN + [str(a) for a in args]
    if summary is not None:
        cmd += ["--summary-json", str(summary)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)
    data = json.loads(summary.read_text()) if summary is not None and summary.exists() else None
    return Run(proc.returncode, proc.stdout, proc.stderr, data)


def loss_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()
