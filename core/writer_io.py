"""The file-system operations of the Python writers (torchsave, and the commit protocol dcp
shares), through the engine's fault points and I/O log.

The fault grammar has one parser and the I/O log one format, both the engine's: an armed
:class:`WriterIO` holds an ``_engine.FaultInjector`` and an ``_engine.IoLog``
(:meth:`WriterIO.from_config`: ``CheckpointConfig.faults`` / ``io_log`` and the
``CKPTLAB_FAULTS`` / ``CKPTLAB_IO_LOG`` environment), so a torchsave save is killed at the same
named points as a pccheck one and its log is read and replayed by the same campaign code
(faults/iolog.py, faults/replay.py). Disarmed, an operation is its ``os`` call plus one
``is None`` test, a point one test.

As in the engine (csrc/file_io.cpp), each operation is logged right after it returned, with
its errno, by the thread that did it; a point is logged before it acts (a kill leaves it as
the last record); an error a point returns fails the operation right after it
(:meth:`CheckpointIO.check` raises the ``OSError`` that operation would have raised).
"""
from __future__ import annotations

import errno as errnos
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ckptlab import _engine

if TYPE_CHECKING:
    from ckptlab.core.config import CheckpointConfig

IO_ALIGN = 4096  # a short write keeps an aligned half, as the engine's does (csrc/engine.cpp)
NO_EFFECT = (0, False)
T = TypeVar("T")


@dataclass(frozen=True)
class FilePoints:
    """The fault points around one file: before its create, around each chunk's write,
    around its fsync (None: no point there)."""

    before_create: str | None = None
    before_write: str | None = None
    after_write: str | None = None
    before_fsync: str | None = None
    after_fsync: str | None = None


DATA_FILE = FilePoints(None, "before_chunk_write", "after_chunk_write", "before_data_fsync", "after_data_fsync")
MANIFEST_FILE = FilePoints(before_create="before_manifest", before_fsync="before_manifest_fsync")
PLAIN_FILE = FilePoints()


def injected(err: int, path: str) -> OSError:
    """The error a failed operation on ``path`` raises (what an injected error looks like)."""
    return OSError(err, os.strerror(err), path)


def naming(e: OSError, path: str) -> OSError:
    """``e`` with ``path`` as its filename if it has none: calls on a descriptor (write, fsync)
    fail without one, and the error must say which file failed, not only which checkpoint."""
    if e.filename is not None:
        return e
    named = OSError(e.errno, e.strerror, path)
    named.__cause__, named.__suppress_context__ = e, True  # as `raise named from e`
    return named


