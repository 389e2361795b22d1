import os

import pytest
import torch

from ckptlab.core import CheckpointConfig, CheckpointWriteError, list_checkpoints, open_checkpointer

SMALL = dict(chunk_bytes=64 * 1024)


def steps(d):
    return [i.step for i in list_checkpoints(d)]


@pytest.mark.parametrize("kind", ["pccheck", "torchsave"])
@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keeps_the_last_k(kind, keep, ckpt_dir):
    with open_checkpointer(kind, ckpt_dir, CheckpointConfig(keep_last=keep, **SMALL)) as ck:
        for s in range(1, 7):
            ck.save(s, {"x": torch.tensor(s)})
            ck.wait()
    assert steps(ckpt_dir) == list(range(7 - keep, 7))


def test_keep_zero_keeps_everything(ckpt_dir):
    with open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(keep_last=0, **SMALL)) as ck:
        for s in range(1, 6):
            ck.save(s, {"x": torch.tensor(s)})
    assert steps(ckpt_dir) == [1, 2, 3, 4, 5]


def test_nothing_is_deleted_when_the_newer_checkpoint_fails(ckpt_dir):
    cfg = CheckpointConfig(keep_last=1, faults="point=before_data_fsync,ckpt=2,action=eio", **SMALL)
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        ck.save(1, {"x": torch.tensor(1)})
        ck.wait()
        ck.save(2, {"x": torch.tensor(2)})
        with pytest.raises(CheckpointWriteError):
            ck.wait()
    assert steps(ckpt_dir) == [1]


def test_retention_never_deletes_checkpoints_newer_than_the_one_committed(ckpt_dir):
    """Resuming from step 2 while a (corrupt or abandoned) step 9 exists: saving step 3 with
    keep_last=1 deletes 1 and 2, never 3 itself nor 9."""
    with open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(keep_last=0, **SMALL)) as ck:
        for s in (1, 2, 9):
            ck.save(s, {"x": torch.tensor(s)})
    with open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(keep_last=1, **SMALL)) as ck:
        ck.save(3, {"x": torch.tensor(3)})
    assert steps(ckpt_dir) == [3, 9]


def test_resaving_an_existing_step_replaces_it(ckpt_dir):
    with open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(keep_last=0, **SMALL)) as ck:
        ck.save(5, {"x": torch.tensor(1)})
    with open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(keep_last=0, **SMALL)) as ck:
        ck.save(5, {"x": torch.tensor(2)})
    from ckptlab.core import load_latest

    assert load_latest(ckpt_dir)[1]["x"].item() == 2
    assert sorted(n for n in os.listdir(ckpt_dir) if not n.startswith(".ckptlab")) == ["step_000000000005"]
