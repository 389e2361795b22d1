"""The commit protocol of the checkpoints written from Python (torchsave, dcp): names,
publish, retain, recover. The engine (csrc/engine.cpp) runs the same protocol in C++ for
pccheck; ``tests/core/test_commit.py`` checks that both leave a directory the same way.

Names in a checkpoint directory::

    step_<12 digits>/             a committed checkpoint: the only names a reader trusts
    .step_<N>.tmp-<tag>/          being written; never becomes visible except by step 5
    .step_<N>.replaced-<tag>/     the previous step_N, moved aside while step N is saved again
    .step_<N>.deleting-<tag>/     retention: renamed away first, then deleted
    .ckptlab.lock                 one writer per directory (flock, held while open)

Publishing checkpoint N from a temp directory (the steps of csrc/engine.hpp), with the
engine's fault points each step passes (docs/FAULTS.md)::

    1. every data file written and fsynced into the temp dir        (the writer; torchsave:
                                                                     before/after_chunk_write,
                                                                     before/after_data_fsync)
    2. the MANIFEST (or DCP's .metadata) written and fsynced         (the writer; torchsave:
                                                                     before_manifest[_fsync])
    3. the temp dir fsynced                                          before_tmpdir_fsync
    4. if step_N exists, it is renamed to .step_N.replaced-<tag>     before_rename
    5. rename(.step_N.tmp-<tag>, step_N)                             the commit point
    6. the parent dir fsynced                                        after_rename
    7. the replaced copy, if any, deleted; the parent fsynced
                                               (the writer: after_commit, then acknowledged)

Retention, after step N is acknowledged (before_gc): committed checkpoints older than N
beyond ``keep_last - 1`` are renamed to ``.deleting-`` names (during_gc after each rename),
deleted, and the parent fsynced; the one just committed is never deleted, and nothing is
deleted before a newer one is durable.

Recovery, when a writer opens the directory: a ``.replaced-`` directory whose ``step_N`` is
missing holds the only copy of step N (a crash between steps 4 and 5) and is renamed back;
every other ``.tmp-``, ``.deleting-`` and ``.replaced-`` leftover is deleted; the parent is
fsynced. Other names are left alone.

A failed write, fsync or rename is never retried (after a failed fsync the kernel may have
dropped the dirty pages); it fails that checkpoint only, its temp dir is removed, and the
previous checkpoints stay.

Every operation goes through core/writer_io.py (``io``: a writer's WriterIO, or for one
checkpoint its CheckpointIO): plain os calls unless the writer is armed with a fault spec or
an I/O log, then the points above fire and each operation is recorded as the engine records
its own.
"""
from __future__ import annotations

import fcntl
import os
import re
import uuid

from ckptlab.core.writer_io import DISARMED, NO_CHECKPOINT, CheckpointIO, WriterIO
from ckptlab.profiling.phases import phase

LOCK_NAME = ".ckptlab.lock"
MAX_STEP = (1 << 63) - 1  # steps are int64; a larger number is not a step name
_STEP_DIR = re.compile(r"step_([0-9]+)")  # whole name (fullmatch), ASCII digits: as the engine reads them
_LEFTOVER = re.compile(r"^\.(step_[^.]*)\.(tmp|replaced|deleting)-")  # as the engine reads them


def step_dir_name(step: int) -> str:
    return f"step_{step:012d}"


def parse_step_dir(name: str) -> int | None:
    """The step of a committed checkpoint's directory name (an int64, as the engine reads
    it: csrc/engine.cpp parse_step_name), else None."""
    m = _STEP_DIR.fullmatch(name)
    step = int(m.group(1)) if m else MAX_STEP + 1
    return step if step <= MAX_STEP else None


