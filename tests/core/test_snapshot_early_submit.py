"""Deferred snapshots are handed to the engine as soon as their copy is done (issue 15): time
to durable does not wait for the next barrier()/optimizer.step(). A change that finished
before the copy did still fails the checkpoint (SnapshotTornError); a change after the copy
is harmless, and the checkpoint holds the values of save(). The copy is held with a gate
around core/snapshot.py's copy_pieces, so no test races the copy thread."""

import pytest
import torch

from ckptlab.core import CheckpointConfig, SnapshotTornError, list_checkpoints, load_latest, open_checkpointer

CFG = CheckpointConfig(chunk_bytes=1 << 20, writer_threads=2, snapshot="deferred", keep_last=0)
HANDOVER_S = 5.0  # generous on a loaded 2-core machine; today the hand-over never comes


def test_checkpoint_is_durable_without_a_barrier(ckpt_dir):
    w = torch.arange(1 << 16, dtype=torch.float32)
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        ck.save(1, {"w": w})
        pending = ck._snapshots.pending
        assert pending.finished.wait(HANDOVER_S), "the snapshot was not handed to the engine before a barrier"
        assert not pending.released.is_set() and pending.error is None
        assert ck.engine.wait(30)  # the engine's own wait: no barrier on the way
        assert [c.step for c in list_checkpoints(ckpt_dir)] == [1]
        ck.barrier()
    assert torch.equal(load_latest(ckpt_dir)[1]["w"], torch.arange(1 << 16, dtype=torch.float32))


def test_change_before_the_copy_finished_fails_that_checkpoint_without_a_barrier(ckpt_dir, copy_gate):
    w = torch.ones(1 << 16)
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        ck.save(1, {"w": w})
        pending = ck._snapshots.pending
        w.add_(1)  # the copy has not started: the snapshot would hold 2s, not the 1s of save()
        copy_gate.set()
        assert pending.finished.wait(HANDOVER_S), "the torn snapshot was only found at the barrier"
        assert isinstance(pending.error, SnapshotTornError) and pending.error.names == ["w"]
        with pytest.raises(SnapshotTornError, match=r"step 1 .*'w'"):
            ck.wait()
        ck.save(2, {"w": w})  # the checkpointer keeps working
    assert [c.step for c in list_checkpoints(ckpt_dir)] == [2]
    assert torch.equal(load_latest(ckpt_dir)[1]["w"], torch.full((1 << 16,), 2.0))


def test_change_after_the_copy_finished_is_not_torn_and_not_in_the_checkpoint(ckpt_dir, copy_gate):
    big = torch.full((4 << 20,), 7.0)  # 16 MiB
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        ck.save(1, {"big": big, "n": 1})
        pending = ck._snapshots.pending
        copy_gate.set()
        assert pending.host_ready.wait(HANDOVER_S)
        big.fill_(-1.0)  # no barrier(): allowed now, the copy is complete
        assert ck.wait(30)
        assert pending.error is None
    loaded = load_latest(ckpt_dir)[1]
    assert loaded["n"] == 1 and bool((loaded["big"] == 7.0).all()), "the checkpoint holds a change made after its copy"
