"""SIGKILL at every fault point of the protocol: recovery returns exactly the last
acknowledged checkpoint or a newer committed one, never a mix, never a torn one."""
import os
import signal
import subprocess
import sys

import pytest

from ckptlab import _engine
from ckptlab.core import CheckpointConfig, NoCheckpointError, load_latest, open_checkpointer
from ckpt_testutil import REPO, assert_state_is_step, child_env, det_state

CHILD = os.path.join(os.path.dirname(__file__), "crash_child.py")
NBYTES = 400 * 1024
NSTEPS = 4


def run_child(ckpt_dir, ack_path, spec, keep=1):
    return subprocess.run([sys.executable, CHILD, ckpt_dir, ack_path, str(NSTEPS), str(NBYTES), str(keep)],
                          env=child_env(CKPTLAB_FAULTS=spec), cwd=REPO, capture_output=True, text=True, timeout=120)


def last_ack(ack_path):
    if not os.path.exists(ack_path):
        return None
    lines = [int(x) for x in open(ack_path).read().split()]
    return max(lines) if lines else None


def check_oracle(ckpt_dir, acked):
    try:
        step, state = load_latest(ckpt_dir)
    except NoCheckpointError:
        assert acked is None or acked < 1, f"step {acked} was acknowledged but nothing is recoverable"
        return None
    assert acked is None or step >= acked, f"recovered step {step} is older than acknowledged step {acked}"
    assert_state_is_step(state, step, NBYTES)  # bit-identical to what was saved at that step
    return step


@pytest.mark.parametrize("point", _engine.fault_points())
def test_sigkill_at_every_fault_point(point, tmp_path):
    ckpt_dir, ack = str(tmp_path / "ckpt"), str(tmp_path / "ack")
    os.mkdir(ckpt_dir)
    r = run_child(ckpt_dir, ack, f"point={point},ckpt=2,action=kill")
    assert r.returncode == -signal.SIGKILL, f"fault point {point} did not fire: rc={r.returncode} {r.stderr}"
    check_oracle(ckpt_dir, last_ack(ack))
    # a new writer cleans the debris and continues
    with open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(chunk_bytes=64 * 1024)) as ck:
        ck.save(10, det_state(10, NBYTES))
    assert not [n for n in os.listdir(ckpt_dir) if n.startswith(".step_")]
    assert_state_is_step(load_latest(ckpt_dir)[1], 10, NBYTES)


@pytest.mark.parametrize("point", ["before_chunk_write", "after_data_fsync", "before_rename", "after_rename"])
@pytest.mark.parametrize("hit", [1, 3])
def test_sigkill_at_later_occurrences(point, hit, tmp_path):
    ckpt_dir, ack = str(tmp_path / "ckpt"), str(tmp_path / "ack")
    os.mkdir(ckpt_dir)
    r = run_child(ckpt_dir, ack, f"point={point},hit={hit},action=kill", keep=0)
    assert r.returncode == -signal.SIGKILL, r.stderr
    check_oracle(ckpt_dir, last_ack(ack))


def test_without_faults_the_child_finishes_and_everything_is_acknowledged(tmp_path):
    ckpt_dir, ack = str(tmp_path / "ckpt"), str(tmp_path / "ack")
    os.mkdir(ckpt_dir)
    r = run_child(ckpt_dir, ack, "")
    assert r.returncode == 0 and "FINISHED" in r.stdout, r.stderr
    assert last_ack(ack) == NSTEPS
    assert check_oracle(ckpt_dir, NSTEPS) == NSTEPS
