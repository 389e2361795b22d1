"""Snapshots that complete after save() returns (the low-memory mode; CheckFreq's trick, docs/BACKGROUND.md §4).

In the default ``sync`` mode save() copies every tensor to the host before it returns. The
two modes here cut the stall down to enqueueing the copies:

``deferred`` (low GPU memory): CUDA tensors are copied device-to-host on a side stream into
pinned buffers kept across saves, CPU tensors by a background thread into host buffers.
save() returns once the copies are enqueued, and the next forward/backward run while they
proceed. The state must not change until ``barrier()``; ``checkpointer.guard(optimizer)``
puts it in front of every ``optimizer.step()``. On the GPU the barrier is a stream
dependency (the optimizer's kernels wait for the copies, the host does not); CPU tensors
make it wait for their copy.

The snapshot is judged and submitted as soon as its copies complete, not at the barrier, so
time to durable does not wait for the next ``optimizer.step()``. The judgement: a tensor
whose version counter moved before its copy completed may be half in the copy, so that
checkpoint fails with ``SnapshotTornError``; a change after the copy completed cannot reach
the copy, so it is harmless and the checkpoint holds the values of save(). CPU regions are
judged one by one right after their copy, on the copy thread. CUDA copies are judged after
``done.synchronize()``: PyTorch moves a version counter on the host when the op is
enqueued, so every op enqueued before the D2H ended has moved it by then. If barrier()
comes first it judges them (a change enqueued before it is not ordered after the D2H);
ops enqueued after it are ordered after the D2H by the stream dependency, so their
version moves are not counted. ``PendingSnapshot.lock`` orders the two verdicts.

What cannot be seen: PyTorch moves a version counter when an in-place op *returns*, so an
unguarded change that is still running when the copy completes (started before, returned
after the check) is not counted, and neither are writes that bypass version counters
(``tensor.data``). Both break the contract (no change before the barrier); guard(optimizer)
rules them out for optimizer steps.

``gpu`` (PCcheck's GPU buffer): CUDA tensors are copied into a GPU snapshot buffer on the
current stream (device to device, a few ms); the copy to the host runs on the side stream.
No barrier is needed: later kernels on the stream run after the copy. Costs GPU memory equal
to the state's CUDA tensors. CPU tensors are copied inside save().

Either way a background thread (``ckptlab-snapshot``, one per checkpointer) waits for the
copies, judges them and hands the host buffers to the engine; a failure surfaces at the
next save(), wait() or close().
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ckptlab.core.errors import SnapshotTornError
from ckptlab.core.state import (BufferCache, CapturedState, PinnedHostCache, Region, StoragePiece, StoragePlan,
                                copy_pieces, host_region, lay_out)
from ckptlab.profiling.phases import phase, record


@dataclass
class _Copy:
    """One region's copy: each storage of the state is copied once, however many tensors use it."""

    region: Region             # its pieces are the live memory, or the GPU snapshot buffer's
    dst: torch.Tensor          # host buffer the engine reads
    versions: list[tuple[str, torch.Tensor, int]]  # the state's tensors in it and _version at save()

    @property
    def nbytes(self) -> int:
        return self.dst.numel()

    def torn(self) -> list[str]:
        return [name for name, t, version in self.versions if t._version != version]


@dataclass
class _DeviceCopies:
    start: torch.cuda.Event
    done: torch.cuda.Event
    nbytes: int


@dataclass
class PendingSnapshot:
    """One save()'s copies in flight, and the thread that hands them to the engine."""

    step: int
    captured: CapturedState
    cpu_copies: list[_Copy]                 # run by the thread (deferred mode)
    cuda_copies: list[_Copy]                # enqueued on side streams
    devices: dict[torch.device, _DeviceCopies]
    host_ready: threading.Event = field(default_factory=threading.Event)  # CPU tensors copied and checked
    released: threading.Event = field(default_factory=threading.Event)    # barrier() passed
    torn: list[str] = field(default_factory=list)  # tensors changed before their copy completed
    checked: bool = False  # the thread judged the finished copies; changes after it are harmless
    lock: threading.Lock = field(default_factory=threading.Lock)  # orders the verdict and barrier()
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)   # handed over, or failed


