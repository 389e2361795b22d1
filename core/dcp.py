"""PyTorch Distributed Checkpoint (DCP) behind the ckptlab checkpointer protocol: the kinds
``dcp`` (``dcp.save``) and ``dcp-async`` (``dcp.async_save``), the peer users know, for
side-by-side runs. DCP on its own neither fsyncs the directory nor survives a crash while
it overwrites ``.metadata``; here it writes into a temp directory that core/commit.py
publishes, so a ``step_*`` directory exists only once all of it is durable::

    ckpt_dir/.step_000000000050.tmp-<tag>/   DCP writes __0_*.distcp and .metadata here
              (+ trainer_state.pt: every entry that is not a model or optimizer tensor,
                 torch.save'd at save() time, written and fsynced by us)
    commit.publish: fsync(temp dir); rename -> ckpt_dir/step_000000000050/; fsync(ckpt_dir)

Model and optimizer tensors go through DCP with its ``state_dict`` helpers
(``get_model_state_dict`` / ``get_optimizer_state_dict``, FQN-keyed as DCP users expect).
Single process, no process group (across the ranks of a group: core/dcp_ranks.py). ``dcp-async`` keeps at most ``max_inflight`` saves in flight
(DCP's default stager copies the state before async_save returns); commits are published in
step order. ``keep_last`` and ``writer_threads`` (DCP's ``thread_count``) come from the
CheckpointConfig; the engine-only fields do not apply. Armed (``faults`` / ``io_log``,
core/writer_io.py) it passes the commit protocol's fault points (``before_tmpdir_fsync``,
``before_rename``, ``after_rename``, ``after_commit``, ``before_gc``, ``during_gc``) and logs
our operations; DCP writes its own files, so those neither pass points nor appear in the log
(a dcp I/O log cannot be replayed into crash states).
"""
from __future__ import annotations

import inspect
import io
import os
import threading
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ckptlab.core import commit
from ckptlab.core.checkpointer import check_config, check_optimizers, check_step, check_timeout
from ckptlab.core.config import CheckpointConfig
from ckptlab.core.durable import makedirs_durable, write_file_durable
from ckptlab.core.errors import CheckpointError, CheckpointMismatchError, CorruptCheckpointWarning, NoCheckpointError
from ckptlab.core.recovery import CheckpointInfo
from ckptlab.core.restore import OPTIMIZER, TENSORS, RestorePlan, check_optimizer, optimizer_snapshot, plan_entry
from ckptlab.core.state import StatefulRef, without_per_rank
from ckptlab.core.writer_io import CheckpointIO, WriterIO
from ckptlab.profiling.phases import phase

SIDE_FILE = "trainer_state.pt"
DCP_METADATA = ".metadata"


