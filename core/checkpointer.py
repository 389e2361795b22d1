"""THE checkpointer protocol every kind implements, the one registry of kinds, and the
factory that opens one.

Kinds: ``pccheck`` (ours: the C++ engine, concurrent and asynchronous), ``torchsave`` (the
baseline done right: torch.save + fsync + atomic rename), ``dcp`` / ``dcp-async`` (PyTorch
Distributed Checkpoint, the peer users compare with), ``none`` (checkpointing off).
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ckptlab.core.config import CheckpointConfig, check_cpus_available

if TYPE_CHECKING:
    import torch

    from ckptlab.core.recovery import CheckpointInfo


@runtime_checkable
class Checkpointer(Protocol):
    """One checkpointer over one directory. The calls, in the order a training loop makes them:

    1. ``open_checkpointer(kind, directory, config)``: takes the directory (one writer at a
       time) and repairs what a crash left there.
    2. ``latest()`` / ``load(state)``: resume from the newest valid checkpoint, restoring into
       the objects of ``state`` in place (or returning tensors); all or nothing.
    3. ``guard(*optimizers)``: run ``barrier()`` before each ``optimizer.step()`` (needed only
       where save() defers its snapshot, harmless elsewhere).
    4. ``save(step, state)`` per checkpoint, steps increasing: returns once the state is
       captured; training may change it after ``barrier()`` (which ``guard`` calls).
    5. ``wait(timeout=None)``: True once everything issued is durable, False if the timeout
       ran out first; raises the first failure (``CheckpointWriteError`` with errno and path;
       the previous checkpoint is kept). ``save()`` raises it too.
    6. ``stats()`` at any time; ``close()`` last: waits, releases the directory, raises a
       pending failure. Also a context manager.
    """

    kind: str
    directory: str

    def save(self, step: int, state: Mapping[str, Any]) -> None: ...

    def barrier(self) -> None: ...

    def guard(self, *optimizers: torch.optim.Optimizer) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...

    def latest(self) -> CheckpointInfo | None: ...

    def load(
        self,
        state: Mapping[str, Any] | None = None,
        map_location: str | torch.device | None = None,
        step: int | None = None,
    ) -> tuple[int, dict[str, Any]]: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Checkpointer: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


# kind -> (module, class, keyword arguments); imported on first use (torch, DCP are heavy)
_REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "pccheck": ("ckptlab.core.pccheck", "PCcheckCheckpointer", {}),
    "torchsave": ("ckptlab.core.torchsave", "TorchSaveCheckpointer", {}),
    "dcp": ("ckptlab.core.dcp", "DcpCheckpointer", {"async_save": False}),
    "dcp-async": ("ckptlab.core.dcp", "DcpCheckpointer", {"async_save": True}),
    "none": ("ckptlab.core.null", "NullCheckpointer", {}),
}
KINDS: tuple[str, ...] = tuple(_REGISTRY)


def _class_of(kind: str) -> tuple[type, dict[str, Any]]:
    try:
        module, name, kwargs = _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown checkpointer kind {kind!r} (known: {', '.join(KINDS)})") from None
    return getattr(importlib.import_module(module), name), kwargs


def check_config(kind: str, config: CheckpointConfig) -> None:
    """Raise ValueError, naming the CheckpointConfig field, for a setting ``kind`` cannot
    honour here: a snapshot mode or writer CPUs for a kind without an engine, writer CPUs this
    process may not use. Every kind checks its config with this when it opens, and a training
    CLI calls it to refuse bad flags before it builds a model."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown checkpointer kind {kind!r} (known: {', '.join(KINDS)})")
    if kind == "pccheck":
        check_cpus_available(config.writer_cpus, "CheckpointConfig.writer_cpus")
    if kind in ("pccheck", "none"):
        return
    if config.snapshot != "sync":
        raise ValueError(f"CheckpointConfig.snapshot={config.snapshot!r} is a pccheck mode; "
                         f"{kind} saves synchronously (use snapshot='sync')")
    if config.writer_cpus:
        raise ValueError(f"CheckpointConfig.writer_cpus places the pccheck engine's writer threads; {kind} has none")
    if config.chunk_assignment != "queue":
        raise ValueError(f"CheckpointConfig.chunk_assignment={config.chunk_assignment!r} assigns the pccheck "
                         f"engine's chunks to its writer threads; {kind} has none (use 'queue')")


def check_step(step: int) -> None:
    """The one rule for ``save(step, ...)``'s step: a non-negative int (not a bool)."""
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")


def check_optimizers(optimizers: tuple[object, ...]) -> None:
    """The one rule for ``guard(*optimizers)``'s arguments: torch optimizers."""
    import torch

    for opt in optimizers:
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"guard() takes torch.optim.Optimizer objects, got {type(opt).__name__}")


def check_timeout(timeout: float | None) -> None:
    """The one rule for ``wait(timeout)``: None (no limit) or a number of seconds >= 0."""
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")


def _distributed_initialized() -> bool:
    """Whether torch.distributed is in use here (without importing torch if it is not)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def open_checkpointer(kind: str, directory: str | os.PathLike, config: CheckpointConfig | None = None,
                      process_group: Any = None) -> Checkpointer:
    """Open a checkpointer of ``kind`` (one of KINDS) writing into ``directory``.

    With torch.distributed initialized (or ``process_group`` given) and more than one rank,
    every rank calls this and gets one logical multi-rank checkpointer over ``kind``
    (core/distributed.py, docs/DISTRIBUTED.md); a world of one is the plain kind."""
    config = config or CheckpointConfig()
    if not isinstance(config, CheckpointConfig):
        raise TypeError(f"config must be a CheckpointConfig, got {type(config).__name__}")
    if process_group is not None or _distributed_initialized():
        from ckptlab.core.distributed import DistributedCheckpointer, world_of

        if world_of(process_group) > 1:
            check_config(kind, config)
            if kind == "dcp":  # distributed itself: DCP's collectives, ckptlab's commit (core/dcp_ranks.py)
                from ckptlab.core.dcp_ranks import DcpRanksCheckpointer

                return DcpRanksCheckpointer(directory, config, process_group)
            if kind == "dcp-async":  # the same off the training thread (core/dcp_ranks_async.py)
                from ckptlab.core.dcp_ranks_async import DcpRanksAsyncCheckpointer

                return DcpRanksAsyncCheckpointer(directory, config, process_group)
            return DistributedCheckpointer(kind, directory, config, process_group)
    return open_local_checkpointer(kind, directory, config)


def open_local_checkpointer(kind: str, directory: str | os.PathLike, config: CheckpointConfig) -> Checkpointer:
    """This process's own checkpointer of ``kind``, whatever torch.distributed says (a
    multi-rank checkpointer opens one per rank for its part)."""
    cls, kwargs = _class_of(kind)  # each kind checks its config (check_config) as it opens
    return cls(directory, config, **kwargs)
