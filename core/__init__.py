"""ckptlab public API: persistent concurrent checkpointing for PyTorch training.

    from ckptlab.core import CheckpointConfig, open_checkpointer, load_latest, list_checkpoints
"""
from ckptlab.core.checkpointer import KINDS, Checkpointer, open_checkpointer
from ckptlab.core.config import CheckpointConfig
from ckptlab.core.errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointWriteError,
    CorruptCheckpointError,
    ManifestError,
    NoCheckpointError,
    SnapshotTornError,
    UnsafePickleError,
)
from ckptlab.core.recovery import CheckpointInfo, list_checkpoints, load_latest, verify_checkpoint

__all__ = [
    "KINDS", "Checkpointer", "open_checkpointer", "CheckpointConfig", "CheckpointInfo", "list_checkpoints",
    "load_latest", "verify_checkpoint", "CheckpointError", "CheckpointMismatchError", "CheckpointWriteError",
    "CorruptCheckpointError", "ManifestError", "NoCheckpointError", "SnapshotTornError", "UnsafePickleError",
]
