"""DDP mode of the training loop: what changes when ``torchrun`` starts several ranks.

``torchrun`` (``python -m torch.distributed.run``) sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``
and the rendezvous; with ``WORLD_SIZE > 1`` the loop joins the process group (gloo on the CPU,
nccl on CUDA with device ``cuda:LOCAL_RANK``), wraps the model in DDP, gives each rank its own
shard of the deterministic data and its own RNG, and checkpoints through the multi-rank
checkpointer (model, optimizer and scheduler replicated; RNG and data position per rank).
docs/TRAINING.md, "DDP under torchrun"; docs/DISTRIBUTED.md, "Launch".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DistContext", "launched_world_size", "launched_rank"]


def launched_world_size() -> int:
    """The world size torchrun announced (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched_rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the loss file, the summary and the progress bar."""
        return self.rank == 0

    @staticmethod
    def from_env() -> "DistContext":
        world = launched_world_size()
        if world <= 1:
            return DistContext()
        return DistContext(launched_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))

    def device_name(self, requested: str) -> str:
        """``auto``/``cuda`` under torchrun mean this rank's GPU, ``cuda:LOCAL_RANK``."""
        if not self.active:
            return requested
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        return f"cuda:{self.local_rank}" if requested == "cuda" else requested

    def init(self, device: torch.device) -> None:
        """Join the default process group (collective: every rank, at startup)."""
        import torch.distributed as dist

        if self.active and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module the training step calls: DDP over ``model`` (which stays the one saved,
        so checkpoints keep plain parameter names and load into one process too)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def close(self) -> None:
        import torch.distributed as dist

        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def rng_seed(self, seed: int) -> int:
        """Each rank's RNG stream after the (identical) model init: rank 0 keeps ``seed``."""
        return seed + self.rank

    def save_view(self, state: dict[str, Any]) -> dict[str, Any]:
        """The state as saved: RNG and data position marked per rank, the rest replicated."""
        if not self.active:
            return state
        from ckptlab.core import per_rank

        return {**state, "data": per_rank(state["data"]), "rng": per_rank(state["rng"])}
