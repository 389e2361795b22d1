"""The ckptlab checkpointer: PCcheck-style concurrent checkpoints on the C++ engine.

save() captures the state, copies it into the engine's reusable staging buffers and returns
(CUDA tensors go device-to-host in chunks straight into the page-locked staging, core/staging_fill.py); the engine persists chunks on its writer
threads and commits checkpoints in step order while training goes on. Up to
`max_inflight` checkpoints may be in flight; a further save waits (back-pressure).
With CheckpointConfig.snapshot "deferred" or "gpu", save() returns once the copies are
enqueued and a background thread submits them (core/snapshot.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from ckptlab import _engine
from ckptlab.core import commit
from ckptlab.core.base import CheckpointerBase, now
from ckptlab.core.checkpointer import check_config, check_step, check_timeout
from ckptlab.core.config import CheckpointConfig
from ckptlab.core.errors import CheckpointError, CheckpointWriteError
from ckptlab.core.recovery import CheckpointInfo
from ckptlab.core.snapshot import Snapshotter
from ckptlab.core.state import (CapturedState, capture_lifted, check_loadable, lift_state, plan_storages,
                                planned_total_bytes)
from ckptlab.profiling.metadata import cpu_list_string
from ckptlab.profiling.phases import phase, recording
from ckptlab.profiling.sources import DrainedRecords, announce


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


class PCcheckCheckpointer(CheckpointerBase):
    """Implements ``ckptlab.profiling.RecordSource``: a trace session drains its engine's records."""

    kind = "pccheck"

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig) -> None:
        check_config(self.kind, config)
        super().__init__(directory, config)
        self._faults = config.effective_faults()
        try:
            _engine.validate_fault_spec(self._faults)
        except ValueError as e:
            raise ValueError(f"bad fault spec {self._faults!r}: {e}") from None
        self._engine: _engine.Engine | None = None
        self._recovered = False  # _recover_before_reading ran (or the engine did)
        self._snapshots = None  # sync mode: CUDA state goes D2H straight into page-locked staging through it
        if config.snapshot != "sync" or config.pinned_host_copies:
            self._snapshots = Snapshotter(config.snapshot, self._open_stream,
                                          lambda skeleton: check_loadable(skeleton, config.allow_pickle))
        if config.staging_bytes is not None:
            self._engine = self._open_engine(config.staging_bytes)

    def _open_engine(self, staging_bytes: int) -> _engine.Engine:
        c = self.config
        staging = max(_round_up(staging_bytes, c.chunk_bytes), c.chunk_bytes)
        self._records_on = c.trace or recording()
        engine = _engine.Engine(self.directory, **c.engine_options(), staging_bytes=staging, faults=self._faults,
                                trace=self._records_on)
        if self._records_on:
            announce(self)  # every recording trace session drains this checkpointer from now on
        return engine

    @property
    def engine(self) -> _engine.Engine | None:
        return self._engine

    def _recover_before_reading(self) -> None:
        """Repair what a crash left before the first read, as the engine does when it opens
        (core/commit.py, "Recovery"): the engine opens only at the first save, and without
        this a ``.step_N.replaced-`` copy (the only copy of step N after a crash between commit
        steps 4 and 5) would be invisible to latest()/load(), which would fall back to an
        older step. A directory another writer holds is read as it is: that writer repaired it
        when it opened."""
        if self._engine is not None or self._recovered or not os.path.isdir(self.directory):
            return
        self._recovered = True
        try:
            lock = commit.DirectoryLock(self.directory)
        except RuntimeError:
            return
        try:
            commit.recover(self.directory)
        finally:
            lock.release()

    def latest(self) -> CheckpointInfo | None:
        self._recover_before_reading()
        return super().latest()

    def load(self, state: Mapping[str, Any] | None = None, map_location: str | torch.device | None = None,
             step: int | None = None) -> tuple[int, dict[str, Any]]:
        self._recover_before_reading()
        return super().load(state, map_location, step)

    def _raise_failure(self) -> None:
        if self._engine is None:
            return
        f = self._engine.take_failure()
        if f is not None:
            raise CheckpointWriteError(
                f["errno"] or 5,
                f"checkpoint of step {f['step']} failed during {f['op']}: {f['message']}; "
                f"the previous checkpoint is kept",
                f["path"], step=f["step"],
            )

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        """Capture `state` and queue it; returns once training may mutate the state again
        (with a deferred snapshot: once checkpointer.barrier() has returned)."""
        t0 = now()
        self._check_open()
        check_step(step)
        if self._snapshots is not None:
            self._snapshots.settle()  # the previous snapshot's buffers are about to be reused
        self._raise_failure()
        with phase("capture", step=step):
            lifted = lift_state(state)
        tensors = lifted.tensors
        if self._snapshots is None or not self._streamed(tensors):
            skeleton = lifted.skeleton()
            check_loadable(skeleton, self.config.allow_pickle)
            captured = capture_lifted(skeleton, tensors, self._host_cache)
            self._ensure_engine(captured.total_bytes)
            self._submit(step, captured)
        else:
            plan = None  # the snapshot thread plans the storages, off the training thread
            # ... and pickles a frozen skeleton and checks it loads back, except where save() has
            # time for it: the first save (a leaf that cannot load fails at once) and sync saves
            checked = self._engine is None or self.config.snapshot == "sync"
            skeleton = None if lifted.frozen and not checked else lifted.skeleton()
            if checked:
                check_loadable(skeleton, self.config.allow_pickle)
            if self._engine is None:  # the first save sizes staging from the layout
                plan = plan_storages(tensors)
                self._ensure_engine(planned_total_bytes(skeleton, plan))
            with phase("snapshot_enqueue", step=step):
                self._snapshots.take(step, skeleton if skeleton is not None else lifted, tensors, plan,
                                     skeleton_checked=checked)
            if self.config.snapshot == "sync":  # the copies are complete (and sealed) before save() returns
                self._snapshots.settle()
        self._record_stall(now() - t0)

    def _streamed(self, tensors: list[tuple[str, torch.Tensor]]) -> bool:
        """Whether this save streams into staging (core/staging_fill.py): every deferred/gpu
        snapshot, and a sync one with CUDA tensors (one D2H into staging, no host cache). A
        sync save of CPU tensors is one copy already: the engine's own submit()."""
        return self.config.snapshot != "sync" or any(t.device.type == "cuda" for _, t in tensors)

    def _ensure_engine(self, total_bytes: int) -> None:
        if self._engine is None:  # staging sized to one checkpoint (capped); _open_engine rounds up
            self._engine = self._open_engine(min(_round_up(total_bytes, self.config.chunk_bytes),
                                                 self.config.max_auto_staging_bytes))

    def _submit(self, step: int, captured: CapturedState) -> None:
        """Copy `captured` into staging and queue it (the sync mode)."""
        assert self._engine is not None
        skeleton = captured.skeleton
        segments = [(_bytes_ptr(skeleton), len(skeleton), 0)]
        segments += [(s.buffer.data_ptr(), s.nbytes, s.offset) for s in captured.storages if s.nbytes]
        with phase("submit", step=step, nbytes=captured.total_bytes), self._engine_errors(step):
            self._engine.submit(step, _meta_json(captured.layout_meta()), segments, captured.total_bytes)

    def _open_stream(self, step: int, layout: dict[str, Any], total_bytes: int) -> tuple[_engine.Engine, int]:
        """Open the engine stream a snapshot fills (on the snapshot thread)."""
        assert self._engine is not None
        with self._engine_errors(step):
            return self._engine, self._engine.open_stream(step, _meta_json(layout), total_bytes)

    @contextlib.contextmanager
    def _engine_errors(self, step: int) -> Iterator[None]:
        """The engine's refusals as ckptlab errors."""
        try:
            yield
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        except OSError as e:  # raised before anything was queued (mkdir, open, fallocate)
            raise CheckpointWriteError(e.errno or 5, f"checkpoint of step {step} failed: {e.strerror}; "
                                       f"the previous checkpoint is kept", e.filename or self.directory,
                                       step=step) from None

    def barrier(self) -> None:
        """Return once the state may change after the last save() (deferred snapshots: on the
        GPU this only orders the current stream after the copies; the host does not wait)."""
        if self._snapshots is not None:
            self._snapshots.barrier()

    def wait(self, timeout: float | None = None) -> bool:
        """True once everything saved is durable (False if ``timeout`` seconds ran out first,
        the checkpoints still persisting); raises the first failure. The timeout bounds the
        deferred snapshot's hand-over and reaches the engine as a deadline."""
        self._check_open()
        check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        done = True
        if self._snapshots is not None:
            done = self._snapshots.settle(left())
        if done and self._engine is not None:
            done = self._engine.wait(left())
        self._raise_failure()
        return done

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s["snapshot"] = self.config.snapshot
        if self._snapshots is not None:
            s["snapshot_mode"] = self._snapshots.mode  # what "auto" chose (after the first save)
            s.update(snapshot_host_bytes=self._snapshots.host_bytes, snapshot_gpu_bytes=self._snapshots.gpu_bytes,
                     snapshot_wait_s=self._snapshots.host_wait_s,
                     pinned_staging_bytes=self._snapshots.pinned_staging_bytes)
        if self._engine is None:
            return s
        records = self._engine.commit_records()
        ok = [r for r in records if r["ok"]]
        s.update(
            committed=len(ok),
            failed=len(records) - len(ok),
            last_committed_step=self._engine.last_committed_step,
            inflight=self._engine.inflight,
            io_mode=self._engine.io_mode,
            time_to_durable_s=[(r["t_done_ns"] - r["t_submit_ns"]) / 1e9 for r in ok],
            staging_bytes=self._engine.staging_region[1],
            staging_touched_bytes=self._engine.staging_touched_bytes,
        )
        return s

    def commit_records(self) -> list[dict[str, Any]]:
        return [] if self._engine is None else self._engine.commit_records()

    def drain_trace(self) -> dict[str, Any]:
        """Timing records since the last drain (numpy columns), see docs/TRACE.md."""
        if self._engine is None:
            return {}
        return self._engine.drain_trace()

    def drain_records(self) -> DrainedRecords:
        """RecordSource: the records since the last drain, the engine's thread names, drops."""
        engine = self._engine
        if engine is None:
            return DrainedRecords()
        return DrainedRecords(engine.drain_trace(), engine.thread_names(), int(engine.trace_dropped))

    def describe(self) -> dict[str, Any]:
        """RecordSource: this checkpointer in a trace's metadata."""
        cpus = self.config.writer_cpus
        return {"kind": self.kind, "directory": os.fspath(self.directory), "config": dataclasses.asdict(self.config),
                "records": None if self._engine is None else self._records_on,
                "affinity": f"writers pinned to {cpu_list_string(cpus)}" if cpus else None}

    def close(self) -> None:
        """Wait for every in-flight checkpoint, stop the engine, raise a pending failure."""
        if self._closed:
            return
        self._closed = True
        self._remove_guards()
        snapshot_error: BaseException | None = None
        if self._snapshots is not None:
            try:
                self._snapshots.close()
            except BaseException as e:  # close the engine first, then raise
                snapshot_error = e
        if self._engine is not None:
            self._engine.close()
        if snapshot_error is not None:
            raise snapshot_error
        self._raise_failure()


def _meta_json(layout: dict[str, Any]) -> str:
    meta = dict(layout, saved_unix=time.time(), host=platform.node(), torch=torch.__version__)
    return json.dumps(meta, separators=(",", ":"))


def _bytes_ptr(data: bytes) -> int:
    return int(np.frombuffer(data, dtype=np.uint8).ctypes.data)