class WriterIO:
    """One writer's operations; armed with a fault spec and/or an I/O log, else plain."""

    def __init__(self, faults: str = "", io_log: str = "", record_data: bool = True) -> None:
        self._log = _engine.IoLog(io_log, record_data) if io_log else None
        # A log without faults still needs the injector: it writes the point markers.
        self._faults = _engine.FaultInjector(faults) if faults.strip() or self._log else None
        self._ckpts = itertools.count(1)

    @classmethod
    def from_config(cls, config: CheckpointConfig) -> WriterIO:
        path, data = config.effective_io_log()
        return cls(config.effective_faults(), path, data)

    @property
    def armed(self) -> bool:
        return self._faults is not None

    # --- markers and points ----------------------------------------------------------------
    def mark(self, kind: str, detail: str) -> None:
        if self._log is not None:
            self._log.mark(kind, detail)

    def start(self, directory: str) -> None:
        self.mark("start", f"pid={os.getpid()} dir={directory}")

    def close(self) -> None:
        """The ``close`` marker; the log is closed, later operations are not recorded."""
        self.mark("close", f"pid={os.getpid()}")
        self._log = None

    def checkpoint(self, step: int) -> CheckpointIO:
        """The next checkpoint of this writer (numbered 1, 2, ... like the engine's ``ckpt``)."""
        return CheckpointIO(self, next(self._ckpts), step)

    def point(self, name: str, ckpt: int, step: int) -> tuple[int, bool]:
        """Pass fault point ``name``: kills or sleeps as armed, else (errno, short write)."""
        if self._faults is None:
            return NO_EFFECT
        return self._faults.hit(name, ckpt, step, self._log)

    # --- operations --------------------------------------------------------------------------
    def _did(self, op: str, path: str, err: int = 0) -> None:
        if self._log is not None:
            self._log.op(op, path, err)

    def _call(self, op: str, path: str, fn: Callable[..., T], *args: object) -> T:
        try:
            out = fn(*args)
        except OSError as e:
            self._did(op, path, e.errno or errnos.EIO)
            raise naming(e, path)
        self._did(op, path)
        return out

    def mkdir(self, path: str) -> None:
        self._call("mkdir", path, os.mkdir, path)

    def create(self, path: str) -> int:
        """A new file for writing (O_CREAT | O_EXCL); its descriptor."""
        return self._call("create", path, os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)

    def open_create(self, path: str) -> int:
        """A file that may exist (the lock file), opened read-write."""
        return self._call("open_create", path, os.open, path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def unlink(self, path: str) -> None:
        self._call("unlink", path, os.unlink, path)

    def fsync(self, fd: int, path: str) -> None:
        self._call("fsync", path, os.fsync, fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._call("fsync_dir", path, os.fsync, fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        try:
            os.rename(src, dst)
        except OSError as e:
            if self._log is not None:
                self._log.rename(src, dst, e.errno or errnos.EIO)
            raise
        if self._log is not None:
            self._log.rename(src, dst, 0)

    def pwrite_all(self, fd: int, path: str, data: memoryview, offset: int, accept: int | None = None,
                   fail_errno: int = 0) -> None:
        """Write all of ``data`` at ``offset``, each returned write logged; with ``accept``, a
        device that takes that many bytes and then fails with ``fail_errno`` (a short write)."""
        n = data.nbytes
        limit = n if accept is None else min(n, accept)
        done = 0
        while done < limit:
            try:
                wrote = os.pwrite(fd, data[done:limit], offset + done)
            except OSError as e:
                if self._log is not None:
                    self._log.write(path, offset + done, b"", e.errno or errnos.EIO)
                raise naming(e, path)
            if self._log is not None:
                self._log.write(path, offset + done, data[done:done + wrote], 0)
            if wrote == 0:
                raise injected(errnos.EIO, path)
            done += wrote
        if done < n:
            raise injected(fail_errno or errnos.EIO, path)

    def remove_tree(self, path: str) -> bool:
        """Delete ``path`` and everything under it, each unlink and rmdir logged; best effort:
        False (never an exception) if something stayed."""
        try:
            entries = list(os.scandir(path))
        except OSError:
            return False
        ok = True
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                ok = self.remove_tree(entry.path) and ok
            else:
                ok = self._remove("unlink", os.unlink, entry.path) and ok
        return self._remove("rmdir", os.rmdir, path) and ok

    def _remove(self, op: str, fn: Callable[[str], None], path: str) -> bool:
        try:
            self._call(op, path, fn, path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


class CheckpointIO:
    """One checkpoint's view of a :class:`WriterIO`: its points and markers carry the
    checkpoint's number and step."""

    __slots__ = ("io", "ckpt", "step")

    def __init__(self, io: WriterIO, ckpt: int, step: int) -> None:
        self.io, self.ckpt, self.step = io, ckpt, step

    def point(self, name: str | None) -> tuple[int, bool]:
        return NO_EFFECT if name is None else self.io.point(name, self.ckpt, self.step)

    def check(self, name: str | None, path: str) -> None:
        """Pass point ``name``; if it armed an error, raise it as the next operation on
        ``path`` would."""
        err, _ = self.point(name)
        if err:
            raise injected(err, path)

    def mark(self, kind: str, extra: str = "") -> None:
        """A checkpoint marker (submit, ack, fail) in the engine's ``ckpt=K step=S`` form."""
        self.io.mark(kind, f"ckpt={self.ckpt} step={self.step}" + (f" {extra}" if extra else ""))

    def write_chunks(self, fd: int, path: str, data: memoryview, chunk_bytes: int, points: FilePoints) -> None:
        """Write ``data`` from offset 0 in pieces of ``chunk_bytes`` (0: one piece), each
        between ``points.before_write`` (whose error fails that write, or makes it short) and
        ``points.after_write``."""
        n = data.nbytes
        size = chunk_bytes if chunk_bytes > 0 else max(n, 1)
        for off in range(0, n, size):
            piece = data[off:off + size]
            err, short = self.point(points.before_write)
            if err and not short:
                raise injected(err, path)
            accept = piece.nbytes // 2 // IO_ALIGN * IO_ALIGN if short else None
            self.io.pwrite_all(fd, path, piece, off, accept, err)
            self.point(points.after_write)


DISARMED = WriterIO()
NO_CHECKPOINT = CheckpointIO(DISARMED, 0, -1)  # plain operations, no points, nothing logged
