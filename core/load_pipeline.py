"""Verified reads in batches; a load to a CUDA device copies batch k while batch k+1 is read.

Every chunk goes through ``_engine.read_verified`` (parallel, CRC32C-checked before a byte is
copied out). The chunks are split into batches of at most half the load buffer. A target that
lives on the host is read straight into (its "copy" is a no-op); a staged target (a fresh CUDA
storage) is read into one of two reusable host slots, pinned on CUDA, and copied from there with
``non_blocking`` copies on a side stream. Those copies are DMA transfers that need no CPU, so
they run while this thread is inside the next batch's ``read_verified`` (which releases the GIL):
the overlap needs no Python thread, and Ctrl-C still interrupts the read. A slot is read into
again only after the event recorded behind its last copy has completed.

The first batch with a bad chunk raises ``CorruptCheckpointError`` (the lowest bad chunk of that
batch, as one big read reports it). Only the targets, which the caller allocated fresh, have
been written by then: live state is changed later, by the restore plan, after every chunk
verified.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ckptlab import _engine
from ckptlab.core.errors import CorruptCheckpointError
from ckptlab.core.manifest import Manifest
from ckptlab.profiling.phases import add_engine_records, phase, record, recording

ReadTask = tuple[str, int, int, int, int, list[tuple[int, int, int]]]  # read_verified's


@dataclass(frozen=True)
class Target:
    """A 1-D contiguous uint8 `buffer` that receives stream bytes from `stream_offset` on.

    `staged` targets are filled through the host slots and a copy (a CUDA buffer; host
    buffers only in tests of the staging itself); the others are read into directly.
    """

    stream_offset: int
    buffer: torch.Tensor
    staged: bool = False


@dataclass
class LoadStats:
    """What one read_into did: batches read, host staging held, bytes copied from it."""

    batches: int = 0
    staged_bytes: int = 0
    copied_bytes: int = 0


@dataclass
class _Batch:
    # read tasks whose pieces are (chunk offset, destination base or None: the slot, offset, nbytes)
    tasks: list[tuple] = field(default_factory=list)
    # (slot offset, target index, target offset, nbytes): contiguous runs copied as one
    copies: list[list[int]] = field(default_factory=list)
    slot_bytes: int = 0


def plan_batches(chunk_sizes: list[int], batch_bytes: int | None) -> list[range]:
    """Consecutive chunk ranges of at most `batch_bytes` each (a bigger chunk alone); None: one."""
    if batch_bytes is None or not chunk_sizes:
        return [range(len(chunk_sizes))]
    out, start, size = [], 0, 0
    for i, n in enumerate(chunk_sizes):
        if i > start and size + n > batch_bytes:
            out.append(range(start, i))
            start, size = i, 0
        size += n
    out.append(range(start, len(chunk_sizes)))
    return out


def _chunk_pieces(m: Manifest, targets: list[Target]) -> list[list[tuple[int, int, int, int]]]:
    """Per chunk: (chunk offset, target index, target offset, nbytes) of every target byte in it."""
    order = sorted(range(len(targets)), key=lambda t: targets[t].stream_offset)
    out = []
    r = 0
    for i, c in enumerate(m.chunks):
        begin = m.chunk_stream_offset(i)
        end = begin + c.nbytes
        while r < len(order) and _end(targets[order[r]]) <= begin:
            r += 1
        pieces = []
        k = r
        while k < len(order) and targets[order[k]].stream_offset < end:
            t = targets[order[k]]
            lo, hi = max(t.stream_offset, begin), min(_end(t), end)
            if hi > lo:
                pieces.append((lo - begin, order[k], lo - t.stream_offset, hi - lo))
            k += 1
        out.append(pieces)
    return out


def _end(t: Target) -> int:
    return t.stream_offset + t.buffer.numel()


def _plan(path: str, m: Manifest, targets: list[Target], batch_bytes: int | None) -> list[_Batch]:
    """Read tasks per batch; a staged piece lands at the next free byte of the batch's slot
    (its destination base is None until the slot is known)."""
    pieces = _chunk_pieces(m, targets)
    batches = []
    for chunk_range in plan_batches([c.nbytes for c in m.chunks], batch_bytes):
        b = _Batch()
        for i in chunk_range:
            c = m.chunks[i]
            out: list[tuple[int, int | None, int, int]] = []
            for coff, ti, toff, n in pieces[i]:
                t = targets[ti]
                if not t.staged:
                    out.append((coff, t.buffer.data_ptr(), toff, n))
                    continue
                out.append((coff, None, b.slot_bytes, n))
                last = b.copies[-1] if b.copies else None
                if last and last[1] == ti and last[0] + last[3] == b.slot_bytes and last[2] + last[3] == toff:
                    last[3] += n  # the same target continues in the next chunk: one copy
                else:
                    b.copies.append([b.slot_bytes, ti, toff, n])
                b.slot_bytes += n
            b.tasks.append((os.path.join(path, m.files[c.file].name), c.offset, c.nbytes, c.crc, i, out))
        batches.append(b)
    return batches


def run_reads(path: str, m: Manifest, tasks: list[ReadTask], threads: int) -> _engine.ReadResult:
    """One read_verified call; its records go to an active trace, its first bad chunk raises."""
    trace = recording()  # a ckptlab.profiling trace session wants the read/verify records
    result = _engine.read_verified(tasks, threads=threads, trace=trace, ckpt_id=0, step=m.step)
    if trace:
        add_engine_records(result["records"], result["thread_names"])
    if result["failures"]:
        f = sorted(result["failures"], key=lambda x: x["chunk"])[0]
        more = len(result["failures"]) - 1
        raise CorruptCheckpointError(
            f["path"] or path,
            f"chunk {f['chunk']} at offset {f['offset']}: {f['kind']}: {f['detail']}"
            + (f" (and {more} more bad chunks)" if more else ""),
        )
    return result


class _Slots:
    """Two host slots the staged pieces are read into, and the copies out of them.

    On CUDA: pinned slots, copies on a side stream that first waits for the current one (the
    fresh targets' memory may have been in use there), one event per slot; finish() waits for
    the copies, records one `h2d` per batch and makes the current stream wait for them.
    Elsewhere (tests of the staging): pageable slots and synchronous copies.
    """

    def __init__(self, nbytes: int, count: int, device: torch.device, step: int) -> None:
        self.cuda = device.type == "cuda"
        self.step = step
        self.buffers = [torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.cuda) for _ in range(count)]
        self.done: list[Any] = [None] * count
        self.spans: list[tuple[Any, Any, int]] = []
        if self.cuda:
            self.stream = torch.cuda.Stream(device)
            # the origin of the CUDA event clock on the host clock (the fresh stream is idle)
            self.origin = torch.cuda.Event(enable_timing=True)
            self.origin.record(self.stream)
            self.origin.synchronize()
            self.origin_ns = time.monotonic_ns()
            self.stream.wait_stream(torch.cuda.current_stream(device))

    def slot(self, k: int) -> torch.Tensor:
        """Slot for batch k, once the copies of the batch that used it last have completed."""
        j = k % len(self.buffers)
        if self.done[j] is not None:
            self.done[j].synchronize()
            self.done[j] = None
        return self.buffers[j]

    def copy(self, k: int, batch: _Batch, targets: list[Target]) -> None:
        src = self.buffers[k % len(self.buffers)]
        nbytes = sum(c[3] for c in batch.copies)
        if not self.cuda:
            with phase("h2d", step=self.step, nbytes=nbytes):
                for s, ti, toff, n in batch.copies:
                    targets[ti].buffer[toff:toff + n].copy_(src[s:s + n])
            return
        start, done = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self.stream):
            start.record(self.stream)
            for s, ti, toff, n in batch.copies:
                targets[ti].buffer[toff:toff + n].copy_(src[s:s + n], non_blocking=True)
            done.record(self.stream)
        self.done[k % len(self.buffers)] = done
        self.spans.append((start, done, nbytes))

    def finish(self, ok: bool) -> None:
        if not self.cuda:
            return
        self.stream.synchronize()  # also on failure: nothing may still write into freed memory
        if not ok:
            return
        torch.cuda.current_stream(self.stream.device).wait_stream(self.stream)
        for start, done, nbytes in self.spans:  # the copies' spans on the GPU, on the host clock
            record("h2d", self.origin_ns + int(self.origin.elapsed_time(start) * 1e6),
                   self.origin_ns + int(self.origin.elapsed_time(done) * 1e6), step=self.step, nbytes=nbytes)


def read_into(path: str, m: Manifest, targets: list[Target], threads: int, buffer_bytes: int | None) -> LoadStats:
    """Read and verify every chunk of `m` into `targets`, batch by batch (module doc).

    `buffer_bytes` bounds the host staging (two slots of at most half of it, or of the
    largest chunk if that is bigger); batches hold at most half of it. None: one batch.
    """
    for t in targets:
        if t.buffer.dtype != torch.uint8 or t.buffer.dim() != 1 or not t.buffer.is_contiguous():
            raise ValueError(f"a read target must be a contiguous 1-D uint8 tensor, got {t.buffer.dtype} "
                             f"of shape {tuple(t.buffer.shape)}")
    batch_bytes = None if buffer_bytes is None else max(1, buffer_bytes // 2)
    batches = _plan(path, m, targets, batch_bytes)
    stats = LoadStats(batches=len(batches))
    staged = [t for t in targets if t.staged]
    slots = None
    if staged:
        if len({t.buffer.device for t in staged}) != 1:
            raise ValueError("staged targets of one load must be on one device")
        slot_bytes = max(b.slot_bytes for b in batches)
        slots = _Slots(slot_bytes, min(2, len(batches)), staged[0].buffer.device, m.step)
        stats.staged_bytes = slot_bytes * len(slots.buffers)
    ok = False
    try:
        for k, batch in enumerate(batches):
            slot = slots.slot(k).data_ptr() if slots is not None and batch.copies else 0
            tasks = [(*t[:5], [(coff, (slot if base is None else base) + off, n) for coff, base, off, n in t[5]])
                     for t in batch.tasks]
            run_reads(path, m, tasks, threads)
            if slots is not None and batch.copies:
                slots.copy(k, batch, targets)  # enqueued: runs while the next batch is read
                stats.copied_bytes += sum(c[3] for c in batch.copies)
        ok = True
    finally:
        if slots is not None:
            slots.finish(ok)
    return stats
