"""Behaviour shared by the ckptlab-format checkpointers (pccheck and torchsave)."""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import torch

from ckptlab.core.checkpointer import check_optimizers
from ckptlab.core.config import CheckpointConfig
from ckptlab.core.durable import makedirs_durable
from ckptlab.core.recovery import CheckpointInfo, latest_valid, load_latest
from ckptlab.core.state import PinnedHostCache
from ckptlab.core.writer_io import DISARMED, WriterIO


class CheckpointerBase:
    kind = "base"

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig, *, io: WriterIO = DISARMED) -> None:
        """``io``: the writer's file-system operations (core/writer_io.py), if it has its own."""
        if not isinstance(config, CheckpointConfig):
            raise TypeError(f"config must be a CheckpointConfig, got {type(config).__name__}")
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise NotADirectoryError(f"checkpoint directory {self.directory} exists and is not a directory")
        makedirs_durable(self.directory, io)
        self.config = config
        self._closed = False
        # pinned host copies of CUDA tensors, reused across saves (no effect without CUDA)
        self._host_cache = PinnedHostCache() if config.pinned_host_copies else None
        self._guards: list = []  # optimizer step pre-hook handles (guard())
        self._saves = 0
        self._stall_total = 0.0
        self._stall_last = 0.0
        self._stall_max = 0.0

    def _record_stall(self, seconds: float) -> None:
        self._saves += 1
        self._stall_total += seconds
        self._stall_last = seconds
        self._stall_max = max(self._stall_max, seconds)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.kind} checkpointer for {self.directory} is closed")

    def barrier(self) -> None:
        """Return once the state may change again after save() (a no-op unless a pccheck
        checkpointer defers its snapshot, see CheckpointConfig.snapshot)."""

    def guard(self, *optimizers: torch.optim.Optimizer) -> None:
        """Run barrier() before every step() of these optimizers (until close())."""
        check_optimizers(optimizers)
        for opt in optimizers:
            self._guards.append(opt.register_step_pre_hook(lambda *_: self.barrier()))

    def _remove_guards(self) -> None:
        for handle in self._guards:
            handle.remove()
        self._guards.clear()

    def latest(self) -> CheckpointInfo | None:
        return latest_valid(self.directory)

    def load(
        self,
        state: Mapping[str, Any] | None = None,
        map_location: str | torch.device | None = None,
        step: int | None = None,
    ) -> tuple[int, dict[str, Any]]:
        return load_latest(self.directory, state, map_location, threads=self.config.reader_threads,
                           allow_pickle=self.config.allow_pickle, step=step,
                           load_buffer_bytes=self.config.load_buffer_bytes)

    def stats(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "saves": self._saves,
            "stall_total_s": self._stall_total,
            "stall_last_s": self._stall_last,
            "stall_max_s": self._stall_max,
        }

    @property
    def last_save_stall_s(self) -> float:
        return self._stall_last

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        self._remove_guards()
        self._closed = True


def now() -> float:
    return time.perf_counter()