def _dir_nbytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _kwargs_supported(fn: Any, **kwargs: Any) -> dict[str, Any]:
    """Keep only the keyword arguments this torch version's ``fn`` accepts."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


@dataclass
class _Pending:
    step: int
    tmp: str
    t_issue: float
    io: CheckpointIO
    done: threading.Event = field(default_factory=threading.Event)


class DcpCheckpointer:
    """Kinds ``dcp`` / ``dcp-async`` (module docstring); the Checkpointer protocol."""

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig, *, async_save: bool = False) -> None:
        import torch.distributed.checkpoint as dcp  # deferred: heavy import

        self.kind = "dcp-async" if async_save else "dcp"
        check_config(self.kind, config)
        self.config = config
        self._dcp = dcp
        # Single-process use without a process group is what we intend; DCP warns each call.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
        self.directory = os.path.abspath(os.fspath(directory))
        self._io = WriterIO.from_config(config)
        self._io.start(self.directory)
        self._dir_lock: commit.DirectoryLock | None = self._open_directory()
        self.async_save = async_save
        self._lock = threading.Condition()
        self._pending: list[_Pending] = []
        self._error: BaseException | None = None
        self._durable_s: dict[int, float] = {}
        self._stalls: list[float] = []
        self._closed = False
        dist = torch.distributed
        self._no_dist = not (dist.is_available() and dist.is_initialized())

    def _open_directory(self) -> commit.DirectoryLock | None:
        """Create, lock and repair the directory (one writer per directory; a crash's leftovers
        are repaired before anything is listed)."""
        makedirs_durable(self.directory, self._io)
        lock = commit.DirectoryLock(self.directory, self._io)
        commit.recover(self.directory, self._io)
        return lock

    # -- saving ---------------------------------------------------------------------------

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        """Issue checkpoint ``step``; returns once the state is captured (dcp-async) or durable."""
        self._check_open()
        check_step(step)
        self._raise_error()
        t0 = time.perf_counter()
        # Python phases (docs/TRACE.md) on the caller's thread: wait (dcp-async back-pressure),
        # capture, serialize, then dcp_save and _commit's phases (dcp) or dcp_async_save
        # (dcp-async: _commit's phases then run where DCP completes the write).
        if self.async_save:
            self._wait_for_slot()
        tensors, side_bytes = capture_for_dcp(state, step)
        ck = self._io.checkpoint(step)
        tmp = commit.make_temp_dir(self.directory, step, ck)
        writer = self._dcp.FileSystemWriter(tmp, sync_files=True,
                                            **_kwargs_supported(self._dcp.FileSystemWriter,
                                                                thread_count=self.config.writer_threads))
        pending = _Pending(step, tmp, t0, ck)
        extra = _kwargs_supported(self._dcp.save, no_dist=self._no_dist)
        if not self.async_save:
            try:
                with phase("dcp_save", step=step):
                    self._dcp.save(tensors, storage_writer=writer, checkpoint_id=tmp, **extra)
                self._commit(pending, side_bytes)
            except Exception as exc:
                self._io.remove_tree(tmp)
                ck.mark("fail")
                raise CheckpointError(f"DCP checkpoint of step {step} in {self.directory} failed: "
                                      f"{exc!r}; the previous checkpoint is kept") from exc
        else:
            with self._lock:
                self._pending.append(pending)
            try:
                with phase("dcp_async_save", step=step):
                    result = self._dcp.async_save(tensors, storage_writer=writer, checkpoint_id=tmp, **extra)
            except BaseException:
                self._finish(pending)
                self._io.remove_tree(tmp)
                ck.mark("fail")
                raise
            future: Future = getattr(result, "upload_completion", result)
            future.add_done_callback(lambda f: self._on_done(pending, f, side_bytes))
        self._stalls.append(time.perf_counter() - t0)

    def _on_done(self, pending: _Pending, future: Future, side: bytes) -> None:
        try:
            future.result()
            self._wait_for_turn(pending)
            self._commit(pending, side)
        except BaseException as exc:  # surfaced at the next save()/wait()
            with self._lock:
                self._error = self._error or CheckpointError(
                    f"DCP checkpoint of step {pending.step} in {self.directory} failed: {exc!r}; "
                    f"the previous checkpoint is kept")
            self._io.remove_tree(pending.tmp)
            pending.io.mark("fail")
        finally:
            self._finish(pending)

    def _wait_for_turn(self, pending: _Pending) -> None:
        """Commits in step order: every checkpoint issued before this one is settled first."""
        with self._lock:
            self._lock.wait_for(lambda: self._pending[0] is pending)

    def _finish(self, pending: _Pending) -> None:
        with self._lock:
            if pending in self._pending:
                self._pending.remove(pending)
            pending.done.set()
            self._lock.notify_all()

    def _commit(self, pending: _Pending, side: bytes) -> None:
        """Side file, then the protocol of core/commit.py. Runs in save() (dcp) or on DCP's
        completion thread (dcp-async); its phases run there too."""
        step, ck = pending.step, pending.io
        write_file_durable(os.path.join(pending.tmp, SIDE_FILE), side, step=step, io=ck)
        with phase("dir_commit", step=step):
            commit.publish(self.directory, step, pending.tmp, ck)
        ck.point("after_commit")
        ck.mark("ack")
        with self._lock:
            self._durable_s[step] = time.perf_counter() - pending.t_issue
        commit.retain_best_effort(self.directory, step, self.config.keep_last, ck)

    def _wait_for_slot(self) -> None:
        """Back-pressure: at most ``max_inflight`` async saves in flight, never unbounded."""
        while True:
            with self._lock:
                if len(self._pending) < self.config.max_inflight:
                    return
                oldest = self._pending[0]
            with phase("wait", step=oldest.step):  # the step of the checkpoint waited for
                oldest.done.wait()

    def barrier(self) -> None:
        """No-op: DCP's stager has copied the state by the time save() returns."""

    def guard(self, *optimizers: torch.optim.Optimizer) -> None:
        """No-op beyond checking its arguments (barrier() never has to wait)."""
        check_optimizers(optimizers)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every issued checkpoint is durable or failed (at most ``timeout``
        seconds); raise the first failure. False if some were still in flight at the timeout."""
        self._check_open()
        check_timeout(timeout)
        with self._lock:
            done = self._lock.wait_for(lambda: not self._pending, timeout)
        self._raise_error()
        return done

    def _raise_error(self) -> None:
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def stats(self) -> dict[str, Any]:
        """Same keys as the other kinds' ``stats()`` where they apply."""
        with self._lock:
            durable = [self._durable_s[k] for k in sorted(self._durable_s)]
            inflight = len(self._pending)
        return {"kind": self.kind, "saves": len(self._stalls), "stall_total_s": sum(self._stalls),
                "stall_last_s": self._stalls[-1] if self._stalls else 0.0,
                "stall_max_s": max(self._stalls, default=0.0), "committed": len(durable),
                "inflight": inflight, "time_to_durable_s": durable}

    # -- finding and loading --------------------------------------------------------------

    def _committed(self) -> list[tuple[int, str]]:
        return [(s, p) for s, p in commit.committed_step_dirs(self.directory)
                if os.path.isfile(os.path.join(p, DCP_METADATA)) and os.path.isfile(os.path.join(p, SIDE_FILE))]

    def latest(self) -> CheckpointInfo | None:
        committed = self._committed()
        if not committed:
            return None
        step, path = committed[-1]
        return CheckpointInfo(step, path, _dir_nbytes(path), writer=self.kind, status="unverified")

    def load(self, state: Mapping[str, Any] | None = None, map_location: str | torch.device | None = None,
             step: int | None = None) -> tuple[int, dict[str, Any]]:
        """Restore the newest committed checkpoint (or exactly ``step``) into ``state``'s
        objects, in place.

        A checkpoint that fails to read is reported and skipped for the next older one; a
        shape/dtype mismatch is not (every older one would mismatch too). The model and
        optimizer state is read into fresh host tensors and checked before any object changes
        (host memory for one copy, as the ckptlab format's load needs); the objects get it on
        their own devices, the returned state holds the host copies; ``map_location`` is unused.
        """
        self._check_open()
        state = state if state is not None else {}
        failures = []
        candidates = [(s, p) for s, p in self._committed() if step is None or s == step]
        for s, path in reversed(candidates):
            with phase("load", step=s):  # as core's load: one checkpoint read and restored
                try:
                    saved, side = self._read(path, state)
                except CheckpointMismatchError:
                    raise
                except Exception as exc:  # corrupt or unreadable: fall back, loudly
                    warnings.warn(CorruptCheckpointWarning(path, s, f"unreadable DCP checkpoint: {exc!r}"), stacklevel=2)
                    failures.append(f"{path}: {exc!r}")
                    continue
                _restore(state, saved, side)
                return s, {**side, **saved}
        detail = f" (unreadable: {'; '.join(failures)})" if failures else ""
        what = f"step {step}" if step is not None else "DCP checkpoint"
        raise NoCheckpointError(f"no valid {what} in {self.directory}{detail}")

    def _read(self, path: str, state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The checkpoint's model and optimizer state dicts, read into fresh tensors, and its
        side file; refuses one whose model or entries do not fit `state`. Changes nothing."""
        reader, saved, side = self._read_local(path, state, SIDE_FILE)
        self._dcp.load(saved, storage_reader=reader, checkpoint_id=path,
                       **_kwargs_supported(self._dcp.load, no_dist=self._no_dist))
        return saved, side

    def _read_local(self, path: str, state: Mapping[str, Any], side_file: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """What _read does before DCP reads the tensors: (reader, template, side entries);
        every check that needs no other rank."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        reader = self._dcp.FileSystemReader(path)
        metadata = reader.read_metadata()
        models = {k: get_model_state_dict(v) for k, v in state.items() if isinstance(v, nn.Module)}
        _check_shapes(metadata.state_dict_metadata, models, state, path)
        side = torch.load(os.path.join(path, side_file), map_location="cpu", weights_only=True)
        live = [k for k, v in state.items() if isinstance(v, (nn.Module, torch.optim.Optimizer))]
        if not state:  # nothing to restore into: return every saved entry, as the other kinds do
            planned = getattr(metadata, "planner_data", None) or {}
            live = sorted({where[0] for where in planned.values() if where})
        for key in state:
            if key not in live and key not in side:
                raise CheckpointMismatchError(f"entry {key!r} is missing from checkpoint {path}")
        return reader, _saved_template(metadata, live, path), side

    # -- lifecycle ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError(f"{self.kind} checkpointer for {self.directory} is closed")

    def close(self) -> None:
        """Wait for every in-flight checkpoint, release the directory, raise a pending failure."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True
            self._io.close()
            if self._dir_lock is not None:
                self._dir_lock.release()

    def __enter__(self) -> DcpCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _the_module(state: Mapping[str, Any]) -> nn.Module | None:
    modules = [v for v in state.values() if isinstance(v, nn.Module)]
    if len(modules) > 1:
        raise ValueError("the DCP adapter handles one nn.Module per checkpoint")
    return modules[0] if modules else None


def _restore(state: Mapping[str, Any], saved: dict[str, Any], side: dict[str, Any]) -> None:
    """Check the optimizers and the side file's entries against `state`, then restore every
    entry all or nothing (core/restore.py): side entries, optimizers, models, in that order."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    module = _the_module(state)
    # not strict: a parameter that never had a gradient has no state, a load torch's own
    # Optimizer.load_state_dict (and so the ckptlab format) accepts; check_optimizer checks the rest
    loose = StateDictOptions(strict=False)
    plan = RestorePlan()
    for key, value in state.items():
        if isinstance(value, nn.Module):
            plan.add(key, TENSORS, lambda m=value, sd=saved[key]: set_model_state_dict(m, sd))
        elif isinstance(value, torch.optim.Optimizer):
            if module is None:
                raise ValueError("an optimizer needs its nn.Module in the same checkpoint")
            check_optimizer(value, saved.get(key), [], key, dict(module.named_parameters()))
            plan.add(key, OPTIMIZER, lambda o=value, sd=saved[key]: set_optimizer_state_dict(module, o, sd, options=loose),
                     lambda o=value: optimizer_snapshot(o))
        else:
            loaded = StatefulRef(side[key]) if hasattr(value, "load_state_dict") else side[key]
            plan_entry(plan, state, key, loaded, [], key)
    plan.apply()


def _saved_template(metadata: Any, keys: list[str], path: str) -> dict[str, Any]:
    """The nested state dicts of the entries `keys` as saved, with fresh tensors of the saved
    shapes for DCP to read into (so nothing live changes before every check has passed);
    DCP replaces the None of each non-tensor leaf by its value."""
    paths = getattr(metadata, "planner_data", None)
    if not isinstance(paths, dict):
        raise CheckpointError(f"DCP checkpoint {path} has no planner data (not written by dcp.save)")
    nested: dict[Any, Any] = {}
    for flat, where in paths.items():
        if not where or where[0] not in keys:
            continue
        meta = metadata.state_dict_metadata.get(flat)
        node = nested
        for part in where[:-1]:
            node = node.setdefault(part, {})
        node[where[-1]] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype) if hasattr(meta, "size") else None
    return _lists_restored(nested)


