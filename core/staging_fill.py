"""Filling the engine's staging chunks straight from the state's memory (one copy).

A deferred or gpu snapshot does not copy the state into a host buffer of its own and then
into staging: it asks the engine for staging chunks in stream order (``Engine.open_stream``,
``acquire_chunk``) and copies each chunk's bytes there, from live CPU memory on the calling
thread or device-to-host on a side stream. A chunk goes to the writer threads as soon as its
bytes are there (for a device copy: once its event completed), so the disk starts while the
rest is still being copied, and host memory is the staging budget, nothing more. A full
staging pool blocks the next acquire (back-pressure per chunk). See docs/PERFORMANCE.md
"One copy".

The staging memory is registered with CUDA (page-locked) the first time a device copy needs
it, so the copies run at the link's speed and really are asynchronous.
"""
from __future__ import annotations

import ctypes
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ckptlab import _engine


STREAM_ALIGN = 4096  # the engine pads a stream to this (engine.cpp kIoAlign)
CUDA_HOST_REGISTER_PORTABLE = 1  # cudaHostRegisterPortable: pinned for every CUDA context


def stream_bytes(total_bytes: int) -> int:
    """The padded stream the engine cuts into chunks for `total_bytes` of payload."""
    return (max(total_bytes, 1) + STREAM_ALIGN - 1) // STREAM_ALIGN * STREAM_ALIGN


@dataclass(frozen=True)
class Extent:
    """Bytes `source` (1-D uint8: live memory, a GPU snapshot buffer or the skeleton) placed at
    `stream_offset` of the checkpoint's byte stream; `region` is their region's index (-1 for
    the skeleton)."""

    stream_offset: int
    source: torch.Tensor
    region: int

    @property
    def end(self) -> int:
        return self.stream_offset + self.source.numel()


class StagingWindow:
    """The engine's staging memory as one uint8 CPU tensor (the engine owns it; this lives no
    longer than the engine), page-locked for CUDA on demand."""

    def __init__(self, engine: _engine.Engine) -> None:
        self._base, self._nbytes = engine.staging_region
        array = (ctypes.c_uint8 * self._nbytes).from_address(self._base)
        self.tensor = torch.from_numpy(np.ctypeslib.as_array(array))
        self.registered = False   # page-locked for CUDA
        self._tried = False
        self._device: torch.device | None = None

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def view(self, address: int, nbytes: int) -> torch.Tensor:
        start = address - self._base
        return self.tensor[start:start + nbytes]

    def register_for_cuda(self, device: torch.device) -> None:
        """Page-lock the staging memory once, so device-to-host copies into it are DMA at the
        link's speed and asynchronous. A refusal (a locked-memory limit) is a warning: the
        copies still land, as slower staged copies the host waits for.

        Called on the snapshot thread, whose current device is cuda:0 whatever the training
        thread set: registering there would open a context on GPU 0 for every rank of a
        torchrun job. So it runs under `device` (one the state lives on), and portable, so
        every device's context treats the memory as pinned."""
        if self._tried:
            return
        self._tried = True
        with torch.cuda.device(device):
            err = torch.cuda.cudart().cudaHostRegister(self._base, self._nbytes, CUDA_HOST_REGISTER_PORTABLE)
        self.registered = int(err) == 0
        self._device = device
        if not self.registered:
            warnings.warn(f"cudaHostRegister of the {self._nbytes} B staging pool failed ({err}); device-to-host "
                          f"copies of deferred snapshots run pageable (slower, the snapshot thread waits for them)",
                          RuntimeWarning, stacklevel=3)

    def close(self) -> None:
        """Unregister before the engine frees the memory."""
        if self.registered:
            with torch.cuda.device(self._device):
                torch.cuda.cudart().cudaHostUnregister(self._base)
            self.registered = False


