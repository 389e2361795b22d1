"""The multi-rank checkpointer: one logical checkpointer over torch.distributed ranks.

Each rank persists its own part with its own inner checkpointer (pccheck or torchsave) in
``DIR/rank_RRRRR``; a background coordinator thread per rank, on a dedicated gloo group,
agrees that every part of a step is durable, rank 0 writes the global commit record
(core/global_commit.py), and only then is the step acknowledged on every rank. The training
thread never runs a collective in save()/wait(), so a slow disk cannot stall NCCL.
Protocol, failure cases and launch: docs/DISTRIBUTED.md.
"""
from __future__ import annotations

import collections
import datetime
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ckptlab.core import global_commit as gc
from ckptlab.core import sharded as sh
from ckptlab.core.checkpointer import Checkpointer, check_step, check_timeout, open_local_checkpointer
from ckptlab.core.commit import LOCK_NAME, DirectoryLock, committed_step_dirs, recover
from ckptlab.core.errors import CheckpointError, CorruptCheckpointError, CorruptCheckpointWarning, NoCheckpointError
from ckptlab.core.config import DEFAULT_LOAD_BUFFER_BYTES, CheckpointConfig
from ckptlab.core.recovery import CheckpointInfo, cuda_device, read_checkpoint, verify_checkpoint
from ckptlab.core.restore import restore
from ckptlab.core.writer_io import NO_CHECKPOINT, CheckpointIO, WriterIO
from ckptlab.core.state import (PerRank, PerRankRef, StatefulRef, TensorRef, _is_stateful, lift_tensors,  # noqa: F401
                                per_rank, plan_storages, to_device, unpickle_skeleton)

INNER_KINDS = ("pccheck", "torchsave")  # the ckptlab-format kinds (dcp is distributed itself)
_WAIT_SLICE_S = 0.05  # how long one inner wait() may block before the coordinator looks again


def world_of(group: dist.ProcessGroup | None) -> int:
    """Ranks in ``group`` (the default group when None); 1 without torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("process_group given but torch.distributed is not initialized")
        return 1
    return dist.get_world_size(group)


class _CapturedStateful:
    """A stateful object's state_dict(), taken once with its per-rank markers replaced, for
    lift_state to walk as it would walk the object (saving only)."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def state_dict(self) -> Any:
        return self._state

    def load_state_dict(self, state: Any) -> None:  # pragma: no cover - never loaded into
        raise TypeError("a captured state_dict() is for saving only")


