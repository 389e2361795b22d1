"""A dying disk (issue 12 item 5b): from the N-th operation on every write and fsync fails
(``mode=persist`` of the fault spec). The failing checkpoint and every later one fail with
the injected errno, the last durable checkpoint stays intact and loads, wait(timeout)
returns, close() returns; a writer on a healthy disk then saves in the same directory."""
import errno
import os

import pytest

from ckptlab.core import CheckpointConfig, CheckpointWriteError, load_latest, open_checkpointer
from ckpt_testutil import assert_state_is_step, det_state

NBYTES = 300 * 1024
SMALL = dict(chunk_bytes=64 * 1024, writer_threads=2, keep_last=0)


def _save_and_wait(ck, step):
    """save() then wait(timeout): the error either raises, or wait says it is done."""
    ck.save(step, det_state(step, NBYTES))
    assert ck.wait(timeout=60) is True, f"step {step}: wait(timeout) timed out"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["pccheck", "torchsave"])
@pytest.mark.parametrize("where, action, err", [
    ("point=before_chunk_write,hit=7", "eio", errno.EIO),  # in checkpoint 2 (5 chunks each)
    ("point=before_data_fsync,ckpt=2", "edquot", errno.EDQUOT),
    ("point=before_manifest_fsync,hit=2", "eio", errno.EIO),
    ("point=before_rename,hit=2", "enospc", errno.ENOSPC),
    ("point=before_chunk_write,hit=8", "short", errno.ENOSPC),
])
def test_every_checkpoint_from_the_failing_one_on_fails_and_the_last_durable_one_loads(
        kind, where, action, err, ckpt_dir):
    spec = f"{where},action={action},mode=persist"
    ck = open_checkpointer(kind, ckpt_dir, CheckpointConfig(faults=spec, **SMALL))
    _save_and_wait(ck, 1)
    failed = []
    for step in (2, 3, 4):
        try:
            _save_and_wait(ck, step)
        except CheckpointWriteError as e:
            assert e.filename and ckpt_dir in e.filename and str(step) in str(e), e
            failed.append((e.step, e.errno))
    assert failed == [(2, err), (3, err), (4, err)]
    assert ck.latest().step == 1
    ck.close()
    assert sorted(n for n in os.listdir(ckpt_dir) if n.startswith(("step_", ".step_"))) == ["step_000000000001"]
    step, state = load_latest(ckpt_dir)
    assert step == 1
    assert_state_is_step(state, 1, NBYTES)
    with open_checkpointer(kind, ckpt_dir, CheckpointConfig(**SMALL)) as healthy:  # a new disk, same data
        healthy.save(5, det_state(5, NBYTES))
    assert_state_is_step(load_latest(ckpt_dir)[1], 5, NBYTES)
