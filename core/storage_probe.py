"""Measure a directory's bandwidths: what the storage under a checkpoint allows.

Two kinds of probe, one job. ``probe_storage`` (``ckptlab tune``, ``CheckpointConfig.auto``)
times the engine itself persisting a synthetic checkpoint for each io_mode x writer-thread
count: that is exactly the path a checkpoint takes (staging copy, chunked pwrite or O_DIRECT,
fdatasync, MANIFEST, directory fsyncs, rename), so its bandwidth is the one the tuning rule
needs, not a ``dd`` figure the engine cannot reach. It then reads the written files back cold
and, where CUDA is present, times a device-to-host copy. The raw probes below
(``disk_probe``: one buffered + fsync and one O_DIRECT + fdatasync sequential write, a cold
read) are ``ckptlab bench``'s reference for "what the hardware allows" (docs/PERFORMANCE.md).

"Cold" means the file's pages were dropped from the page cache with posix_fadvise(DONTNEED)
after fsync (no root needed; it drops clean pages only, which is why it comes after fsync).
``resident_fraction`` (mincore) checks that it worked: a value above 0 says the read was
partly warm.

Every probe writes under a fresh directory it removes afterwards, also when interrupted
(Ctrl-C raises KeyboardInterrupt in the waiting thread; the ``finally`` blocks clean up).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ckptlab.profiling.files import fsync_dir

__all__ = ["WriteMeasurement", "StorageProfile", "probe_storage", "PROBE_IO_MODES", "drop_cache", "resident_fraction",
           "raw_write_buffered", "raw_write_direct", "raw_read", "disk_probe", "d2h_seconds", "d2h_gbps"]

PROBE_IO_MODES = ("direct", "buffered")
MIN_PROBE_BYTES = 64 * 1024  # one engine chunk
Progress = Callable[[str, int, int], object]  # (step just done, steps done, steps in all)

BLOCK = 16 << 20
_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def drop_cache(paths: Iterable[str | os.PathLike]) -> None:
    """Ask the kernel to drop the files' (clean) pages from the page cache."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _resident_pages(path: str | os.PathLike) -> tuple[int, int]:
    size = os.path.getsize(path)
    if size == 0:
        return 0, 0
    pages = (size + _PAGE - 1) // _PAGE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            return sum(b & 1 for b in vec), pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def resident_fraction(paths: Iterable[str | os.PathLike]) -> float:
    """Share of the files' pages in the page cache now (0: cold, 1: all cached)."""
    resident = total = 0
    for p in paths:
        r, t = _resident_pages(p)
        resident, total = resident + r, total + t
    return resident / total if total else 0.0


def _aligned_buffer(nbytes: int) -> mmap.mmap:
    buf = mmap.mmap(-1, (nbytes + _PAGE - 1) // _PAGE * _PAGE)  # page aligned, as O_DIRECT needs
    chunk = os.urandom(min(BLOCK, len(buf)))
    for off in range(0, len(buf), len(chunk)):
        n = min(len(chunk), len(buf) - off)
        buf[off:off + n] = chunk[:n]
    return buf


def _write_all(fd: int, buf: mmap.mmap) -> None:
    view = memoryview(buf)
    for off in range(0, len(buf), BLOCK):
        os.write(fd, view[off:off + BLOCK])


def raw_write_buffered(buf: mmap.mmap, path: Path) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, buf)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
    return time.perf_counter() - t0


def raw_write_direct(buf: mmap.mmap, path: Path) -> float | None:
    """O_DIRECT + fdatasync; None where the file system refuses O_DIRECT (tmpfs)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError:
        return None
    t0 = time.perf_counter()
    try:
        _write_all(fd, buf)
        os.fdatasync(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    fsync_dir(path.parent)
    return time.perf_counter() - t0


def raw_read(path: Path) -> float:
    """Sequential buffered read of the whole file (cold: call drop_cache first)."""
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(BLOCK)
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


def disk_probe(directory: Path, nbytes: int) -> dict[str, float | None]:
    """Write ``nbytes`` both ways, then read the buffered file back cold; removes its files."""
    directory.mkdir(parents=True, exist_ok=True)
    buf = _aligned_buffer(nbytes)
    buffered, direct = directory / "buffered.bin", directory / "direct.bin"
    try:
        out: dict[str, float | None] = {"direct_write_s": raw_write_direct(buf, direct)}
        direct.unlink(missing_ok=True)  # one file of nbytes at a time: a 48 GB probe fits a 64 GiB disk
        out["buffered_write_s"] = raw_write_buffered(buf, buffered)
        drop_cache([buffered])
        out["read_resident"] = resident_fraction([buffered])
        out["read_s"] = raw_read(buffered)
    finally:
        buf.close()
        for p in (buffered, direct):
            p.unlink(missing_ok=True)
    return out


D2H_SAMPLE_MAX_BYTES = 2 << 30  # the copy rate is flat well below this; a 48 GB sample would pin 48 GB


def d2h_gbps(nbytes: int, repeats: int = 3) -> float:
    """Device-to-host copy bandwidth into pinned memory (GB/s, best of ``repeats``), copying
    ``nbytes`` or at most D2H_SAMPLE_MAX_BYTES."""
    sample = min(nbytes, D2H_SAMPLE_MAX_BYTES)
    return sample / d2h_seconds(sample, repeats) / 1e9


def d2h_seconds(nbytes: int, repeats: int = 3) -> float:
    """Seconds of one device-to-host copy of ``nbytes`` into pinned memory (best of ``repeats``)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


