"""What the hardware allows, measured in the same run as the checkpointers: a raw sequential
write of the checkpoint's bytes (buffered + fsync, and O_DIRECT + fdatasync), a cold read of
it, and on CUDA a device-to-host copy into pinned memory.

"Cold" means the file's pages were dropped from the page cache with posix_fadvise(DONTNEED)
after fsync (no root needed; it drops clean pages only, which is why it comes after fsync).
``resident_fraction`` (mincore) checks that it worked: the bench records it next to each cold
figure, and a value above 0 says the read was partly warm.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import time
from pathlib import Path
from typing import Iterable

from ckptlab.profiling.files import fsync_dir

__all__ = ["drop_cache", "resident_fraction", "raw_write_buffered", "raw_write_direct", "raw_read", "disk_probe",
           "d2h_gbps"]

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
        out["buffered_write_s"] = raw_write_buffered(buf, buffered)
        drop_cache([buffered])
        out["read_resident"] = resident_fraction([buffered])
        out["read_s"] = raw_read(buffered)
    finally:
        buf.close()
        for p in (buffered, direct):
            p.unlink(missing_ok=True)
    return out


def d2h_gbps(nbytes: int, repeats: int = 3) -> float:
    """Device-to-host copy bandwidth into pinned memory (GB/s, best of ``repeats``)."""
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
    return nbytes / best / 1e9
