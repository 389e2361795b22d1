"""Kind ``dcp-async`` across the ranks of a process group (torchrun): ``dcp.async_save`` as
torch composes it — DCP's stager copies the state on the calling thread, ``dcp.save`` runs
on a background thread over a gloo group of its own — with ckptlab's commit after it on
that same thread (core/dcp_ranks.py has the synchronous kind and the steps)::

    save(), training thread: DCP's DefaultStager copies the model/optimizer state to host
        memory; the side file's bytes are serialized; the step is queued; returns
    background thread (one per rank, the only user of a gloo group made at open): per queued
        step, in order, the steps of core/dcp_ranks.py over that group — rank 0's temp dir,
        every rank's side file fsynced, ``dcp.save`` (FileSystemWriter with sync_files), rank
        0's commit.publish (fsync temp dir, rename, fsync DIR), rank 0's outcome broadcast;
        the step is acknowledged on a rank only once that broadcast says it is published

The training thread runs no collective in save()/wait(), so a slow disk cannot stall the
training group's collectives (NCCL or gloo) and no two threads ever share a group. It keeps
``max_inflight`` staged copies at most (save() waits for the oldest's outcome beyond that);
DCP itself writes one at a time, as its async_save does per checkpointer. A failure surfaces
at the next save()/wait(), naming the step; a collective that times out
(``coordination_timeout_s``: a rank died) breaks the checkpointer for good. Loading is the
synchronous kind's (collective on the caller's group). docs/DISTRIBUTED.md, "DCP across ranks".
"""
from __future__ import annotations

import collections
import datetime
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from ckptlab.core.checkpointer import check_step
from ckptlab.core.config import CheckpointConfig
from ckptlab.core.dcp import _Pending, capture_for_dcp
from ckptlab.core.dcp_ranks import DcpRanksCheckpointer
from ckptlab.core.errors import CheckpointError
from ckptlab.profiling.phases import phase

@dataclass
class _Job:
    pending: _Pending
    staged: Any  # DCP's host copy of the model/optimizer state dicts (its stager is synchronous)
    side: bytes


class DcpRanksAsyncCheckpointer(DcpRanksCheckpointer):
    """``dcp-async`` over the ranks of ``process_group`` (module docstring); every rank calls
    every method with the same steps."""

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig,
                 process_group: dist.ProcessGroup | None = None) -> None:
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        super().__init__(directory, config, process_group, async_save=True)
        ranks = None if process_group is None else dist.get_process_group_ranks(process_group)
        self._timeout_s = config.coordination_timeout_s
        # created collectively, as core/distributed.py's coordinator group: gloo (host copies), own timeout
        self._bg = dist.new_group(ranks=ranks, backend="gloo", timeout=datetime.timedelta(seconds=self._timeout_s),
                                  use_local_synchronization=True)
        # async_save's own default: a synchronous copy into plain host memory
        self._stager = DefaultStager(StagingOptions(False, False, False, False))
        self._jobs: collections.deque[_Job] = collections.deque()
        self._broken: CheckpointError | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._commit_loop, name="ckptlab-dcp-async", daemon=True)
        self._thread.start()

    # -- training thread ------------------------------------------------------------------

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        """Stage ``step`` and queue it; returns once DCP's stager has copied the state."""
        self._check_open()
        check_step(step)
        self._raise_error()
        t0 = time.perf_counter()  # the stall counts the back-pressure wait, as the one-process kind's
        self._wait_for_slot()
        self._raise_error()
        tensors, side_bytes = capture_for_dcp(state, step)
        with phase("dcp_stage", step=step):
            staged = self._stager.stage(tensors)
        job = _Job(_Pending(step, "", t0, self._io.checkpoint(step)), staged, side_bytes)
        with self._lock:
            self._pending.append(job.pending)
            self._jobs.append(job)
            self._lock.notify_all()
        self._stalls.append(time.perf_counter() - t0)

    # -- background thread ----------------------------------------------------------------

    def _commit_loop(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._jobs or self._stopping)
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            self._run(job)

    def _run(self, job: _Job) -> None:
        pending = job.pending
        try:
            if self._broken is not None:
                raise self._broken
            self._save_collective(pending.step, job.staged, job.side, pending.io, self._bg)
            with self._lock:
                self._durable_s[pending.step] = time.perf_counter() - pending.t_issue
        except CheckpointError as exc:  # the same outcome on every rank; surfaced at the next save()/wait()
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - a collective failed: a rank died or never arrived
            pending.io.mark("fail")
            self._broken = CheckpointError(
                f"DCP checkpoint of step {pending.step} in {self.directory} failed on rank {self._rank}: the ranks "
                f"did not all arrive within {self._timeout_s:g} s (CheckpointConfig.coordination_timeout_s): "
                f"{type(exc).__name__}: {exc}; the previous checkpoint is kept; this checkpointer commits no "
                f"more steps (restart the job)")
            self._fail(self._broken)
        finally:
            job.staged = {}
            self._finish(pending)

    def _fail(self, exc: CheckpointError) -> None:
        with self._lock:
            self._error = self._error or exc

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for every queued step's outcome, stop the thread, release the directory,
        raise a pending failure."""
        if self._closed:
            return
        try:
            super().close()
        finally:
            with self._lock:
                self._stopping = True
                self._lock.notify_all()
            self._thread.join()
            self._stager.close()