def committed_step_dirs(directory: str | os.PathLike) -> list[tuple[int, str]]:
    """(step, path) of every committed-looking checkpoint directory, oldest first."""
    directory = os.fspath(directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        step = parse_step_dir(name)
        path = os.path.join(directory, name)
        if step is not None and os.path.isdir(path):
            out.append((step, path))
    out.sort()
    return out


def _tag() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _aside(directory: str, step_name: str, kind: str) -> str:
    return os.path.join(directory, f".{step_name}.{kind}-{_tag()}")


_LOCK_ATTEMPTS = 5


def _same_file(fd: int, path: str) -> bool:
    """Whether ``fd`` is still the file at ``path`` (a lock taken on an unlinked file locks nothing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


class DirectoryLock:
    """One writer per checkpoint directory: an exclusive flock on ``.ckptlab.lock``, the same
    lock the engine takes, so a pccheck and a torchsave checkpointer refuse each other too."""

    def __init__(self, directory: str, io: WriterIO = DISARMED) -> None:
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd: int | None = None
        for _ in range(_LOCK_ATTEMPTS):
            fd = io.open_create(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RuntimeError(f"another ckptlab checkpointer is writing to '{directory}' (it holds "
                                   f"{self.path}); use a different directory or close it first") from None
            if _same_file(fd, self.path):
                self._fd = fd
                return
            os.close(fd)  # the file was unlinked (its holder released it) after we opened it: again
        raise RuntimeError(f"the lock file {self.path} was replaced {_LOCK_ATTEMPTS} times while taking it; "
                           f"is another process removing it?")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def make_temp_dir(directory: str, step: int, io: CheckpointIO = NO_CHECKPOINT) -> str:
    """A new, empty temp directory for checkpoint ``step`` (protocol step 1 writes into it);
    the ``submit`` marker precedes it, as in the engine."""
    tmp = _aside(directory, step_dir_name(step), "tmp")
    io.mark("submit", f"tmp={tmp}")
    io.io.mkdir(tmp)
    return tmp


def publish(directory: str, step: int, tmp: str, io: CheckpointIO = NO_CHECKPOINT) -> str:
    """Protocol steps 3-7 for a temp dir whose files are written and fsynced; returns the
    committed path. On an error the temp dir is removed and the error raised; the previous
    copy of the step, if there was one, is back under its name or restored by recover()."""
    fs = io.io
    final = os.path.join(directory, step_dir_name(step))
    replaced = None
    try:
        io.check("before_tmpdir_fsync", tmp)
        fs.fsync_dir(tmp)
        io.check("before_rename", tmp)
        if os.path.exists(final):
            replaced = _aside(directory, step_dir_name(step), "replaced")
            fs.rename(final, replaced)
        fs.rename(tmp, final)
    except OSError:
        fs.remove_tree(tmp)
        if replaced is not None and not os.path.exists(final):
            fs.rename(replaced, final)
        raise
    io.point("after_rename")
    fs.fsync_dir(directory)
    if replaced is not None:
        fs.remove_tree(replaced)
        fs.fsync_dir(directory)
    return final


def retain(directory: str, committed_step: int, keep_last: int, io: CheckpointIO = NO_CHECKPOINT) -> list[int]:
    """Delete committed checkpoints older than ``committed_step`` beyond ``keep_last - 1``
    (0 keeps all); returns the deleted steps. Run only after ``committed_step`` is durable."""
    if keep_last <= 0:
        return []
    io.point("before_gc")
    older = [(s, p) for s, p in committed_step_dirs(directory) if s < committed_step]
    doomed = older[: max(0, len(older) - (keep_last - 1))]
    for _, path in doomed:  # renamed first: no reader sees a half-deleted committed name
        trash = _aside(directory, os.path.basename(path), "deleting")
        io.io.rename(path, trash)
        io.point("during_gc")
        io.io.remove_tree(trash)
    if doomed:
        io.io.fsync_dir(directory)
    return [s for s, _ in doomed]


def retain_best_effort(directory: str, committed_step: int, keep_last: int, io: CheckpointIO = NO_CHECKPOINT) -> None:
    """retain() as the writers run it after an acknowledgement, in its ``retain`` trace phase:
    best effort, as in the engine, since a failed cleanup never affects the commit."""
    with phase("retain", step=committed_step):
        try:
            retain(directory, committed_step, keep_last, io)
        except OSError:
            pass


def recover(directory: str, io: WriterIO = DISARMED) -> list[str]:
    """Repair what a crash left (module docstring, "Recovery"); returns what was done, as
    'restored NAME' / 'removed NAME' lines."""
    done = []
    for name in os.listdir(directory):
        m = _LEFTOVER.match(name)
        if not m:
            continue
        path, base = os.path.join(directory, name), m.group(1)
        if m.group(2) == "replaced" and not os.path.exists(os.path.join(directory, base)):
            io.rename(path, os.path.join(directory, base))
            done.append(f"restored {base} from {name}")
        else:
            io.remove_tree(path)
            done.append(f"removed {name}")
    io.fsync_dir(directory)
    return done
