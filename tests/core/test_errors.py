"""I/O failures fail one checkpoint, clean up, keep the previous one, and raise with errno+path."""
import errno
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from ckptlab.core import CheckpointConfig, CheckpointWriteError, load_latest, open_checkpointer
from ckpt_testutil import REPO, assert_state_is_step, child_env, det_state

SMALL = dict(chunk_bytes=64 * 1024, writer_threads=2)


@pytest.mark.parametrize(
    "spec, err, op",
    [
        ("point=before_chunk_write,ckpt=2,hit=2,action=eio", errno.EIO, "write"),
        ("point=before_chunk_write,ckpt=2,action=short", errno.ENOSPC, "write"),
        ("point=before_data_fsync,ckpt=2,action=enospc", errno.ENOSPC, "fdatasync"),
        ("point=before_data_fsync,ckpt=2,action=edquot", errno.EDQUOT, "fdatasync"),
        ("point=before_manifest,ckpt=2,action=eio", errno.EIO, "write"),
        ("point=before_manifest_fsync,ckpt=2,action=eio", errno.EIO, "fsync"),
        ("point=before_tmpdir_fsync,ckpt=2,action=eio", errno.EIO, "fsync directory"),
        ("point=before_rename,ckpt=2,action=eio", errno.EIO, "rename"),
    ],
)
def test_failed_io_fails_that_checkpoint_only(spec, err, op, ckpt_dir):
    cfg = CheckpointConfig(faults=spec, keep_last=0, **SMALL)
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        ck.save(1, det_state(1, 300 * 1024))
        ck.save(2, det_state(2, 300 * 1024))
        with pytest.raises(CheckpointWriteError) as info:
            ck.wait()
        e = info.value
        assert e.errno == err and e.step == 2 and op in str(e)
        assert e.filename and ckpt_dir in e.filename
        assert isinstance(e, OSError)
        # the failed checkpoint left nothing behind; the previous one is intact
        assert sorted(n for n in os.listdir(ckpt_dir) if n.startswith(("step_", ".step_"))) == ["step_000000000001"]
        assert_state_is_step(load_latest(ckpt_dir)[1], 1, 300 * 1024)
        # the engine goes on: the next checkpoint succeeds
        ck.save(3, det_state(3, 300 * 1024))
        ck.wait()
    assert_state_is_step(load_latest(ckpt_dir)[1], 3, 300 * 1024)


def test_failure_is_raised_at_the_next_save(ckpt_dir):
    cfg = CheckpointConfig(faults="point=before_data_fsync,ckpt=1,action=eio", **SMALL)
    ck = open_checkpointer("pccheck", ckpt_dir, cfg)
    ck.save(1, {"x": torch.zeros(10)})
    while ck.engine.inflight:
        ck.engine.wait()
    with pytest.raises(CheckpointWriteError, match="step 1 failed during fdatasync"):
        ck.save(2, {"x": torch.zeros(10)})
    ck.save(3, {"x": torch.ones(10)})  # the error was reported once; saving continues
    ck.close()
    assert load_latest(ckpt_dir)[0] == 3


def test_close_raises_a_pending_failure(ckpt_dir):
    ck = open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(faults="point=before_rename,action=eio", **SMALL))
    ck.save(1, {"x": torch.zeros(10)})
    with pytest.raises(CheckpointWriteError):
        ck.close()


def test_torchsave_reports_errno_and_path(ckpt_dir):
    with open_checkpointer("torchsave", ckpt_dir, CheckpointConfig(**SMALL)) as ck:
        ck.save(1, {"x": torch.zeros(3)})
        os.chmod(ckpt_dir, 0o500)
        try:
            if os.geteuid() == 0:
                pytest.skip("root ignores directory permissions; covered by the tmpfs ENOSPC test")
            with pytest.raises(CheckpointWriteError) as info:
                ck.save(2, {"x": torch.zeros(3)})
            assert info.value.errno == errno.EACCES
        finally:
            os.chmod(ckpt_dir, 0o700)


ENOSPC_CHILD = textwrap.dedent(
    """
    import sys, torch
    from ckptlab.core import CheckpointConfig, CheckpointWriteError, open_checkpointer, load_latest
    kind, d = sys.argv[1], sys.argv[2]
    with open_checkpointer(kind, d, CheckpointConfig(chunk_bytes=1 << 20, keep_last=0)) as ck:
        small = {"x": torch.arange(1000.0)}
        ck.save(1, small)
        ck.wait()
        try:
            ck.save(2, {"x": torch.zeros(16 << 20)})  # 64 MiB into an 8 MiB tmpfs
            ck.wait()
            print("NO ERROR")
        except CheckpointWriteError as e:
            print("ERRNO", e.errno, e.filename)
    step, st = load_latest(d)
    assert step == 1 and torch.equal(st["x"], small["x"])
    print("RECOVERED", step)
    """
)


FIRST_DATA_FILE = {"pccheck": "data_000.bin", "torchsave": "state.pt"}  # what the big save fills


@pytest.mark.parametrize("kind", ["pccheck", "torchsave"])
def test_real_enospc_on_a_size_limited_tmpfs(kind, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=1m none {tmp_path}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "child.py"
    script.write_text(ENOSPC_CHILD)
    cmd = f"mount -t tmpfs -o size=8m none {mnt} && {sys.executable} {script} {kind} {mnt}/ckpt"
    r = subprocess.run(["unshare", "-Urm", "sh", "-c", cmd], capture_output=True, text=True, cwd=REPO,
                       env=child_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"ERRNO {errno.ENOSPC}" in r.stdout, r.stdout
    filename = r.stdout.split(f"ERRNO {errno.ENOSPC} ", 1)[1].splitlines()[0]
    assert filename.endswith("/" + FIRST_DATA_FILE[kind]), f"the error names {filename}, not the file written"
    assert "RECOVERED 1" in r.stdout


def test_torchsave_names_the_file_whose_real_fsync_failed(ckpt_dir, monkeypatch):
    """A real fsync error carries no filename (its argument is a descriptor): the writer adds
    the file's path, so the error says which file, not just the checkpoint directory."""
    fsync = os.fsync

    def failing_fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/state.pt"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))  # as the kernel's error arrives: no filename
        fsync(fd)

    with open_checkpointer("torchsave", ckpt_dir, CheckpointConfig(**SMALL)) as ck:
        ck.save(1, {"x": torch.zeros(3)})
        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(CheckpointWriteError) as info:
            ck.save(2, {"x": torch.zeros(3)})
        monkeypatch.undo()
    assert info.value.errno == errno.EIO and info.value.step == 2
    assert info.value.filename.endswith("/state.pt") and ".step_000000000002" in info.value.filename, \
        info.value.filename
    assert "state.pt" in str(info.value)
    assert load_latest(ckpt_dir)[0] == 1
