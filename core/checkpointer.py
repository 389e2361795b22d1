"""The checkpointer protocol every kind implements, and the factory that opens one."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from ckptlab.core.config import CheckpointConfig
from ckptlab.core.recovery import CheckpointInfo


@runtime_checkable
class Checkpointer(Protocol):
    """save() returns once the state is captured (training may mutate it right after);
    durability is acknowledged asynchronously; wait() blocks until everything issued is
    durable and raises the first failure; load() restores the newest valid checkpoint."""

    kind: str
    directory: str

    def save(self, step: int, state: Mapping[str, Any]) -> None: ...

    def wait(self) -> None: ...

    def latest(self) -> CheckpointInfo | None: ...

    def load(
        self,
        state: Mapping[str, Any] | None = None,
        map_location: str | torch.device | None = None,
        step: int | None = None,
    ) -> tuple[int, dict[str, Any]]: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


KINDS = ("pccheck", "torchsave")


def open_checkpointer(kind: str, directory: str | os.PathLike, config: CheckpointConfig | None = None) -> Checkpointer:
    """Open a checkpointer of `kind` ("pccheck" or "torchsave") writing into `directory`."""
    config = config or CheckpointConfig()
    if kind == "pccheck":
        from ckptlab.core.pccheck import PCcheckCheckpointer

        return PCcheckCheckpointer(directory, config)
    if kind == "torchsave":
        from ckptlab.core.torchsave import TorchSaveCheckpointer

        return TorchSaveCheckpointer(directory, config)
    if kind in ("dcp", "dcp-async"):
        try:
            from ckptlab.training.checkpointers import open_dcp_checkpointer
        except ImportError as e:  # pragma: no cover - depends on the training package
            raise ValueError(f"checkpointer kind {kind!r} needs ckptlab.training: {e}") from e
        return open_dcp_checkpointer(kind, directory, config)
    raise ValueError(f"unknown checkpointer kind {kind!r} (known: pccheck, torchsave, dcp, dcp-async)")
