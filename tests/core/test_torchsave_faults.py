"""torchsave through core/writer_io.py: the engine's fault points and I/O log in a Python writer.

A kill at a named point SIGKILLs a real child there (the I/O log's last record is that
point's marker) and the last acknowledged checkpoint survives; an error injected at each
erroring point fails exactly that save (save() raises its errno), keeps the previous one and
leaves no temp directory; the spec and the log arm it through CheckpointConfig and through
CKPTLAB_FAULTS / CKPTLAB_IO_LOG; disarmed, nothing is logged.
"""
import errno
import os
import signal
import subprocess
import sys

import pytest

from ckptlab.core import CheckpointConfig, CheckpointWriteError, load_latest, open_checkpointer
from ckptlab.core.fault_spec import ERROR_POINTS, FAULTS_ENV, IO_LOG_DATA_ENV, IO_LOG_ENV
from ckptlab.core.writer_io import WriterIO
from ckpt_testutil import REPO, assert_state_is_step, child_env, det_state

CHILD = os.path.join(os.path.dirname(__file__), "crash_child.py")
NBYTES = 300 * 1024
KiB = 1024


def _records(log: str) -> list[list[str]]:
    """The header fields of each record of a log written without data (one line each)."""
    with open(log, "rb") as f:
        return [line.split("\t") for line in f.read().decode().splitlines()]


def _leftovers(d: str) -> list[str]:
    return [n for n in os.listdir(d) if n.startswith(".step_")]


@pytest.mark.parametrize("point", ["before_chunk_write", "before_manifest_fsync", "before_rename", "after_rename",
                                   "during_gc"])
def test_a_kill_fires_at_the_named_point(point, tmp_path):
    d, ack, log = str(tmp_path / "ck"), str(tmp_path / "ack"), str(tmp_path / "io.log")
    os.mkdir(d)
    env = child_env(**{FAULTS_ENV: f"point={point},ckpt=3,action=kill", IO_LOG_ENV: log, IO_LOG_DATA_ENV: "0"})
    r = subprocess.run([sys.executable, CHILD, d, ack, "4", str(NBYTES), "2", "torchsave"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, f"{point} did not kill: rc={r.returncode} {r.stderr[-500:]}"
    last = _records(log)[-1]
    assert last[3:6] == ["mark", "0", "point"] and last[6] == f"point={point} ckpt=3 step=3", last
    acked = max(int(x) for x in open(ack).read().split())
    assert acked == 2  # steps 1 and 2 returned from save()
    step, state = load_latest(d)
    assert step >= acked
    assert_state_is_step(state, step, NBYTES)
    with open_checkpointer("torchsave", d, CheckpointConfig(chunk_bytes=64 * KiB)) as ck:  # cleans the debris
        ck.save(10, det_state(10, NBYTES))
    assert _leftovers(d) == []
    assert_state_is_step(load_latest(d)[1], 10, NBYTES)


ACTIONS = {"eio": errno.EIO, "enospc": errno.ENOSPC, "edquot": errno.EDQUOT}


@pytest.mark.parametrize("point", list(ERROR_POINTS))
@pytest.mark.parametrize("action", list(ACTIONS))
def test_an_injected_error_fails_exactly_that_save(point, action, ckpt_dir):
    cfg = CheckpointConfig(chunk_bytes=64 * KiB, keep_last=0, faults=f"point={point},ckpt=2,action={action}")
    with open_checkpointer("torchsave", ckpt_dir, cfg) as ck:
        ck.save(1, det_state(1, NBYTES))
        with pytest.raises(CheckpointWriteError) as e:
            ck.save(2, det_state(2, NBYTES))
        assert e.value.errno == ACTIONS[action] and e.value.step == 2
        assert _leftovers(ckpt_dir) == []
        step, state = load_latest(ckpt_dir)
        assert step == 1
        assert_state_is_step(state, 1, NBYTES)
        ck.save(3, det_state(3, NBYTES))  # the writer goes on
    assert sorted(os.listdir(ckpt_dir)) == [".ckptlab.lock", "step_000000000001", "step_000000000003"]
    assert_state_is_step(load_latest(ckpt_dir)[1], 3, NBYTES)


def test_a_short_write_stores_half_then_fails_with_enospc(ckpt_dir, tmp_path):
    log = str(tmp_path / "io.log")
    cfg = CheckpointConfig(chunk_bytes=64 * KiB, faults="point=before_chunk_write,hit=2,action=short", io_log=log)
    with open_checkpointer("torchsave", ckpt_dir, cfg) as ck:
        with pytest.raises(CheckpointWriteError) as e:
            ck.save(1, det_state(1, NBYTES))
        assert e.value.errno == errno.ENOSPC
        ck.save(2, det_state(2, NBYTES))
    writes = [r for r in _records_with_data(log) if r[3] == "write" and r[5].endswith("state.pt")]
    assert [(int(r[7]), int(r[8])) for r in writes[:2]] == [(0, 64 * KiB), (64 * KiB, 32 * KiB)]
    assert load_latest(ckpt_dir)[0] == 2


def _records_with_data(log: str) -> list[list[str]]:
    out, raw, pos = [], open(log, "rb").read(), 0
    while pos < len(raw):
        nl = raw.index(b"\n", pos)
        fields = raw[pos:nl].decode().split("\t")
        pos = nl + 1 + (int(fields[8]) if fields[10] == "1" else 0)
        out.append(fields)
    return out


def test_armed_through_the_environment(ckpt_dir, tmp_path, monkeypatch):
    log = str(tmp_path / "env.log")
    monkeypatch.setenv(FAULTS_ENV, "point=before_tmpdir_fsync,ckpt=1,action=eio")
    monkeypatch.setenv(IO_LOG_ENV, log)
    monkeypatch.setenv(IO_LOG_DATA_ENV, "0")
    with open_checkpointer("torchsave", ckpt_dir, CheckpointConfig(chunk_bytes=64 * KiB)) as ck:
        with pytest.raises(CheckpointWriteError, match="Input/output error"):
            ck.save(1, det_state(1, NBYTES))
        ck.save(2, det_state(2, NBYTES))
    marks = [(r[5], r[6]) for r in _records(log) if r[3] == "mark"]
    kinds = [k for k, _ in marks if k != "point"]
    assert kinds == ["start", "submit", "inject", "fail", "submit", "ack", "close"], kinds
    assert ("inject", "point=before_tmpdir_fsync ckpt=1 step=1 errno=5") in marks


def test_a_bad_spec_is_refused_when_it_opens(ckpt_dir):
    with pytest.raises(ValueError, match="nosuchpoint"):
        open_checkpointer("torchsave", ckpt_dir, CheckpointConfig(faults="point=nosuchpoint"))


def test_disarmed_it_logs_nothing(tmp_path):
    assert not WriterIO().armed and WriterIO(io_log=str(tmp_path / "a.log")).armed
    assert WriterIO(faults="point=before_gc,action=kill").armed
    os.remove(tmp_path / "a.log")
    with open_checkpointer("torchsave", str(tmp_path / "ck"), CheckpointConfig(chunk_bytes=64 * KiB)) as ck:
        assert not ck._io.armed
        ck.save(1, det_state(1, NBYTES))
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_a_delay_holds_the_save(ckpt_dir):
    import time

    cfg = CheckpointConfig(chunk_bytes=64 * KiB, faults="point=after_commit,action=delay=300")
    with open_checkpointer("torchsave", ckpt_dir, cfg) as ck:
        t0 = time.monotonic()
        ck.save(1, det_state(1, NBYTES))
        assert time.monotonic() - t0 >= 0.3
