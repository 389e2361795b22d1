"""A child process whose ``fallocate`` syscall fails with EOPNOTSUPP (a FUSE or NFS mount
without preallocation), made with a seccomp filter so no root and no such mount is needed.

    python no_fallocate.py DIR COUNT NBYTES [ERRNO_NAME [IO_MODE [IO_LOG]]]

Saves COUNT checkpoints of NBYTES random bytes through the engine (IO_MODE: its io_mode,
default buffered; ERRNO_NAME: what fallocate returns, default EOPNOTSUPP) and prints one JSON
line: the write syscalls (``syscw`` of /proc/self/io) and seconds the saves took, each step's
CRC32C, the errnos submit() raised and the failures the engine reported. With IO_LOG the
engine records its operations there (with the bytes). glibc's
``posix_fallocate`` answers EOPNOTSUPP by writing one byte per 4 KiB block, which the write
count shows. Exit status 3 with a reason where the filter cannot be installed (the caller
skips).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import struct
import sys
import time

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
# audit architecture and fallocate's syscall number per machine (linux/audit.h, unistd tables)
ARCHES = {"x86_64": (0xC000003E, 285), "aarch64": (0xC00000B7, 47)}
SKIP = 3

EMPTY_LAYOUT = '{"objects":[0,0],"storages":[],"tensors":[]}'  # the meta a pccheck manifest must carry


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)  # struct sock_filter


def refuse_fallocate(err: int = errno.EOPNOTSUPP) -> str:
    """Install the filter on this thread (and the threads it starts); '' or why it could not."""
    machine = platform.machine()
    if machine not in ARCHES:
        return f"no seccomp syscall table for {machine}"
    arch, nr = ARCHES[machine]
    ld_abs, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    prog = b"".join([
        _insn(ld_abs, 0, 0, 4),                   # seccomp_data.arch
        _insn(jeq, 0, 3, arch),                   # another ABI: allow
        _insn(ld_abs, 0, 0, 0),                   # seccomp_data.nr
        _insn(jeq, 0, 1, nr),
        _insn(ret, 0, 0, SECCOMP_RET_ERRNO | err),
        _insn(ret, 0, 0, SECCOMP_RET_ALLOW),
    ])
    buf = ctypes.create_string_buffer(prog, len(prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        return f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}"
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        return f"prctl(PR_SET_SECCOMP): {os.strerror(ctypes.get_errno())}"
    return ""


def write_syscalls() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("syscw:"))


def main(argv: list[str]) -> int:
    directory, count, nbytes = argv[0], int(argv[1]), int(argv[2])
    err = getattr(errno, argv[3]) if len(argv) > 3 else errno.EOPNOTSUPP
    mode = argv[4] if len(argv) > 4 else "buffered"
    io_log = argv[5] if len(argv) > 5 else ""
    why = refuse_fallocate(err)
    if why:
        print(why)
        return SKIP
    import numpy as np
    from ckptlab import _engine

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    probe = os.path.join(directory, ".probe")
    fd = os.open(probe, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        refused_errno = ctypes.get_errno() if libc.fallocate(fd, 0, 0, 4096) != 0 else 0
    finally:
        os.close(fd)
        os.unlink(probe)
    rng = np.random.default_rng(1)
    states = [rng.integers(0, 256, nbytes, dtype=np.uint8) for _ in range(count)]
    engine = _engine.Engine(directory, chunk_bytes=1 << 20, staging_bytes=4 << 20, shards=2, keep_last=0, io_mode=mode,
                            prefault=False, io_log=io_log)
    before, t0 = write_syscalls(), time.perf_counter()
    submit_errors = {}
    for step, arr in enumerate(states, 1):
        try:
            engine.submit(step, EMPTY_LAYOUT, [(arr.ctypes.data, arr.nbytes, 0)], arr.nbytes)
        except OSError as e:
            submit_errors[str(step)] = e.errno
    ok = engine.wait(timeout=120.0)
    seconds, writes = time.perf_counter() - t0, write_syscalls() - before
    failures = []
    while (f := engine.take_failure()) is not None:
        failures.append(dict(f))
    actual_mode = engine.io_mode
    engine.close()
    print(json.dumps({"writes": writes, "seconds": seconds, "waited": ok, "failures": failures,
                      "submit_errors": submit_errors, "io_mode": actual_mode,
                      "fallocate_errno": refused_errno,
                      "crcs": {str(s): _engine.crc32c(a) for s, a in enumerate(states, 1)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
