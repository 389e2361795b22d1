"""Preallocation where the file system has none (FUSE, some NFS): the engine asks fallocate(2)
and goes on without it, instead of glibc's posix_fallocate emulation that writes one byte per
4 KiB block (issue 12 item 4). A child process refuses the syscall with a seccomp filter
(tests/csrc/no_fallocate.py: no root, no such mount needed) and counts its write syscalls."""
import json
import os
import subprocess
import sys

import pytest

from ckptlab import _engine

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "no_fallocate.py")
CHUNK = 1 << 20  # the child's chunk_bytes
SHARDS = 2       # and shards


def run_child(directory, count, nbytes, err="EOPNOTSUPP", mode="buffered", io_log=""):
    proc = subprocess.run([sys.executable, CHILD, str(directory), str(count), str(nbytes), err, mode, io_log],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode == 3:
        pytest.skip(f"cannot refuse fallocate here: {proc.stdout.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stream_crc(step_dir, nbytes):
    """CRC32C of the first ``nbytes`` of the checkpoint's stream (chunk c is in shard c % SHARDS)."""
    crc, c = 0, 0
    while c * CHUNK < nbytes:
        with open(os.path.join(step_dir, f"data_{c % SHARDS:03d}.bin"), "rb") as f:
            f.seek((c // SHARDS) * CHUNK)
            crc = _engine.crc32c(f.read(min(CHUNK, nbytes - c * CHUNK)), crc)
        c += 1
    return crc


@pytest.mark.parametrize("mode", ["buffered", "direct"])
def test_no_fallocate_costs_no_extra_writes_and_the_checkpoints_verify(tmp_path, mode):
    from ckptlab.core.recovery import verify_checkpoint

    if mode == "direct" and not _engine.probe_direct_io(str(tmp_path))[0]:
        pytest.skip("no O_DIRECT here")
    count, nbytes = 4, 2 * CHUNK
    out = run_child(tmp_path, count, nbytes, mode=mode)
    assert out["fallocate_errno"] == 95, out  # the filter works: the raw syscall is refused
    assert out["io_mode"] == mode and out["waited"], out
    assert out["failures"] == [] and out["submit_errors"] == {}, out
    chunk_writes = count * (nbytes // CHUNK)
    # per checkpoint: its chunks and one MANIFEST write (plus slack); glibc's emulation would
    # add nbytes / 4096 = 512 one-byte writes per checkpoint
    assert out["writes"] <= chunk_writes + 4 * count, out
    for step in range(1, count + 1):
        step_dir = os.path.join(tmp_path, f"step_{step:012d}")
        verify_checkpoint(step_dir)
        assert stream_crc(step_dir, nbytes) == out["crcs"][str(step)]


@pytest.mark.parametrize("err", ["ENOSPC", "EDQUOT"])
def test_a_full_disk_from_fallocate_still_fails_the_save_cleanly(tmp_path, err):
    out = run_child(tmp_path, 2, CHUNK, err=err)
    want = getattr(__import__("errno"), err)
    assert out["submit_errors"] == {"1": want, "2": want}, out
    assert [n for n in os.listdir(tmp_path) if not n.startswith(".ckptlab")] == [], os.listdir(tmp_path)


def test_a_skipped_preallocation_is_logged_as_refused_and_replays_as_no_extension(tmp_path):
    """The I/O log says what happened (fallocate refused with EOPNOTSUPP once: the engine
    remembers the refusal and no later checkpoint asks again), and replaying it gives the
    directory on disk."""
    from ckptlab.faults.iolog import read_io_log
    from ckptlab.faults.replay import CrashModel, snapshot

    d, log = tmp_path / "ck", str(tmp_path / "io.log")
    d.mkdir()
    out = run_child(d, 3, CHUNK, io_log=log)
    assert out["failures"] == [] and out["submit_errors"] == {}, out
    records = read_io_log(log)
    assert [(r.err, r.offset) for r in records if r.op == "fallocate"] == [(95, 0)]
    assert sum(r.op == "mark" and r.path == "submit" for r in records) == 3  # three checkpoints asked once
    model = CrashModel(records)
    assert not any(op.kind == "extend" for op in model.ops)
    assert model.build(len(records), keep=lambda op: True, tear=lambda op: None) == snapshot(str(d))