def stream_extents(skeleton: torch.Tensor, sources: list[list[tuple[int, torch.Tensor]]],
                   offsets: list[int]) -> list[Extent]:
    """Every extent of the stream in stream order: the skeleton at 0, then each region's
    pieces (``(offset in the region, bytes)``) at the region's stream offset."""
    out = [Extent(0, skeleton, -1)] if skeleton.numel() else []
    for index, (pieces, start) in enumerate(zip(sources, offsets)):
        out += [Extent(start + at, src, index) for at, src in pieces if src.numel()]
    out.sort(key=lambda e: e.stream_offset)
    return out


@dataclass
class _Outstanding:
    chunk: int
    events: list[torch.cuda.Event]


class ChunkFiller:
    """Fills one open stream's chunks in order: CPU bytes copied at once (``copy``, a seam the
    tests gate), device bytes enqueued on each device's side stream, a chunk queued for the
    writers once all its bytes are there. ``region_done(i)`` is called once region i's last
    byte was copied (CPU regions) or enqueued (device regions)."""

    def __init__(self, engine: _engine.Engine, stream_id: int, window: StagingWindow, extents: list[Extent],
                 region_ends: list[int], side_streams: dict[torch.device, torch.cuda.Stream],
                 copy: Callable[[torch.Tensor, torch.Tensor], None],
                 region_done: Callable[[int], None]) -> None:
        self._engine = engine
        self._id = stream_id
        self._window = window
        self._extents = extents
        self._ends = sorted((end, i) for i, end in enumerate(region_ends))
        self._sides = side_streams
        self._copy = copy
        self._region_done = region_done
        self._outstanding: deque[_Outstanding] = deque()
        # at most this many chunks wait for their device copies: the engine always has two
        # more buffers free or with its writers, so acquire_chunk() can always make progress
        self._max_outstanding = max(1, engine.staging_buffers - 2)

    def fill(self, stream_bytes: int) -> None:
        """Copy every chunk of the stream's `stream_bytes` (its gaps zeroed) and queue it;
        returns once all are copied or enqueued (``drain()`` waits for the device copies)."""
        e = 0
        judged = 0
        end = 0
        while end < stream_bytes:
            self._retire(block=len(self._outstanding) >= self._max_outstanding)
            chunk, address, begin, nbytes = self._engine.acquire_chunk(self._id)
            dst = self._window.view(address, nbytes)
            end = begin + nbytes
            pos = begin
            devices: set[torch.device] = set()
            while e < len(self._extents) and self._extents[e].end <= begin:
                e += 1
            k = e
            while k < len(self._extents) and self._extents[k].stream_offset < end:
                x = self._extents[k]
                lo, hi = max(x.stream_offset, begin), min(x.end, end)
                if lo > pos:
                    dst[pos - begin:lo - begin].zero_()
                part = x.source[lo - x.stream_offset:hi - x.stream_offset]
                target = dst[lo - begin:hi - begin]
                if x.source.device.type == "cuda":
                    with torch.cuda.stream(self._sides[x.source.device]):
                        target.copy_(part, non_blocking=True)
                    devices.add(x.source.device)
                else:
                    self._copy(target, part)
                pos = max(pos, hi)
                k += 1
            if pos < end:
                dst[pos - begin:].zero_()
            while judged < len(self._ends) and self._ends[judged][0] <= end:
                self._region_done(self._ends[judged][1])
                judged += 1
            if devices:
                events = []
                for dev in devices:
                    ev = torch.cuda.Event()
                    ev.record(self._sides[dev])
                    events.append(ev)
                self._outstanding.append(_Outstanding(chunk, events))
            else:
                self._engine.queue_chunk(self._id, chunk)
        while judged < len(self._ends):  # regions of no bytes
            self._region_done(self._ends[judged][1])
            judged += 1

    def _retire(self, block: bool) -> None:
        """Queue the chunks whose device copies completed (in order; the oldest waited for
        when `block`)."""
        while self._outstanding:
            head = self._outstanding[0]
            if block:
                for ev in head.events:
                    ev.synchronize()
                block = False
            elif not all(ev.query() for ev in head.events):
                return
            self._outstanding.popleft()
            self._engine.queue_chunk(self._id, head.chunk)

    def drain(self) -> None:
        """Wait for every outstanding device copy and queue its chunk."""
        while self._outstanding:
            self._retire(block=True)
