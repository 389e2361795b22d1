"""Durable file operations for the Python side (the engine has its own in C++).

Rules from docs/BACKGROUND.md §1.1: write a temp file, fsync it, rename it into place,
fsync the directory. close() is not a durability point. ``fsync_dir``, ``atomic_replace`` and
``atomic_write_bytes`` are ``ckptlab.profiling.files``' (trace files and figures use them too).
"""
from __future__ import annotations

import os

from ckptlab.profiling.files import atomic_replace, atomic_write_bytes, fsync_dir
from ckptlab.profiling.phases import phase

__all__ = ["atomic_replace", "atomic_write_bytes", "fsync_dir", "makedirs_durable", "write_file_durable"]


def makedirs_durable(path: str | os.PathLike) -> None:
    """Create a directory (and parents) and make each new entry durable."""
    path = os.path.abspath(os.fspath(path))
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            pass
        fsync_dir(os.path.dirname(d))


def write_file_durable(path: str, data: bytes | memoryview, *, step: int = -1) -> None:
    """Write a new file, fsync it. The caller fsyncs the directory (once, for many files).
    The write and the fsync are the ``file_write`` / ``file_fsync`` trace phases of ``step``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        nbytes = view.nbytes
        with phase("file_write", step=step, nbytes=nbytes):
            while view:
                n = os.write(fd, view)
                view = view[n:]
        with phase("file_fsync", step=step, nbytes=nbytes):
            os.fsync(fd)
    finally:
        os.close(fd)