def _lists_restored(node: Any) -> Any:
    """DCP flattens lists under integer keys (param_groups.0.lr): make them lists again."""
    if not isinstance(node, dict):
        return node
    items = {k: _lists_restored(v) for k, v in node.items()}
    if items and all(isinstance(k, int) for k in items) and sorted(items) == list(range(len(items))):
        return [items[i] for i in range(len(items))]
    return items


def _tensor_template(state: Mapping[str, Any]) -> dict[str, Any]:
    """FQN-keyed state dicts (sharing storage with the live tensors) for DCP's tensor part."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    module = _the_module(state)
    template: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, nn.Module):
            template[key] = get_model_state_dict(value)
        elif isinstance(value, torch.optim.Optimizer):
            if module is None:
                raise ValueError("an optimizer needs its nn.Module in the same checkpoint")
            template[key] = get_optimizer_state_dict(module, value)
    return template


def capture_for_dcp(state: Mapping[str, Any], step: int) -> tuple[dict[str, Any], bytes]:
    """(the DCP part of ``state``, the side file's bytes), recorded as the ``capture`` and
    ``serialize`` phases: what every DCP kind's save() does first on the caller's thread."""
    with phase("capture", step=step):
        tensors, side = _split_state(state)
    buf = io.BytesIO()
    with phase("serialize", step=step):
        torch.save(side, buf)
    return tensors, buf.getvalue()


def _split_state(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(DCP part, side-file part); objects with ``state_dict()`` are captured now."""
    tensors = _tensor_template(state)
    side = {}
    for key, value in state.items():
        if key not in tensors:  # per_rank markers: the side file is this rank's own already
            value = without_per_rank(value)
            side[key] = without_per_rank(value.state_dict() if hasattr(value, "state_dict") else value)
    return tensors, side


def _check_shapes(saved: dict[str, Any], template: dict[str, Any], state: Mapping[str, Any], path: str) -> None:
    """Refuse a checkpoint of another model shape, naming the first tensor that differs."""
    for key, value in state.items():
        if not isinstance(value, nn.Module):
            continue
        prefix = f"{key}."
        for fqn, tensor in template[key].items():
            meta = saved.get(prefix + fqn)
            if meta is None or not hasattr(meta, "size"):
                raise CheckpointMismatchError(f"tensor {fqn!r} of the model is missing from checkpoint {path}")
            saved_dtype = meta.properties.dtype
            if tuple(meta.size) != tuple(tensor.shape) or saved_dtype != tensor.dtype:
                raise CheckpointMismatchError(
                    f"tensor {fqn!r}: checkpoint {path} holds shape {tuple(meta.size)} "
                    f"{saved_dtype}, the model has shape {tuple(tensor.shape)} {tensor.dtype}")
        unexpected = sorted(k[len(prefix):] for k in saved
                            if k.startswith(prefix) and k[len(prefix):] not in template[key])
        if unexpected:
            raise CheckpointMismatchError(
                f"tensor {unexpected[0]!r} in checkpoint {path} does not exist in the model "
                f"({len(unexpected)} such tensors)")
