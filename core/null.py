"""Kind ``none``: checkpointing off, behind the same protocol (the baseline run of a
side-by-side comparison). It saves nothing, so there is never anything to resume from."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ckptlab.core.checkpointer import check_timeout
from ckptlab.core.config import CheckpointConfig
from ckptlab.core.errors import NoCheckpointError


class NullCheckpointer:
    kind = "none"

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig | None = None) -> None:
        self.directory = os.path.abspath(os.fspath(directory))  # never created
        self.config = config or CheckpointConfig()
        self._saves = 0

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        self._saves += 1

    def barrier(self) -> None:
        pass

    def guard(self, *optimizers: Any) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        check_timeout(timeout)
        return True

    def latest(self) -> None:
        return None

    def load(self, state: Mapping[str, Any] | None = None, map_location: Any = None,
             step: int | None = None) -> tuple[int, dict[str, Any]]:
        raise NoCheckpointError(f"checkpointer kind 'none' keeps no checkpoints to load (directory {self.directory})")

    def stats(self) -> dict[str, Any]:
        return {"kind": "none", "saves": self._saves, "stall_total_s": 0.0, "stall_last_s": 0.0,
                "stall_max_s": 0.0, "committed": 0, "time_to_durable_s": []}

    def close(self) -> None:
        pass

    def __enter__(self) -> NullCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
