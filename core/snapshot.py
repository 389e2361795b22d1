"""Snapshots that complete after save() returns (the low-memory mode; CheckFreq's trick, docs/BACKGROUND.md §4).

In the default ``sync`` mode save() copies every tensor to the host before it returns. The
two modes here cut the stall down to enqueueing the copies:

``deferred`` (low GPU memory): save() lifts the tensors out of the state, notes their
version counters and returns; a background thread copies them straight into the engine's
staging chunks (core/staging_fill.py: one copy, chunk by chunk, each chunk written as soon as
its bytes are there), CUDA tensors device-to-host on a side stream into the page-locked
staging, CPU tensors by the thread itself. The next forward/backward run while they proceed. The state must not change until ``barrier()``; ``checkpointer.guard(optimizer)``
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
current stream (device to device, a few ms); the chunked copy into staging runs from there
on the side stream. No barrier is needed: later kernels on the stream run after the copy.
Costs GPU memory equal to the state's CUDA tensors. CPU tensors are copied inside save().

Either way a background thread (``ckptlab-snapshot``, one per checkpointer) plans the
storages, fills the staging chunks, judges the copies and then seals the checkpoint (the
engine commits it once durable) or aborts it (torn); a failure surfaces at the next save(),
wait() or close(). Host memory is the staging pool: no host copy of the state is kept.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ckptlab import _engine
from ckptlab.core.errors import SnapshotTornError
from ckptlab.core.staging_fill import ChunkFiller, StagingWindow, stream_bytes, stream_extents
from ckptlab.core.state import BufferCache, LiftedState, Region, StoragePlan, host_region, plan_storages, stream_layout
from ckptlab.profiling.phases import phase, record

# opens the engine's stream for (step, layout meta, total bytes): the engine and the stream id
OpenStream = Callable[[int, dict[str, Any], int], tuple[_engine.Engine, int]]


# "auto" takes gpu mode only if the snapshot buffer leaves this share of the free memory
# (and at least GPU_HEADROOM_BYTES) to the training's own allocations and fragmentation.
GPU_HEADROOM_SHARE = 0.25
GPU_HEADROOM_BYTES = 2 << 30


def choose_mode(cuda_bytes: dict[torch.device, int], free_bytes: dict[torch.device, int]) -> str:
    """The mode "auto" means for a state with `cuda_bytes` per device, given each device's
    free memory: "gpu" (no barrier, the shortest stall) where every device's buffer fits with
    headroom, else "deferred" (no GPU memory). A CPU-only state gets "deferred"."""
    if not cuda_bytes:
        return "deferred"
    for dev, need in cuda_bytes.items():
        free = free_bytes.get(dev, 0)
        if need + max(GPU_HEADROOM_BYTES, int(free * GPU_HEADROOM_SHARE)) > free:
            return "deferred"
    return "gpu"


def usable_gpu_bytes(dev: torch.device) -> int:
    """Memory a new allocation on `dev` can get: the driver's free memory plus what torch's
    caching allocator holds reserved but unused (it hands those blocks out, or releases
    them and retries, before it fails)."""
    free = torch.cuda.mem_get_info(dev)[0]
    return free + max(0, torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))


def resolve_mode(tensors: list[tuple[str, torch.Tensor]]) -> str:
    """choose_mode() for the live state: its CUDA storages' bytes and each device's usable memory."""
    need: dict[torch.device, dict[int, int]] = {}
    for _, t in tensors:
        if t.device.type == "cuda":
            st = t.untyped_storage()
            need.setdefault(t.device, {})[st.data_ptr()] = st.nbytes()
    cuda_bytes = {dev: sum(s.values()) for dev, s in need.items()}
    return choose_mode(cuda_bytes, {dev: usable_gpu_bytes(dev) for dev in cuda_bytes})


def copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """One host copy of snapshot bytes (the seam tests hold to order a change before it)."""
    dst.copy_(src)


@dataclass
class _DeviceCopies:
    start: torch.cuda.Event
    done: torch.cuda.Event
    nbytes: int


@dataclass
class PendingSnapshot:
    """One save()'s state, its copies in flight, and the verdict on them."""

    step: int
    skeleton: bytes | LiftedState  # a frozen lifted state is pickled by the thread
    tensors: list[tuple[str, torch.Tensor]]
    versions: dict[int, int]  # id(tensor) -> its _version at save()
    plan: StoragePlan | None  # planned in save() (first save, gpu mode), else by the thread
    skeleton_checked: bool = False  # save() checked the pickle loads back; else the thread does
    private: dict[int, torch.Tensor] = field(default_factory=dict)  # region index -> its copy taken in save()
    ready: dict[torch.device, torch.cuda.Event] = field(default_factory=dict)  # current streams at save()
    devices: dict[torch.device, _DeviceCopies] = field(default_factory=dict)
    cuda_regions: list[Region] = field(default_factory=list)  # copied live from the GPU (deferred)
    host_ready: threading.Event = field(default_factory=threading.Event)  # CPU copied and judged, CUDA enqueued
    released: threading.Event = field(default_factory=threading.Event)    # barrier() passed
    torn: list[str] = field(default_factory=list)  # tensors changed before their copy completed
    checked: bool = False  # the thread judged the finished copies; changes after it are harmless
    lock: threading.Lock = field(default_factory=threading.Lock)  # orders the verdict and barrier()
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)   # sealed or aborted, or failed

    def changed(self, region: Region) -> list[str]:
        return [name for name, t in region.members if t._version != self.versions[id(t)]]


