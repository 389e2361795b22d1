"""Kind ``dcp`` across the ranks of a process group (torchrun): PyTorch DCP is distributed
itself, so here it runs as its users run it — ``dcp.save``/``dcp.load`` collective over the
group — with ckptlab's commit protocol around it (core/dcp.py for one process)::

    rank 0: make the temp dir DIR/.step_N.tmp-<tag>/, broadcast its name
    every rank: its side file (trainer_state.pt on rank 0, trainer_state.rank<R>.pt on rank R:
        RNG, data position, scheduler, extras), written and fsynced; all_gather of failures
    every rank: dcp.save into the temp dir (DCP dedups replicated tensors across ranks and
        gathers every rank's failure; rank 0 writes .metadata)
    rank 0: commit.publish (fsync temp dir, rename -> DIR/step_N/, fsync DIR), retention;
        broadcast the outcome: every rank returns from save() only once step N is durable

Only rank 0 locks, repairs and deletes in DIR. Loading: rank 0's list of committed steps
is broadcast; per candidate, newest first, each rank checks its side file and the shapes,
an all_gather decides (every rank falls back together), then ``dcp.load`` (collective; DCP
raises on every rank if any fails). Synchronous: the collectives run on the calling thread,
as DCP's own do; ``dcp-async`` runs the same steps on a background thread
(core/dcp_ranks_async.py). docs/DISTRIBUTED.md, "DCP across ranks".
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from ckptlab.core import commit
from ckptlab.core.checkpointer import check_step
from ckptlab.core.config import CheckpointConfig
from ckptlab.core.dcp import SIDE_FILE, DcpCheckpointer, _kwargs_supported, _restore, capture_for_dcp
from ckptlab.core.durable import makedirs_durable, write_file_durable
from ckptlab.core.errors import CheckpointError, CheckpointMismatchError, CorruptCheckpointWarning, NoCheckpointError
from ckptlab.profiling.phases import phase


_CALLERS = object()  # the group the checkpointer was opened with (None is the default group)


def side_file_name(rank: int) -> str:
    """Rank 0's side file keeps the one-process name, so one process can read rank 0's view."""
    return SIDE_FILE if rank == 0 else f"trainer_state.rank{rank}.pt"


class DcpRanksCheckpointer(DcpCheckpointer):
    """``dcp`` over the ranks of ``process_group`` (None: the default group); every rank
    calls every method with the same steps (module docstring)."""

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig,
                 process_group: dist.ProcessGroup | None = None, *, async_save: bool = False) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("DCP across ranks needs an initialized torch.distributed process group")
        self._group = process_group
        self._rank = dist.get_rank(process_group)
        self._world = dist.get_world_size(process_group)
        self._src = 0 if process_group is None else dist.get_global_rank(process_group, 0)
        self._side_file = side_file_name(self._rank)
        super().__init__(directory, config, async_save=async_save)

    def _from_rank0(self, value: Any, group: Any = _CALLERS) -> Any:
        """Rank 0's ``value`` on every rank, over ``group`` (default: the caller's group)."""
        group, src = (self._group, self._src) if group is _CALLERS else (group, dist.get_global_rank(group, 0))
        box = [value if self._rank == 0 else None]
        dist.broadcast_object_list(box, src=src, group=group)
        return box[0]

    def _gather(self, value: Any, group: Any = _CALLERS) -> list[Any]:
        out: list[Any] = [None] * self._world
        dist.all_gather_object(out, value, group=self._group if group is _CALLERS else group)
        return out

    def _open_directory(self) -> commit.DirectoryLock | None:
        """Rank 0 creates, locks and repairs DIR; the others wait for its outcome."""
        lock, problem = None, None
        if self._rank == 0:
            try:
                makedirs_durable(self.directory, self._io)
                lock = commit.DirectoryLock(self.directory, self._io)
                commit.recover(self.directory, self._io)
            except Exception as exc:  # noqa: BLE001 - every rank raises it, below
                if lock is not None:
                    lock.release()
                problem = f"{type(exc).__name__}: {exc}"
        problem = self._from_rank0(problem)
        if problem is not None:
            raise CheckpointError(f"dcp across {self._world} ranks: rank 0 could not open {self.directory}: {problem}")
        return lock

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        """Checkpoint ``step`` on every rank; returns once it is durable (module docstring)."""
        self._check_open()
        check_step(step)
        t0 = time.perf_counter()
        tensors, side_bytes = capture_for_dcp(state, step)
        self._save_collective(step, tensors, side_bytes, self._io.checkpoint(step), _CALLERS)
        with self._lock:
            self._durable_s[step] = time.perf_counter() - t0
        self._stalls.append(time.perf_counter() - t0)

    def _save_collective(self, step: int, tensors: dict[str, Any], side: bytes, ck: Any, group: Any) -> None:
        """The steps of the module docstring over ``group``, on the thread that owns it: temp
        dir, side file, ``dcp.save``, rank 0's publish, its outcome on every rank. Raises
        CheckpointError (the same on every rank) if the step did not become durable."""
        made: tuple[str | None, str | None] = (None, None)
        if self._rank == 0:
            try:
                made = (commit.make_temp_dir(self.directory, step, ck), None)
            except OSError as exc:
                made = (None, f"{exc.strerror} ({exc.filename})")
        tmp, problem = self._from_rank0(made, group)
        if problem is not None:
            ck.mark("fail")
            raise CheckpointError(f"DCP checkpoint of step {step} in {self.directory}: rank 0 could not make its "
                                  f"temp directory: {problem}; the previous checkpoint is kept")
        try:
            write_file_durable(os.path.join(tmp, self._side_file), side, step=step, io=ck)
            problem = None
        except OSError as exc:
            problem = f"{exc.strerror} ({exc.filename})"
        failed = [(r, p) for r, p in enumerate(self._gather(problem, group)) if p is not None]
        if not failed:
            writer = self._dcp.FileSystemWriter(tmp, sync_files=True,
                                                **_kwargs_supported(self._dcp.FileSystemWriter,
                                                                    thread_count=self.config.writer_threads))
            dcp_group = self._group if group is _CALLERS else group
            try:
                with phase("dcp_save", step=step):
                    self._dcp.save(tensors, storage_writer=writer, checkpoint_id=tmp,
                                   **_kwargs_supported(self._dcp.save, process_group=dcp_group))
            except Exception as exc:  # DCP raises on every rank when any rank fails
                failed = [(self._rank, repr(exc))]
        outcome = None if not failed else "; ".join(f"rank {r}: {p}" for r, p in failed)
        if self._rank == 0:
            if outcome is None:
                outcome = self._publish(step, tmp, ck)
            else:
                self._io.remove_tree(tmp)
        outcome = self._from_rank0(outcome, group)
        if outcome is not None:
            ck.mark("fail")
            raise CheckpointError(f"DCP checkpoint of step {step} in {self.directory} failed ({outcome}); the "
                                  f"previous checkpoint is kept")

    def _publish(self, step: int, tmp: str, ck: Any) -> str | None:
        """Rank 0: the commit protocol of core/commit.py, then retention; None or the problem."""
        try:
            with phase("dir_commit", step=step):
                commit.publish(self.directory, step, tmp, ck)
        except OSError as exc:
            return f"rank 0 could not publish it: {exc.strerror} ({exc.filename})"
        ck.point("after_commit")
        ck.mark("ack")
        commit.retain_best_effort(self.directory, step, self.config.keep_last, ck)
        return None

    def load(self, state: Mapping[str, Any] | None = None, map_location: str | torch.device | None = None,
             step: int | None = None) -> tuple[int, dict[str, Any]]:
        """Restore the newest checkpoint every rank can read (collective; module docstring)."""
        self._check_open()
        state = state if state is not None else {}
        candidates = self._from_rank0([(s, p) for s, p in self._committed() if step is None or s == step])
        failures = []
        for s, path in reversed(candidates):
            with phase("load", step=s):
                local, problem = None, None
                try:
                    local = self._read_local(path, state, self._side_file)
                except CheckpointMismatchError as exc:
                    problem = ("mismatch", str(exc))
                except Exception as exc:  # noqa: BLE001 - agreed on below
                    problem = ("unreadable", repr(exc))
                bad = [(r, p) for r, p in enumerate(self._gather(problem)) if p is not None]
                mismatch = [f"rank {r}: {p[1]}" for r, p in bad if p[0] == "mismatch"]
                if mismatch:
                    raise CheckpointMismatchError("; ".join(mismatch))
                if not bad:
                    reader, saved, side = local
                    try:
                        self._dcp.load(saved, storage_reader=reader, checkpoint_id=path,
                                       **_kwargs_supported(self._dcp.load, process_group=self._group))
                    except Exception as exc:  # DCP raises on every rank when any rank fails
                        bad = [(self._rank, ("unreadable", repr(exc)))]
                if bad:
                    reason = "; ".join(f"rank {r}: {p[1]}" for r, p in bad) + "; every rank falls back"
                    warnings.warn(CorruptCheckpointWarning(path, s, f"unreadable DCP checkpoint: {reason}"),
                                  stacklevel=2)
                    failures.append(f"{path}: {reason}")
                    continue
                _restore(state, saved, side)
                return s, {**side, **saved}
        detail = f" (unreadable: {'; '.join(failures)})" if failures else ""
        what = f"step {step}" if step is not None else "DCP checkpoint"
        raise NoCheckpointError(f"no valid {what} readable on all {self._world} ranks in {self.directory}{detail}")
