"""Durable file operations for the Python side (the engine has its own in C++).

Rules from docs/BACKGROUND.md §1.1: write a temp file, fsync it, rename it into place,
fsync the directory. close() is not a durability point. The atomic replacement of one file
(``atomic_replace``, ``atomic_write_bytes``) and ``fsync_dir`` are ``ckptlab.profiling.files``'
(trace files and figures use them too).
"""
from __future__ import annotations

import os

from ckptlab.core.writer_io import DISARMED, NO_CHECKPOINT, PLAIN_FILE, CheckpointIO, FilePoints, WriterIO
from ckptlab.profiling.phases import phase

__all__ = ["makedirs_durable", "write_file_durable"]


def makedirs_durable(path: str | os.PathLike, io: WriterIO = DISARMED) -> None:
    """Create a directory (and parents) and make each new entry durable (through ``io``:
    core/writer_io.py, logged when it is armed)."""
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
            io.mkdir(d)
        except FileExistsError:
            pass
        io.fsync_dir(os.path.dirname(d))


def write_file_durable(path: str, data: bytes | memoryview, *, step: int = -1, io: CheckpointIO = NO_CHECKPOINT,
                       points: FilePoints = PLAIN_FILE, chunk_bytes: int = 0) -> None:
    """Write a new file, fsync it. The caller fsyncs the directory (once, for many files).
    The write and the fsync are the ``file_write`` / ``file_fsync`` trace phases of ``step``.
    The operations go through ``io`` (core/writer_io.py): armed, they are logged and pass
    ``points`` (the writes in pieces of ``chunk_bytes``, 0: one), an error a point returns
    failing the operation after it."""
    view = memoryview(data).cast("B")
    nbytes = view.nbytes
    io.check(points.before_create, path)
    fd = io.io.create(path)
    try:
        with phase("file_write", step=step, nbytes=nbytes):
            io.write_chunks(fd, path, view, chunk_bytes, points)
        io.check(points.before_fsync, path)
        with phase("file_fsync", step=step, nbytes=nbytes):
            io.io.fsync(fd, path)
    finally:
        os.close(fd)
    io.point(points.after_fsync)
