"""Exceptions raised by ckptlab. Every one names the checkpoint path involved."""
from __future__ import annotations


class CheckpointError(Exception):
    """Base class of every ckptlab checkpoint error."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be made durable (write, fsync, rename failed: EIO, ENOSPC, ...).

    It is an ``OSError`` with ``errno`` and ``filename`` set; ``step`` is the checkpoint that
    failed. The previous committed checkpoint is untouched.
    """

    def __init__(self, errno: int, message: str, filename: str, step: int | None = None) -> None:
        super().__init__(errno, message, filename)
        self.step = step


class CorruptCheckpointError(CheckpointError):
    """A checkpoint on disk is torn, truncated, bit-flipped or not a ckptlab checkpoint."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class CorruptCheckpointWarning(RuntimeWarning):
    """Loading skipped the checkpoint of ``step`` at ``path`` because it is corrupt
    (``reason``) and fell back to an older one. Issued once per skip with ``warnings.warn``:
    the one channel, so it can be caught (``warnings.catch_warnings(record=True)``,
    ``pytest.warns``), silenced or made an error by category; never logged as well."""

    def __init__(self, path: str, step: int, reason: str) -> None:
        super().__init__(f"ckptlab: skipping corrupt checkpoint {path}: {reason}")
        self.path = path
        self.step = step
        self.reason = reason


class ManifestError(CorruptCheckpointError):
    """The MANIFEST file is missing, torn, fails its checksum, or does not follow the format."""


class UnsafePickleError(CorruptCheckpointError):
    """A pickled leaf refers to a type that is not on the allowlist."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """No valid checkpoint exists in the directory (the message lists what was skipped)."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """The checkpoint does not fit the objects it is loaded into (shape, dtype, missing keys)."""


class SnapshotTornError(CheckpointError):
    """The state changed before its deferred snapshot was complete; that checkpoint was not
    written (the previous one is kept)."""

    def __init__(self, step: int, names: list[str]) -> None:
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        super().__init__(
            f"checkpoint of step {step} was not written: {shown} changed before its deferred snapshot "
            f"completed; call checkpointer.guard(optimizer) (or checkpointer.barrier() before the first "
            f"in-place update after save()), or use snapshot='sync'; the previous checkpoint is kept")
        self.step = step
        self.names = names