def _versions(region: Region) -> list[tuple[str, torch.Tensor, int]]:
    return [(name, t, t._version) for name, t in region.members]


class Snapshotter:
    """Takes deferred/gpu snapshots (CheckpointConfig.snapshot) and submits them with
    ``submit(step, captured)``; CUDA tensors land in the checkpointer's `pinned` cache."""

    def __init__(self, mode: str, submit: Callable[[int, CapturedState], None], pinned: PinnedHostCache) -> None:
        self.mode = mode
        self._submit = submit
        self._host = BufferCache("cpu")
        self._pinned = pinned
        self._gpu = BufferCache(None)                 # gpu mode: same device as the tensor
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._last_done: dict[torch.device, torch.cuda.Event] = {}
        self._pending: PendingSnapshot | None = None
        self._queue: queue.SimpleQueue[PendingSnapshot | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self.host_wait_s = 0.0  # time the caller blocked in barrier()/settle()

    @property
    def pending(self) -> PendingSnapshot | None:
        return self._pending

    @property
    def host_bytes(self) -> int:
        return self._host.nbytes + self._pinned.nbytes

    @property
    def gpu_bytes(self) -> int:
        return self._gpu.nbytes

    def take(self, step: int, skeleton: bytes, plan: StoragePlan) -> PendingSnapshot:
        """Start copying the regions of `plan` off the state; returns once the copies are enqueued.

        The previous snapshot must be settled (its buffers, one per region name, are reused)."""
        if self._pending is not None:
            raise RuntimeError("the previous snapshot is not settled")
        host: list[torch.Tensor] = []
        cpu_copies: list[_Copy] = []
        by_device: dict[torch.device, list[tuple[Region, torch.Tensor]]] = {}
        for region in plan.regions:
            if region.device.type == "cuda":
                dst = self._pinned.buffer_for(region)
                by_device.setdefault(region.device, []).append((region, dst))
            elif region.device.type == "cpu":
                dst = self._host.buffer_for(region)
                cpu_copies.append(_Copy(region, dst, _versions(region)))
            else:  # another accelerator: no stream API here, copied now as capture() does
                dst = host_region(region, None, set())
            host.append(dst)
        captured = lay_out(skeleton, plan, host)
        cuda_copies: list[_Copy] = []
        devices = {dev: self._enqueue(step, dev, items, cuda_copies) for dev, items in by_device.items()}
        p = PendingSnapshot(step, captured, cpu_copies, cuda_copies, devices)
        if self.mode == "gpu":  # CPU tensors now; the GPU copies need no barrier
            self._copy_cpu(p)
            p.released.set()
        if self._worker is None:  # a daemon: a process that never closes the checkpointer still exits
            self._worker = threading.Thread(target=self._serve, name="ckptlab-snapshot", daemon=True)
            self._worker.start()
        self._pending = p
        self._queue.put(p)
        return p

    def _serve(self) -> None:
        while (p := self._queue.get()) is not None:
            self._finish(p)

    def _enqueue(self, step: int, dev: torch.device, items: list[tuple[Region, torch.Tensor]],
                 out: list[_Copy]) -> _DeviceCopies:
        current = torch.cuda.current_stream(dev)
        side = self._streams.get(dev)
        if side is None:
            side = self._streams[dev] = torch.cuda.Stream(dev)
        sources: list[tuple[Region, torch.Tensor, list[tuple[str, torch.Tensor, int]]]] = []
        if self.mode == "gpu":
            with phase("snapshot", step=step, nbytes=sum(d.numel() for _, d in items)):
                previous = self._last_done.get(dev)
                if previous is not None:  # the last D2H read these buffers: let it finish first
                    current.wait_event(previous)
                for region, dst in items:
                    buf = self._gpu.buffer_for(region)
                    copy_pieces(buf, region)  # on the current stream, after the kernels that produced it
                    private = Region(region.name, region.device, region.nbytes, [StoragePiece(buf, 0)], [])
                    sources.append((private, dst, []))  # private: nothing can change it before the D2H
        else:
            sources = [(region, dst, _versions(region)) for region, dst in items]
        side.wait_stream(current)
        start = torch.cuda.Event(enable_timing=True, blocking=True)
        done = torch.cuda.Event(enable_timing=True, blocking=True)
        nbytes = 0
        with torch.cuda.stream(side):
            start.record(side)
            for region, dst, versions in sources:
                for piece in region.pieces:
                    piece.source.record_stream(side)  # its memory is not reused before the side stream read it
                copy_pieces(dst, region, non_blocking=True)
                nbytes += dst.numel()
                out.append(_Copy(region, dst, versions))
            done.record(side)
        self._last_done[dev] = done
        return _DeviceCopies(start, done, nbytes)

    @staticmethod
    def _copy_cpu(p: PendingSnapshot) -> None:
        """Copy each CPU region and judge it at once: a change that moved a version counter
        before its region's copy ended may be in the copy (torn); a later one cannot be."""
        try:
            if p.cpu_copies:
                with phase("snapshot", step=p.step, nbytes=sum(c.nbytes for c in p.cpu_copies)):
                    for c in p.cpu_copies:
                        copy_pieces(c.dst, c.region)
                        p.torn.extend(c.torn())
        finally:
            p.host_ready.set()

    def _finish(self, p: PendingSnapshot) -> None:
        try:
            if not p.host_ready.is_set():
                self._copy_cpu(p)
            for d in p.devices.values():
                d.done.synchronize()
                t_end = time.monotonic_ns()
                # the copy's span on the GPU, placed on the host clock where it ended
                record("d2h", t_end - int(d.start.elapsed_time(d.done) * 1e6), t_end, step=p.step, nbytes=d.nbytes)
            with p.lock:  # the copies are complete: judge them now, not at the next barrier()
                if not p.released.is_set():  # else barrier() judged the CUDA copies: changes after it wait for them
                    p.torn.extend(name for c in p.cuda_copies for name in c.torn())
                p.checked = True
                torn = list(p.torn)
            if torn:
                raise SnapshotTornError(p.step, torn)
            self._submit(p.step, p.captured)
        except BaseException as e:  # handed to the training thread at the next call
            p.error = e
        finally:
            p.host_ready.set()
            p.finished.set()

    def barrier(self) -> None:
        """Order the next change of the state after the pending snapshot's copies."""
        p = self._pending
        if p is None or p.released.is_set():
            return
        t0 = time.perf_counter()
        with phase("snapshot_barrier", step=p.step):
            p.host_ready.wait()  # CPU regions: copied and judged by the thread
            with p.lock:
                if not p.checked:  # CUDA copies not judged yet: a change enqueued before here may race them
                    p.torn.extend(name for c in p.cuda_copies for name in c.torn())
                for dev, d in p.devices.items():
                    torch.cuda.current_stream(dev).wait_event(d.done)
                p.released.set()
        self.host_wait_s += time.perf_counter() - t0

    def settle(self, timeout: float | None = None) -> bool:
        """Barrier, then wait (at most ``timeout`` seconds) until the pending snapshot is
        handed to the engine; raise its failure. False if it was not handed over in time."""
        p = self._pending
        if p is None:
            return True
        self.barrier()
        t0 = time.perf_counter()
        finished = p.finished.wait(timeout)
        self.host_wait_s += time.perf_counter() - t0
        if not finished:
            return False
        self._pending = None
        if p.error is not None:
            raise p.error
        return True

    def close(self) -> None:
        """Settle, then stop the worker thread."""
        try:
            self.settle()
        finally:
            if self._worker is not None:
                self._queue.put(None)
                self._worker.join()
                self._worker = None
