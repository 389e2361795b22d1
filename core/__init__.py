"""ckptlab public API: persistent concurrent checkpointing for PyTorch training.

    from ckptlab.core import CheckpointConfig, open_checkpointer, load_latest, list_checkpoints

Names are resolved on first use (PEP 562), so importing a torch-free module of core
(``ckptlab.core.config``, ``ckptlab.core.fault_spec``, ``ckptlab.core.cli``) does not import
torch; ``open_checkpointer`` and the loaders do.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ckptlab.core.checkpointer": ("KINDS", "Checkpointer", "open_checkpointer"),
    "ckptlab.core.config": ("CheckpointConfig",),
    "ckptlab.core.errors": ("CheckpointError", "CheckpointMismatchError", "CheckpointWriteError",
                            "CorruptCheckpointError", "CorruptCheckpointWarning", "ManifestError", "NoCheckpointError",
                            "SnapshotTornError", "UnsafePickleError"),
    "ckptlab.core.distributed": ("load_global", "per_rank"),
    "ckptlab.core.recovery": ("CheckpointInfo", "list_checkpoints", "load_latest", "verify_checkpoint"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from ckptlab.core.checkpointer import KINDS, Checkpointer, open_checkpointer
    from ckptlab.core.config import CheckpointConfig
    from ckptlab.core.errors import (CheckpointError, CheckpointMismatchError, CheckpointWriteError,
                                     CorruptCheckpointError, CorruptCheckpointWarning, ManifestError,
                                     NoCheckpointError,
                                     SnapshotTornError, UnsafePickleError)
    from ckptlab.core.distributed import load_global, per_rank
    from ckptlab.core.recovery import CheckpointInfo, list_checkpoints, load_latest, verify_checkpoint


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ckptlab.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