def split_per_rank(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state with each PerRank entry replaced by a PerRankRef, {key: value} of those entries).
    Markers are found where core/state.py lift_state looks: in dicts, lists and tuples, and
    in what a stateful object's state_dict() returns (called here, once)."""
    entries: dict[str, Any] = {}

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, PerRank):
            entries[path] = obj.value
            return PerRankRef(path)
        if isinstance(obj, dict):
            return {k: walk(v, f"{path}/{k}") for k, v in obj.items()}
        if _is_stateful(obj) and not isinstance(obj, Mapping):
            return _CapturedStateful(walk(obj.state_dict(), path))
        if isinstance(obj, Mapping):
            return {k: walk(v, f"{path}/{k}") for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(walk(v, f"{path}/{i}") for i, v in enumerate(obj))
        return obj

    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of names to objects, got {type(state).__name__}")
    return walk(state, ""), entries


def part_state(state: Mapping[str, Any], rank: int, world_size: int) -> tuple[dict[str, Any], list[int]]:
    """What rank ``rank`` saves of ``state``: the skeleton, its share of the replicated
    tensors (by index) and every per-rank entry; plus the partition plan (owner per region)."""
    replicated, entries = split_per_rank(state)
    skeleton, tensors = lift_tensors(replicated)
    dtensors = {i for i, (_, t) in enumerate(tensors) if sh.is_dtensor(t)}
    plan = plan_storages([pair for i, pair in enumerate(tensors) if i not in dtensors])
    owners = gc.partition([(r.name, r.nbytes) for r in plan.regions], world_size)
    index_of = {id(pair): i for i, pair in enumerate(tensors)}
    mine = {index_of[id(pair)]: pair[1] for region, owner in zip(plan.regions, owners) if owner == rank
            for pair in region.members}
    part = {"skeleton": skeleton, "count": len(tensors), "tensors": mine, "per_rank": entries}
    if dtensors:
        part.update(sharded_part(tensors, dtensors))
    return part, owners


def sharded_part(tensors: list[tuple[str, torch.Tensor]], dtensors: set[int]) -> dict[str, Any]:
    """The DTensor entries of a part (core/sharded.py): this rank's local shard of each, by
    index, and where each lies in its global tensor."""
    shards, meta = {}, {}
    for i in sorted(dtensors):
        piece = sh.shard_of(*tensors[i])
        if piece is not None:
            meta[i], shards[i] = piece[0].to_json(), piece[1]
    return {"shards": shards, "shard_meta": meta}


def _live_dtensors(state: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[Any]]:
    """The target's tensors by path (DTensors say which layout to load into) and its meshes."""
    if state is None:
        return {}, []
    _, tensors = lift_tensors(split_per_rank(state)[0])
    by_path = dict(tensors)
    meshes: list[Any] = []
    for t in by_path.values():
        if sh.is_dtensor(t) and not any(t.device_mesh == m for m in meshes):
            meshes.append(t.device_mesh)
    return by_path, meshes


def _shift_refs(tree: Any, offset: int) -> Any:
    if isinstance(tree, TensorRef):
        return TensorRef(tree.index + offset)
    if isinstance(tree, StatefulRef):
        return StatefulRef(_shift_refs(tree.state, offset))
    if isinstance(tree, dict):
        return type(tree)((k, _shift_refs(v, offset)) for k, v in tree.items())
    if isinstance(tree, list):
        return [_shift_refs(v, offset) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_shift_refs(v, offset) for v in tree)
    return tree


def _fill_per_rank(tree: Any, entries: Mapping[str, Any] | None, source: str) -> Any:
    if isinstance(tree, PerRankRef):
        if entries is None:
            raise _PerRankNeeded()
        if tree.key not in entries:
            raise CorruptCheckpointError(source, f"per-rank entry {tree.key!r} is missing from the part")
        return entries[tree.key]
    if isinstance(tree, StatefulRef):
        return StatefulRef(_fill_per_rank(tree.state, entries, source))
    if isinstance(tree, dict):
        return type(tree)((k, _fill_per_rank(v, entries, source)) for k, v in tree.items())
    if isinstance(tree, list):
        return [_fill_per_rank(v, entries, source) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_fill_per_rank(v, entries, source) for v in tree)
    return tree


class _PerRankNeeded(Exception):
    pass


@dataclass
class StepParts:
    """Every part of one globally committed step, read and verified; nothing restored yet."""

    record: gc.GlobalRecord
    repl: dict[int, torch.Tensor]  # replicated tensors by index, from whichever part holds them
    pieces: dict[int, list[tuple[sh.ShardMeta, torch.Tensor]]]  # DTensor shards by index
    skeleton: bytes
    count: int
    own: tuple[dict[str, Any], list[torch.Tensor], str] | None  # part entries_of's per-rank entries


class PartProblem(CorruptCheckpointError):
    """Part ``rank`` of a step did not read back (or is not the part the record acknowledged)."""

    def __init__(self, rank: int, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.rank = rank


def _check_acknowledged(path: str, rank: int, record: gc.GlobalRecord) -> None:
    """CorruptCheckpointError unless the part at ``path`` is the one ``record`` acknowledged."""
    if gc.part_identity(path, rank) != record.parts[rank]:
        raise CorruptCheckpointError(path, "MANIFEST differs from the one the global record acknowledged")


def read_parts(directory: str, record: gc.GlobalRecord, *, entries_of: int | None, threads: int = 4,
               allow_pickle: tuple[str, ...] = (), device: torch.device | None = None,
               buffer_bytes: int = DEFAULT_LOAD_BUFFER_BYTES) -> StepParts:
    """Read every part of ``record``'s step once; the read verifies every chunk's CRC32C, so no
    separate verification pass reads the data a second time. Onto a CUDA ``device`` each part
    is read through at most ``buffer_bytes`` of pinned memory, copies overlapping reads
    (core/load_pipeline.py). Raises PartProblem for the first part that fails."""
    repl: dict[int, torch.Tensor] = {}
    pieces: dict[int, list[tuple[sh.ShardMeta, torch.Tensor]]] = {}
    skeleton, count, own = b"", 0, None
    for rank in range(record.world_size):
        path = gc.part_path(directory, rank, record.step)
        try:
            _check_acknowledged(path, rank, record)
            m, tree, tensors = read_checkpoint(path, threads, allow_pickle, device, buffer_bytes)
            if m.step != record.step:
                raise CorruptCheckpointError(path, f"part says step {m.step}, the global record says {record.step}")
        except CorruptCheckpointError as e:
            raise PartProblem(rank, e.path, e.reason) from None
        for i, ref in tree["tensors"].items():
            repl[int(i)] = tensors[ref.index]
        for i, ref in tree.get("shards", {}).items():
            pieces.setdefault(int(i), []).append((sh.ShardMeta.from_json(tree["shard_meta"][i], path),
                                                  tensors[ref.index]))
        skeleton, count = tree["skeleton"], int(tree["count"])
        if rank == entries_of:
            own = (tree["per_rank"], tensors, path)
    if sorted(repl | pieces) != list(range(count)):
        raise CorruptCheckpointError(directory, f"step {record.step}: the parts hold {len(repl) + len(pieces)} of "
                                                f"{count} tensors")
    return StepParts(record, repl, pieces, skeleton, count, own)


def restore_parts(directory: str, parts: StepParts, state: Mapping[str, Any] | None,
                  map_location: str | torch.device | None, *, world_size: int,
                  allow_pickle: tuple[str, ...] = ()) -> dict[str, Any]:
    """Reassemble the step from its parts and restore it (all or nothing). Replicated tensors
    come from whichever part holds them; per-rank entries from the part read_parts was told."""
    record, repl, pieces, own = parts.record, dict(parts.repl), parts.pieces, parts.own
    main = unpickle_skeleton(parts.skeleton, allow_pickle, source=directory)
    if pieces:
        live, meshes = _live_dtensors(state)
        for i, p in pieces.items():
            repl[i] = sh.load_sharded(p, live.get(p[0][0].path), meshes, directory)
    combined = [repl[i] for i in range(parts.count)]
    entries = None
    if own is not None:
        entries = {k: _shift_refs(v, parts.count) for k, v in own[0].items()}
        combined += own[1]
    try:
        tree = _fill_per_rank(main, entries, own[2] if own else directory)
    except _PerRankNeeded:
        raise CheckpointError(
            f"step {record.step} in {directory} was saved by {record.world_size} ranks with per-rank entries, "
            f"and this load runs on {world_size}: pass per_rank_of=R to take rank R's entries") from None
    device = torch.device(map_location) if map_location is not None else None
    if device is not None and device.type not in ("cpu", "cuda"):  # CUDA parts were read onto the device
        moved = to_device([t for i, t in enumerate(combined) if i not in pieces], device)
        rest = iter(moved)
        combined = [combined[i] if i in pieces else next(rest) for i in range(len(combined))]
    return restore(state, tree, combined)


def verify_part(directory: str, record: gc.GlobalRecord, rank: int, threads: int = 4) -> None:
    """Raise PartProblem unless ``rank``'s part of ``record`` verifies (every chunk's CRC32C)
    and is the part the record acknowledged."""
    path = gc.part_path(directory, rank, record.step)
    try:
        verify_checkpoint(path, threads)
        _check_acknowledged(path, rank, record)
    except CorruptCheckpointError as e:
        raise PartProblem(rank, e.path, e.reason) from None


def load_global(directory: str | os.PathLike, state: Mapping[str, Any] | None = None,
                map_location: str | torch.device | None = None, step: int | None = None,
                per_rank_of: int | None = None, threads: int = 4,
                allow_pickle: tuple[str, ...] = (),
                load_buffer_bytes: int = DEFAULT_LOAD_BUFFER_BYTES) -> tuple[int, dict[str, Any]]:
    """Load a multi-rank checkpoint in one process, no torch.distributed needed: the newest
    globally committed step (or ``step``) whose every part reads back, falling back past
    corrupt ones (a CorruptCheckpointWarning each). Each part is read once: the read is the
    verification. Per-rank entries: ``per_rank_of``."""
    directory = os.path.abspath(os.fspath(directory))
    device = cuda_device(map_location)
    skipped = []
    for s, rpath in reversed(gc.recorded_steps(directory)):
        if step is not None and s != step:
            continue
        try:
            record = gc.read_record(rpath)
            parts = read_parts(directory, record, entries_of=per_rank_of, threads=threads, allow_pickle=allow_pickle,
                               device=device, buffer_bytes=load_buffer_bytes)
        except CorruptCheckpointError as e:
            skipped.append(str(e))
            warnings.warn(CorruptCheckpointWarning(rpath, s, str(e) if isinstance(e, PartProblem) else e.reason),
                          stacklevel=2)
            continue
        return s, restore_parts(directory, parts, state, map_location, world_size=1, allow_pickle=allow_pickle)
    what = f"step {step}" if step is not None else "globally committed checkpoint"
    raise NoCheckpointError(f"no valid {what} in {directory}" + ("; skipped: " + "; ".join(skipped) if skipped else ""))


@dataclass
class _Outcome:
    step: int
    error: CheckpointError | None
    io: CheckpointIO = NO_CHECKPOINT  # the step's fault points and I/O log (retention passes them too)


class DistributedCheckpointer:
    """One logical checkpointer over the ranks of a process group (module docstring).
    Every rank calls every method, with the same steps."""

    def __init__(self, kind: str, directory: str | os.PathLike, config: CheckpointConfig,
                 process_group: dist.ProcessGroup | None = None) -> None:
        if kind not in INNER_KINDS:
            raise ValueError(f"kind {kind!r} cannot be checkpointed across ranks by ckptlab "
                             f"(multi-rank kinds: {', '.join(INNER_KINDS)})")
        self.kind = kind
        self.directory = os.path.abspath(os.fspath(directory))
        self.config = config
        ranks = None if process_group is None else dist.get_process_group_ranks(process_group)
        timeout = datetime.timedelta(seconds=config.coordination_timeout_s)
        self._timeout = timeout
        # created collectively (by the group's members only); gloo: CPU objects, own timeout
        self._group = dist.new_group(ranks=ranks, backend="gloo", timeout=timeout, use_local_synchronization=True)
        self.rank = dist.get_rank(self._group)
        self.world_size = dist.get_world_size(self._group)
        self._src = dist.get_global_rank(self._group, 0)
        self._inner: Checkpointer = open_local_checkpointer(
            kind, os.path.join(self.directory, gc.rank_dir_name(self.rank)), config.replace(keep_last=0))
        self._io = self._coordinator_io(config)
        if self.rank == 0:  # no record is being written while the ranks open
            gc.remove_record_leftovers(self.directory, self._io)
        self._cv = threading.Condition()
        self._queue: collections.deque[int] = collections.deque()
        self._failures: list[CheckpointError] = []
        self._broken: CheckpointError | None = None
        self._committed: list[int] = []
        self._plans: dict[int, list[int]] = {}
        self._stale: dict[int, dict | None] = {}  # step -> identity of a part on disk before its save
        self._save_errors: dict[int, str] = {}  # step -> why this rank's save() raised
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._coordinate_loop, name="ckptlab-coordinator", daemon=True)
        self._thread.start()

    # --- training thread ------------------------------------------------------------------

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        """Save this rank's part of ``state`` for ``step`` (every rank, same step). Returns as
        the inner kind's save() does; the global commit happens on the coordinator thread.
        Beyond max_inflight unresolved steps it waits for the oldest's global outcome."""
        self._check_open()
        check_step(step)
        self._raise_failure()
        with self._cv:
            while len(self._queue) >= self.config.max_inflight and self._broken is None:
                self._cv.wait()
        self._raise_failure()
        part, owners = part_state(state, self.rank, self.world_size)
        self._plans[step] = owners  # the record notes the partition (rank 0 writes it)
        # A part of this step already on disk (a re-save after resuming from an older step, or
        # a part whose global commit never happened) is not this save's: the coordinator must
        # not take it for the new part while the new one is still being written.
        self._stale[step] = self._existing_identity(step)
        part["save_id"] = os.urandom(16).hex()  # so this save's MANIFEST differs from any older part's
        try:
            self._inner.save(step, part)
        except BaseException as e:
            self._save_errors[step] = f"its save() failed: {type(e).__name__}: {e}"
            raise
        finally:  # queued even when the inner save failed: the other ranks wait for its outcome
            with self._cv:
                self._queue.append(step)
                self._cv.notify_all()

    def _existing_identity(self, step: int) -> dict | None:
        path = gc.part_path(self.directory, self.rank, step)
        if not os.path.isdir(path):
            return None
        try:
            return gc.part_identity(path, self.rank).to_json()
        except CorruptCheckpointError:
            return None

    def barrier(self) -> None:
        self._inner.barrier()

    def guard(self, *optimizers: torch.optim.Optimizer) -> None:
        self._inner.guard(*optimizers)

    def wait(self, timeout: float | None = None) -> bool:
        """True once every issued step is globally committed or failed (False if ``timeout``
        ran out first); raises the first failure. Runs no collective."""
        self._check_open()
        check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._queue and self._broken is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cv.wait(left)
            done = not self._queue
        self._raise_failure()
        return done

    def _raise_failure(self) -> None:
        with self._cv:
            if self._failures:
                raise self._failures.pop(0)
            if self._broken is not None:
                raise self._broken

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"distributed {self.kind} checkpointer for {self.directory} is closed")

    # --- coordinator thread ---------------------------------------------------------------

    def _coordinate_loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if not self._queue:
                    return
                step = self._queue[0]
            outcome = self._coordinate(step) if self._broken is None else _Outcome(step, self._broken)
            with self._cv:
                self._queue.popleft()
                self._plans.pop(step, None)
                if outcome.error is None:
                    self._committed.append(step)
                elif outcome.error is not self._broken:
                    self._failures.append(outcome.error)
                self._cv.notify_all()
            if outcome.error is None:
                self._retain(step, outcome.io)

    def _local_part(self, step: int) -> tuple[dict | None, str]:
        """This rank's part of ``step``: (identity, "") once it is durable, (None, why) if not."""
        path = gc.part_path(self.directory, self.rank, step)
        stale = self._stale.pop(step, None)
        if step in self._save_errors:
            return None, self._save_errors.pop(step)
        deadline = time.monotonic() + self._timeout.total_seconds()
        problem = f"its part was not durable within {self._timeout.total_seconds():g} s"
        while time.monotonic() < deadline:
            try:
                done = self._inner.wait(_WAIT_SLICE_S)
            except CheckpointError as e:
                if getattr(e, "step", None) in (None, step):
                    return None, str(e)
                done = False
            if os.path.isdir(path):
                try:
                    identity = gc.part_identity(path, self.rank).to_json()
                except CorruptCheckpointError as e:
                    return None, str(e)
                if identity != stale:  # the older part of this step is not this save's
                    return identity, ""
            if done:
                problem = f"its part {path} was not committed (the save failed)"
                break
        return None, problem

    def _coordinator_io(self, config: CheckpointConfig) -> WriterIO:
        """The coordinator's fault points and I/O log (core/writer_io.py): the same spec and
        log as the inner checkpointer's, so a power-loss replay sees the record's writes."""
        io = WriterIO.from_config(config)
        io.mark("coordinator", f"rank={self.rank} world={self.world_size} dir={self.directory}")
        return io

    def _coordinate(self, step: int) -> _Outcome:
        cio = self._io.checkpoint(step)
        outcome = self._coordinate_step(step, cio)
        if outcome.error is None:
            cio.mark("global_ack", f"rank={self.rank}")
        return outcome

    def _coordinate_step(self, step: int, cio: CheckpointIO) -> _Outcome:
        identity, problem = self._local_part(step)
        if identity is not None:
            cio.point("after_part_durable")
        gathered: list[Any] = [None] * self.world_size
        try:
            dist.monitored_barrier(group=self._group, timeout=self._timeout, wait_all_ranks=True)
            dist.all_gather_object(gathered, (step, identity, problem), group=self._group)
        except Exception as e:  # a rank died or never arrived: this group is unusable now
            kept = (f"the last globally committed step ({self._committed[-1]}) is kept" if self._committed
                    else "the previous globally committed step is kept")
            self._broken = CheckpointError(
                f"checkpoint of step {step} failed on rank {self.rank}: the ranks did not all arrive within "
                f"{self._timeout.total_seconds():g} s (CheckpointConfig.coordination_timeout_s): "
                f"{type(e).__name__}: {e}; {kept}; this checkpointer "
                f"coordinates no more steps (restart the job)")
            return _Outcome(step, self._broken)
        steps = [g[0] for g in gathered]
        if len(set(steps)) > 1:
            listed = ", ".join(f"rank {r} step {s}" for r, s in enumerate(steps))
            return _Outcome(step, CheckpointError(f"save() was called with different steps on different ranks "
                                                  f"({listed}); every rank must save the same step; "
                                                  f"nothing was committed"))
        failed = [(r, g[2]) for r, g in enumerate(gathered) if g[1] is None]
        if failed:
            why = "; ".join(f"rank {r}: {p}" for r, p in failed)
            return _Outcome(step, CheckpointError(f"checkpoint of step {step} failed on rank(s) "
                                                  f"{', '.join(str(r) for r, _ in failed)} ({why}); the previous "
                                                  f"globally committed checkpoint is kept"))
        cio.point("after_gather")
        result: list[Any] = [None]
        if self.rank == 0:
            result[0] = self._write_record(step, gathered, cio)
            if result[0] is None:
                cio.point("after_record")
                self._retire_records(step, cio)
        try:
            dist.broadcast_object_list(result, src=self._src, group=self._group)
        except Exception as e:
            self._broken = CheckpointError(f"checkpoint of step {step}: rank 0's commit outcome did not arrive on "
                                           f"rank {self.rank}: {type(e).__name__}: {e}; restart the job")
            return _Outcome(step, self._broken)
        cio.point("before_global_ack")
        return _Outcome(step, None if result[0] is None else CheckpointError(result[0]), cio)

    def _write_record(self, step: int, gathered: list[Any], cio: CheckpointIO = NO_CHECKPOINT) -> str | None:
        parts = tuple(gc.PartIdentity(**g[1]) for g in gathered)
        record = gc.GlobalRecord(step, self.world_size, parts, tuple(self._plans.pop(step, ())))
        try:
            gc.write_record(self.directory, record, cio)
        except OSError as e:
            return (f"checkpoint of step {step}: the global commit record could not be made durable: "
                    f"{e.strerror} ({e.filename}); the previous globally committed checkpoint is kept")
        return None

    def _kept(self, committed: int) -> tuple[list[int], set[int]]:
        """(recorded steps up to ``committed``, those retention keeps)."""
        keep_last = self.config.keep_last
        records = [s for s, _ in gc.recorded_steps(self.directory) if s <= committed]
        return records, set(records[-keep_last:]) if keep_last > 0 else set(records)

    def _retire_records(self, committed: int, cio: CheckpointIO = NO_CHECKPOINT) -> None:
        """Rank 0, once ``committed``'s record is durable and before its outcome is broadcast:
        delete the records retention drops (each unlink fsynced). Done before the broadcast so
        that no rank deletes a part while a record still names it (a crash in between would
        leave a record that cannot load). Best effort: a failed cleanup never affects the commit."""
        try:
            records, kept = self._kept(committed)
            for s in records:
                if s not in kept:
                    gc.delete_record(self.directory, s, cio)
        except OSError:
            pass

    def _retain(self, committed: int, cio: CheckpointIO = NO_CHECKPOINT) -> None:
        """After ``committed`` is acknowledged everywhere (rank 0 deleted the dropped records
        before the broadcast, :meth:`_retire_records`): each rank deletes its own parts of the
        steps retention drops, with the parts of older steps that never became globally
        committed, then those of a larger world's ranks it inherits (:meth:`_retain_orphans`).
        Best effort: a failed cleanup never affects the commit."""
        try:
            records, kept = self._kept(committed)
            rank_dir = os.path.join(self.directory, gc.rank_dir_name(self.rank))
            doomed = [s for s, _ in committed_step_dirs(rank_dir) if s < committed and s not in kept]
            if doomed:
                cio.point("during_global_gc")  # records gone (rank 0), parts not yet
            for s in doomed:
                gc.delete_part(rank_dir, s, cio)
            self._retain_orphans(committed, kept, cio)
        except OSError:
            pass

    def _retain_orphans(self, committed: int, kept: set[int], cio: CheckpointIO) -> None:
        """The part directories of ranks beyond this world (``rank_q``, q >= world size: an
        earlier, larger world's, resumed on fewer ranks) belong to no rank of this one, so
        rank ``q % world`` cleans them: under the directory's lock (skipped if someone holds
        it), a crash's leftovers go (commit.recover), then every part older than ``committed``
        that no kept record names (a kept record of a world larger than q still needs its
        part q), and the directory itself once nothing but its lock file is left."""
        for q, orphan in gc.rank_directories(self.directory).items():
            if q < self.world_size or q % self.world_size != self.rank:
                continue
            try:
                lock = DirectoryLock(orphan, cio.io)
            except RuntimeError:
                continue  # a live writer (not a supported layout): leave it alone
            try:
                recover(orphan, cio.io)
                for s, _ in committed_step_dirs(orphan):
                    if s < committed and not (s in kept and self._record_needs(s, q)):
                        gc.delete_part(orphan, s, cio)
                if set(os.listdir(orphan)) <= {LOCK_NAME}:
                    cio.io.remove_tree(orphan)
                    cio.io.fsync_dir(self.directory)
            finally:
                lock.release()

    def _record_needs(self, step: int, rank: int) -> bool:
        """Whether ``step``'s global record names a part of ``rank`` (its world is larger);
        True also when the record cannot be read: nothing is deleted on a doubt."""
        try:
            record = gc.read_record(os.path.join(self.directory, gc.GLOBAL_DIR, gc.record_name(step)))
        except (OSError, CorruptCheckpointError):
            return True
        return record.world_size > rank

    # --- recovery (collective, on the calling thread) -------------------------------------

    def _agree(self, step: int | None, local: Callable[[gc.GlobalRecord], Any]) -> tuple[gc.GlobalRecord, Any] | None:
        """The newest globally committed step (or ``step``) good on every rank: rank 0's list
        of records, then per candidate each rank runs ``local(record)`` (it raises PartProblem
        or CorruptCheckpointError for what it finds wrong) and an all_gather decides; every
        rank falls back together. Returns the record and this rank's ``local`` result."""
        self._inner.latest()  # repairs this rank's own directory (a crash's leftovers) first
        steps: list[Any] = [[s for s, _ in gc.recorded_steps(self.directory)] if self.rank == 0 else None]
        dist.broadcast_object_list(steps, src=self._src, group=self._group)
        candidates = [s for s in steps[0] if step is None or s == step]
        for s in reversed(candidates):
            rpath = os.path.join(self.directory, gc.GLOBAL_DIR, gc.record_name(s))
            problems: list[tuple[int, str]] = []
            record = result = None
            try:
                record = gc.read_record(rpath)
                result = local(record)
            except PartProblem as e:
                problems.append((e.rank, str(e)))
            except CorruptCheckpointError as e:
                problems.append((self.rank, str(e)))
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, problems, group=self._group)
            bad = list(dict.fromkeys(tuple(p) for g in gathered for p in g))  # every rank may find the same part
            if not bad:
                assert record is not None
                return record, result
            reason = "; ".join(f"rank {r}'s part: {p}" for r, p in bad) + "; every rank falls back"
            warnings.warn(CorruptCheckpointWarning(rpath, s, reason), stacklevel=3)
        return None

    def _verify_share(self, record: gc.GlobalRecord) -> None:
        """latest(): this rank verifies parts rank, rank + world, ... (each part read once in all)."""
        for r in range(self.rank, record.world_size, self.world_size):
            verify_part(self.directory, record, r, self.config.reader_threads)

    def latest(self) -> CheckpointInfo | None:
        """The step every rank would load (collective: every rank calls it)."""
        self._check_open()
        agreed = self._agree(None, self._verify_share)
        if agreed is None:
            return None
        record = agreed[0]
        nbytes = sum(sum(e.stat().st_size for e in os.scandir(gc.part_path(self.directory, r, record.step))
                         if e.is_file()) for r in range(record.world_size))
        return CheckpointInfo(record.step, os.path.join(self.directory, gc.GLOBAL_DIR, gc.record_name(record.step)),
                              nbytes, self.kind)

    def load(self, state: Mapping[str, Any] | None = None, map_location: str | torch.device | None = None,
             step: int | None = None, per_rank_of: int | None = None) -> tuple[int, dict[str, Any]]:
        """Load the agreed step on every rank (collective). Every rank reads every part once
        (the read verifies it), then all agree before anything is restored. Per-rank entries
        are part ``rank``'s when the world size matches the checkpoint's, else ``per_rank_of``'s."""
        self._check_open()
        device = cuda_device(map_location)

        def read(record: gc.GlobalRecord) -> StepParts:
            entries_of = per_rank_of
            if entries_of is None and record.world_size == self.world_size:
                entries_of = self.rank
            return read_parts(self.directory, record, entries_of=entries_of, threads=self.config.reader_threads,
                              allow_pickle=self.config.allow_pickle, device=device,
                              buffer_bytes=self.config.load_buffer_bytes)

        agreed = self._agree(step, read)
        if agreed is None:
            what = f"step {step}" if step is not None else "globally committed checkpoint"
            raise NoCheckpointError(f"no {what} valid on every rank in {self.directory}")
        record, parts = agreed
        return record.step, restore_parts(self.directory, parts, state, map_location, world_size=self.world_size,
                                          allow_pickle=self.config.allow_pickle)

    def stats(self) -> dict[str, Any]:
        s = dict(self._inner.stats())
        with self._cv:
            s.update(kind=self.kind, distributed=True, rank=self.rank, world_size=self.world_size,
                     globally_committed=len(self._committed),
                     last_globally_committed_step=self._committed[-1] if self._committed else None,
                     coordinating=len(self._queue))
        return s

    def close(self) -> None:
        """Wait for every issued step's global outcome, stop the coordinator, close the inner
        checkpointer, raise a pending failure."""
        if self._closed:
            return
        self._closed = True
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join()
        self._io.close()
        self._inner.close()
        with self._cv:
            if self._failures:
                raise self._failures.pop(0)

    def __enter__(self) -> DistributedCheckpointer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def committed_parts(directory: str, rank: int) -> list[int]:
    """Steps of rank ``rank``'s committed parts (for tools and tests)."""
    return [s for s, _ in committed_step_dirs(os.path.join(directory, gc.rank_dir_name(rank)))]