@dataclass(frozen=True)
class WriteMeasurement:
    """The engine persisting ``nbytes`` with ``threads`` writers in ``io_mode``: submit to durable.

    ``seconds`` is the median of ``samples`` (one per probe round; a profile saved before
    rounds existed has none, and its one figure stands for them)."""

    io_mode: str
    threads: int
    nbytes: int
    seconds: float
    samples: tuple[float, ...] = ()

    @property
    def bps(self) -> float:
        return self.nbytes / self.seconds

    @property
    def spread_s(self) -> tuple[float, float]:
        """(fastest, slowest) round in seconds."""
        samples = self.samples or (self.seconds,)
        return min(samples), max(samples)


@dataclass(frozen=True)
class StorageProfile:
    """What ``probe_storage`` measured in ``directory`` (the input of core/tuning.py).

    writes: one per io_mode x threads that ran (O_DIRECT is missing where the file system
        refuses it; ``direct_note`` says why), the median of ``repeats`` rounds. read_s: the median
        cold sequential read of one probe checkpoint's files, one per round
        (``read_resident``: the largest share still cached). copy_s: the fastest
        copy of the probe bytes into the engine's staging (what a sync save() stalls for on
        the host). d2h_s: a device-to-host copy of them into pinned memory, None without CUDA.
    """

    directory: str
    probe_bytes: int
    chunk_bytes: int
    writes: tuple[WriteMeasurement, ...]
    read_s: float
    read_resident: float
    copy_s: float
    d2h_s: float | None
    direct_note: str
    repeats: int = 1

    @property
    def read_bps(self) -> float:
        return self.probe_bytes / self.read_s

    @property
    def copy_bps(self) -> float:
        return self.probe_bytes / self.copy_s

    @property
    def d2h_bps(self) -> float | None:
        return None if self.d2h_s is None else self.probe_bytes / self.d2h_s

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["writes"] = [asdict(w) | {"gbps": w.bps / 1e9} for w in self.writes]
        out.update(read_gbps=self.read_bps / 1e9, copy_gbps=self.copy_bps / 1e9,
                   d2h_gbps=None if self.d2h_bps is None else self.d2h_bps / 1e9)
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "StorageProfile":
        """The profile from ``to_json()`` (derived ``*_gbps`` keys are ignored, recomputed)."""
        try:
            writes = tuple(WriteMeasurement(str(w["io_mode"]), int(w["threads"]), int(w["nbytes"]),
                                            float(w["seconds"]), tuple(float(x) for x in w.get("samples", ())))
                           for w in doc["writes"])
            d2h = doc.get("d2h_s")
            return cls(directory=str(doc["directory"]), probe_bytes=int(doc["probe_bytes"]),
                       chunk_bytes=int(doc["chunk_bytes"]), writes=writes, read_s=float(doc["read_s"]),
                       read_resident=float(doc["read_resident"]), copy_s=float(doc["copy_s"]),
                       d2h_s=None if d2h is None else float(d2h), direct_note=str(doc.get("direct_note", "")),
                       repeats=int(doc.get("repeats", 1)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a storage profile (missing or bad {exc})") from None


def _probe_chunk(nbytes: int) -> int:
    """16 MiB (the engine default), smaller for a small probe so every writer gets chunks."""
    return max(MIN_PROBE_BYTES, min(16 << 20, nbytes // 16 // MIN_PROBE_BYTES * MIN_PROBE_BYTES))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def _engine_write(directory: Path, data: Any, threads: int, io_mode: str, chunk: int) -> tuple[float, float, Path]:
    """(submit-to-durable s, staging copy s, committed checkpoint dir) of one synthetic checkpoint."""
    from ckptlab import _engine

    nbytes = int(data.nbytes)
    staging = -(-nbytes // chunk) * chunk
    engine = _engine.Engine(str(directory), writer_threads=threads, max_inflight=1, chunk_bytes=chunk,
                            staging_bytes=staging, keep_last=1, io_mode=io_mode)
    try:
        if engine.io_mode != io_mode:
            raise OSError(f"the engine opened {directory} in {engine.io_mode} mode, not {io_mode}")
        engine.submit(0, "{}", [(int(data.ctypes.data), nbytes, 0)], nbytes)
        while not engine.wait(0.2):  # short waits: Ctrl-C is seen between them
            pass
        failure = engine.take_failure()
        if failure is not None:
            raise OSError(failure["errno"] or None, f"probe write ({io_mode}, {threads} writer threads) failed "
                          f"in {failure['op']}: {failure['message']}", failure["path"])
        rec = engine.commit_records()[-1]
    finally:
        engine.close()
    return (rec["t_done_ns"] - rec["t_submit_ns"]) / 1e9, (rec["t_staged_ns"] - rec["t_submit_ns"]) / 1e9, \
        Path(rec["path"])


def _cold_read(checkpoint: Path) -> tuple[float, float]:
    files = [p for p in checkpoint.iterdir() if p.is_file()]
    drop_cache(files)
    resident = resident_fraction(files)
    t0 = time.perf_counter()
    for f in files:
        raw_read(f)
    return time.perf_counter() - t0, resident


def _check_probe_args(directory: Path, nbytes: int, threads: Sequence[int], io_modes: Sequence[str],
                      repeats: int) -> None:
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    if not isinstance(nbytes, int) or nbytes < MIN_PROBE_BYTES:
        raise ValueError(f"probe nbytes must be an integer >= {MIN_PROBE_BYTES} (64 KiB), got {nbytes!r}")
    if not threads or any(not isinstance(t, int) or isinstance(t, bool) or t < 1 for t in threads):
        raise ValueError(f"probe threads must be integers >= 1, got {tuple(threads)!r}")
    if not io_modes or any(m not in PROBE_IO_MODES for m in io_modes):
        raise ValueError(f"probe io_modes must be among {PROBE_IO_MODES}, got {tuple(io_modes)!r}")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"probe repeats must be an integer >= 1, got {repeats!r}")


def probe_storage(directory: str | os.PathLike, nbytes: int, threads: Sequence[int] = (1, 2, 4, 8),
                  io_modes: Sequence[str] = PROBE_IO_MODES, d2h: bool | None = None,
                  progress: Progress | None = None, repeats: int = 1) -> StorageProfile:
    """Measure ``directory``: the engine writes ``nbytes`` per io_mode x threads, one of them is
    read back cold, and (``d2h``; None: where CUDA is available) a D2H copy is timed.

    ``repeats`` > 1 repeats the writes and the read, interleaved (every configuration once per
    round, so a burst of other I/O hits them all alike), and keeps each one's median: one
    sample of a shared disk can be off by a factor, and the writer-thread choice follows it.

    Writes under a fresh ``.ckptlab-tune-*`` directory inside ``directory`` and removes it,
    also on an exception or Ctrl-C. O_DIRECT is skipped, with the reason in ``direct_note``,
    where the file system refuses it (tmpfs)."""
    import statistics

    import numpy as np

    from ckptlab import _engine

    directory = Path(directory)
    _check_probe_args(directory, nbytes, threads, io_modes, repeats)
    threads = sorted(set(threads))
    direct_ok, direct_note = _engine.probe_direct_io(str(directory)) if "direct" in io_modes else (False, "")
    modes = [m for m in io_modes if m != "direct" or direct_ok]
    if not modes:
        raise OSError(f"O_DIRECT is refused in {directory} ({direct_note}); probe buffered I/O instead")
    d2h = _cuda_available() if d2h is None else d2h
    configs = [(mode, n) for mode in modes for n in threads]
    total = repeats * (len(configs) + 1) + int(d2h)
    done = 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(what, done, total)

    chunk = _probe_chunk(nbytes)
    root = Path(tempfile.mkdtemp(prefix=".ckptlab-tune-", dir=directory))
    try:
        data = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)  # incompressible
        durable: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
        copies: list[float] = []
        reads: list[tuple[float, float]] = []
        for r in range(repeats):
            label = f" (round {r + 1}/{repeats})" if repeats > 1 else ""
            for i, (mode, n) in enumerate(configs):
                target = root / f"{mode}-{n}"
                target.mkdir()
                durable_s, copy_s, checkpoint = _engine_write(target, data, n, mode, chunk)
                durable[mode, n].append(durable_s)
                copies.append(copy_s)
                step(f"write {mode} x{n}{label}")
                if i == 0:
                    reads.append(_cold_read(checkpoint))
                    step(f"cold read{label}")
                shutil.rmtree(target)
        d2h_s = d2h_seconds(nbytes) if d2h else None
        if d2h:
            step("device-to-host copy")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    writes = tuple(WriteMeasurement(mode, n, nbytes, statistics.median(durable[mode, n]), tuple(durable[mode, n]))
                   for mode, n in configs)
    return StorageProfile(directory=str(directory.resolve()), probe_bytes=nbytes, chunk_bytes=chunk,
                          writes=writes, read_s=statistics.median(t for t, _ in reads),
                          read_resident=max(res for _, res in reads),
                          copy_s=max(min(copies), 1e-9), d2h_s=d2h_s,
                          direct_note="" if direct_ok or "direct" not in io_modes else direct_note, repeats=repeats)