class Snapshotter:
    """Takes deferred/gpu snapshots (CheckpointConfig.snapshot) and streams them into the
    engine through ``open_stream``."""

    def __init__(self, mode: str, open_stream: OpenStream, check_skeleton: Callable[[bytes], None]) -> None:
        self.mode = mode
        self._open_stream = open_stream
        self._check_skeleton = check_skeleton  # raises if the pickled objects would not load
        self._host = BufferCache("cpu")   # gpu mode: CPU regions copied in save()
        self._gpu = BufferCache(None)     # gpu mode: same device as the tensor
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._window: StagingWindow | None = None
        self._pending: PendingSnapshot | None = None
        self._queue: queue.SimpleQueue[PendingSnapshot | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self.host_wait_s = 0.0  # time the caller blocked in barrier()/settle()

    @property
    def pending(self) -> PendingSnapshot | None:
        return self._pending

    @property
    def host_bytes(self) -> int:
        """Host memory of the snapshots' own (gpu mode's copies of CPU tensors); staging aside."""
        return self._host.nbytes

    @property
    def gpu_bytes(self) -> int:
        return self._gpu.nbytes

    @property
    def pinned_staging_bytes(self) -> int:
        """Staging memory page-locked for CUDA copies (0 until a device copy needed it)."""
        return self._window.nbytes if self._window is not None and self._window.registered else 0

    def take(self, step: int, skeleton: bytes | LiftedState, tensors: list[tuple[str, torch.Tensor]],
             plan: StoragePlan | None = None, skeleton_checked: bool = False) -> PendingSnapshot:
        """Note the state's versions and start its snapshot; returns at once in deferred mode
        (the thread pickles a frozen LiftedState, checks the skeleton, plans and copies),
        after the device-to-device copies in gpu mode.

        The previous snapshot must be settled (its buffers are reused)."""
        if self._pending is not None:
            raise RuntimeError("the previous snapshot is not settled")
        if self.mode == "auto":  # decided once: buffers and the barrier's meaning stay the same
            self.mode = resolve_mode(tensors)
        versions = {id(t): t._version for _, t in tensors}
        on_host = all(t.is_cpu for _, t in tensors)  # the common CPU case without a torch.device per tensor
        if plan is None and (self.mode == "gpu" or not on_host and
                             any(t.device.type not in ("cpu", "cuda") for _, t in tensors)):
            plan = plan_storages(tensors)
        p = PendingSnapshot(step, skeleton, tensors, versions, plan, skeleton_checked=skeleton_checked)
        if plan is not None:
            for i, region in enumerate(plan.regions):
                if region.device.type not in ("cpu", "cuda"):  # no stream API here: copied now, as capture() does
                    p.private[i] = host_region(region, None, set())
        if self.mode == "gpu":
            self._copy_private(p)
            p.released.set()
        elif not on_host:  # the copies start after the kernels enqueued before save()
            p.ready = _current_stream_events({t.device for _, t in tensors if t.is_cuda})
        if self._worker is None:  # a daemon: a process that never closes the checkpointer still exits
            self._worker = threading.Thread(target=self._serve, name="ckptlab-snapshot", daemon=True)
            self._worker.start()
        self._pending = p
        self._queue.put(p)
        return p

    def _copy_private(self, p: PendingSnapshot) -> None:
        """gpu mode, in save(): every region into a buffer of the snapshot's own, CUDA ones
        device to device on the current stream, CPU ones on the host; nothing can change them."""
        assert p.plan is not None
        cuda_bytes = sum(r.nbytes for r in p.plan.regions if r.device.type == "cuda")
        with phase("snapshot", step=p.step, nbytes=cuda_bytes):
            for i, region in enumerate(p.plan.regions):
                if i in p.private or region.device.type not in ("cpu", "cuda"):
                    continue
                buf = (self._gpu if region.device.type == "cuda" else self._host).buffer_for(region)
                for piece in region.pieces:
                    if region.device.type == "cuda":  # on the current stream, after the kernels that produced it
                        buf[piece.offset:piece.offset + piece.source.numel()].copy_(piece.source)
                    else:
                        copy_into(buf[piece.offset:piece.offset + piece.source.numel()], piece.source)
                p.private[i] = buf
        p.ready = _current_stream_events({r.device for r in p.plan.regions if r.device.type == "cuda"})

    def _serve(self) -> None:
        while (p := self._queue.get()) is not None:
            self._run(p)

    def _run(self, p: PendingSnapshot) -> None:
        engine = stream = None
        sealed = False
        try:
            if isinstance(p.skeleton, LiftedState):  # nothing training does can change a frozen tree
                p.skeleton = p.skeleton.skeleton()
            if not p.skeleton_checked:  # before anything is written: such a step never reaches the disk
                self._check_skeleton(p.skeleton)
            plan = p.plan if p.plan is not None else plan_storages(p.tensors)
            offsets, total, meta = stream_layout(p.skeleton, plan)
            sources = [[(0, p.private[i])] if i in p.private else [(pc.offset, pc.source) for pc in r.pieces]
                       for i, r in enumerate(plan.regions)]
            p.cuda_regions = [r for i, r in enumerate(plan.regions) if r.device.type == "cuda" and i not in p.private]
            devices = {src.device for pieces in sources for _, src in pieces if src.device.type == "cuda"}
            engine, stream = self._open_stream(p.step, meta, total)
            window = self._window_for(engine)
            if devices:
                # a new thread's current device is cuda:0, whatever the training thread set: the
                # stream contexts below would switch back to it and open a context on GPU 0 for
                # every rank of a torchrun job, so this thread works on the state's device
                home = min(devices, key=lambda d: d.index or 0)
                torch.cuda.set_device(home)
                window.register_for_cuda(home)
            sides = {dev: self._side_stream(dev, p.ready[dev]) for dev in devices}
            for pieces in sources:
                for _, src in pieces:
                    if src.device.type == "cuda":  # its memory is not reused before the side stream read it
                        src.record_stream(sides[src.device])
            starts = {dev: _timing_event(side) for dev, side in sides.items()}
            skeleton = torch.frombuffer(bytearray(p.skeleton), dtype=torch.uint8) if p.skeleton else torch.empty(0, dtype=torch.uint8)
            extents = stream_extents(skeleton, sources, offsets)

            def region_done(i: int) -> None:
                region = plan.regions[i]
                if region.device.type == "cpu" and i not in p.private:  # judged now: a later change cannot reach it
                    p.torn.extend(p.changed(region))

            filler = ChunkFiller(engine, stream, window, extents, [o + r.nbytes for o, r in zip(offsets, plan.regions)],
                                 sides, copy_into, region_done)
            try:
                self._fill(p, filler, stream_bytes(total))
            finally:
                # the barrier orders the next change after every copy enqueued so far
                p.devices = {dev: _DeviceCopies(starts[dev], _timing_event(side),
                                                sum(s.numel() for pieces in sources for _, s in pieces
                                                    if s.device == dev)) for dev, side in sides.items()}
                p.host_ready.set()
            filler.drain()
            for d in p.devices.values():
                d.done.synchronize()
                t_end = time.monotonic_ns()
                # the copy's span on the GPU, placed on the host clock where it ended
                record("d2h", t_end - int(d.start.elapsed_time(d.done) * 1e6), t_end, step=p.step, nbytes=d.nbytes)
            with p.lock:  # the copies are complete: judge them now, not at the next barrier()
                if not p.released.is_set():  # else barrier() judged the CUDA copies: changes after it wait for them
                    p.torn.extend(name for r in p.cuda_regions for name in p.changed(r))
                p.checked = True
                torn = list(p.torn)
            if torn:
                raise SnapshotTornError(p.step, torn)
            engine.seal(stream)
            sealed = True
        except BaseException as e:  # handed to the training thread at the next call
            p.error = e
            if stream is not None and not sealed:
                engine.abort(stream, f"snapshot of step {p.step} failed: {e}")
        finally:
            p.host_ready.set()
            p.tensors, p.plan = [], None  # the state's memory is no longer held here
            if p.checked:
                p.cuda_regions = []
            p.finished.set()

    @staticmethod
    def _fill(p: PendingSnapshot, filler: ChunkFiller, nbytes: int) -> None:
        """Copy the snapshot into staging (a seam: tests hold a step's copy here)."""
        with phase("snapshot", step=p.step, nbytes=nbytes):
            filler.fill(nbytes)

    def _side_stream(self, dev: torch.device, ready: torch.cuda.Event) -> torch.cuda.Stream:
        side = self._streams.get(dev)
        if side is None:
            side = self._streams[dev] = torch.cuda.Stream(dev)
        side.wait_event(ready)
        return side

    def _window_for(self, engine: _engine.Engine) -> StagingWindow:
        if self._window is None:  # one engine per checkpointer
            self._window = StagingWindow(engine)
        return self._window

    def barrier(self) -> None:
        """Order the next change of the state after the pending snapshot's copies."""
        p = self._pending
        if p is None or p.released.is_set():
            return
        t0 = time.perf_counter()
        with phase("snapshot_barrier", step=p.step):
            p.host_ready.wait()  # CPU regions: copied and judged by the thread; CUDA ones enqueued
            with p.lock:
                if not p.checked:  # CUDA copies not judged yet: a change enqueued before here may race them
                    p.torn.extend(name for r in p.cuda_regions for name in p.changed(r))
                for dev, d in p.devices.items():
                    torch.cuda.current_stream(dev).wait_event(d.done)
                p.released.set()
        self.host_wait_s += time.perf_counter() - t0

    def settle(self, timeout: float | None = None) -> bool:
        """Barrier, then wait (at most ``timeout`` seconds) until the pending snapshot is
        sealed (or failed); raise its failure. False if it was not done in time."""
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
        """Settle, then stop the worker thread and unregister the staging memory."""
        try:
            self.settle()
        finally:
            if self._worker is not None:
                self._queue.put(None)
                self._worker.join()
                self._worker = None
            if self._window is not None:
                self._window.close()


def _current_stream_events(devices: set[torch.device]) -> dict[torch.device, torch.cuda.Event]:
    """An event on each device's current stream: where a side stream's copies may start."""
    events = {}
    for dev in devices:
        events[dev] = torch.cuda.Event()
        events[dev].record(torch.cuda.current_stream(dev))
    return events


def _timing_event(stream: torch.cuda.Stream) -> torch.cuda.Event:
    ev = torch.cuda.Event(enable_timing=True, blocking=True)
    ev.record(stream)
    return ev
