"""wait(timeout) on every kind: a bool, a deadline that holds while a checkpoint is held in
flight, the same refusal of a bad timeout everywhere."""
import pytest
import torch

from ckptlab.core import KINDS, CheckpointConfig, Checkpointer, open_checkpointer

STATE = {"w": torch.arange(70_000, dtype=torch.float32)}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_a_checkpointer_whose_wait_returns_a_bool(kind, ckpt_dir):
    with open_checkpointer(kind, ckpt_dir, CheckpointConfig(chunk_bytes=64 << 10)) as ck:
        assert isinstance(ck, Checkpointer) and ck.kind == kind
        ck.save(1, STATE)
        assert ck.wait(timeout=30) is True
        assert ck.wait(0) is True and ck.wait() is True
        for bad in (-1, -0.5, float("nan"), "1"):
            with pytest.raises(ValueError, match="timeout"):
                ck.wait(bad)


@pytest.mark.parametrize("snapshot", ["sync", "deferred"])
def test_pccheck_wait_times_out_while_a_checkpoint_is_held(ckpt_dir, snapshot):
    cfg = CheckpointConfig(chunk_bytes=64 << 10, snapshot=snapshot, faults="point=before_rename,action=delay=600")
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        ck.save(1, STATE)
        assert ck.wait(timeout=0.05) is False
        assert ck.latest() is None  # not yet committed: False meant it
        assert ck.wait(timeout=30) is True
        assert ck.latest().step == 1
