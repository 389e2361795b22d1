"""Atomic, durable file replacement: what trace files, JSON exports and figures are written with.

The rule: write a temp file beside the target, fsync it, rename it into place,
fsync the directory; ``close()`` is not a durability point. A reader never sees half a file,
and a failure leaves the previous file and no temp file. ``ckptlab.core.durable`` uses the same
functions for checkpoints (core may import profiling; profiling never imports core).
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, making the entries created or renamed in it durable."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_replace(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Replace `path` atomically and durably: `write(tmp)` creates a temp file beside it,
    which is fsynced, renamed over `path`, and the directory fsynced. No temp file survives
    a failure."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def write_all(path: str, data: bytes | memoryview) -> None:
    """Create `path` (it must not exist) holding `data`; not fsynced (atomic_replace does that)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Replace `path` with `data` atomically and durably (temp + fsync + rename + dir fsync)."""
    atomic_replace(path, lambda tmp: write_all(tmp, data))
