"""Fixtures for tests/training; the helpers live in training_helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from training_helpers import train


@pytest.fixture(scope="session")
def reference_losses(tmp_path_factory: pytest.TempPathFactory):
    """Uninterrupted loss files without checkpoints, cached per set of model flags.

    Checkpointing never changes the trajectory, so every kind is compared with these.
    """
    cache: dict[tuple[str, ...], Path] = {}

    def get(steps: int, *model_flags: str) -> Path:
        key = (str(steps), *model_flags)
        if key not in cache:
            out = tmp_path_factory.mktemp("reference") / "loss.txt"
            run = train("--checkpointer", "none", "--training-steps", steps,
                        "--loss-file", out, *model_flags)
            assert run.returncode == 0, run.stderr
            cache[key] = out
        return cache[key]

    return get
