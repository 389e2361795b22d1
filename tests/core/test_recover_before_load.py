"""A pccheck checkpointer opens its engine (the directory lock and the repair of leftovers) only
at its first save, to size the staging from the state. A crash between commit steps 4 and 5
while step N was saved again leaves ``.step_N.replaced-*`` as the only copy of step N: a
``latest()``/``load()`` before that first save must see step N as the engine's recovery would,
not fall back to an older step."""
from __future__ import annotations

import os

import torch

from ckptlab.core import CheckpointConfig, open_checkpointer
from ckptlab.core.commit import LOCK_NAME, step_dir_name


def _crashed_between_rename_steps(directory: str) -> None:
    """Steps 1 and 2 committed; then step 2 saved again and killed after step 4 (step_2 moved
    aside) and before step 5 (the new temp dir not yet renamed)."""
    ck = open_checkpointer("pccheck", directory, CheckpointConfig())
    for step in (1, 2):
        ck.save(step, {"w": torch.full((64,), float(step))})
    ck.close()
    name = step_dir_name(2)
    os.rename(os.path.join(directory, name), os.path.join(directory, f".{name}.replaced-crash"))
    os.mkdir(os.path.join(directory, f".{name}.tmp-crash"))  # the half-written new copy


def test_latest_and_load_before_the_first_save_see_the_moved_aside_step(tmp_path):
    directory = str(tmp_path / "ck")
    _crashed_between_rename_steps(directory)
    ck = open_checkpointer("pccheck", directory, CheckpointConfig())
    try:
        info = ck.latest()
        assert info is not None and info.step == 2
        target = {"w": torch.zeros(64)}
        step, _ = ck.load(state=target)
        assert step == 2 and torch.equal(target["w"], torch.full((64,), 2.0))
    finally:
        ck.close()
    names = sorted(os.listdir(directory))
    assert names == sorted([LOCK_NAME, step_dir_name(1), step_dir_name(2)]), names


def test_a_directory_held_by_a_live_writer_is_read_without_repairs(tmp_path):
    directory = str(tmp_path / "ck")
    writer = open_checkpointer("pccheck", directory, CheckpointConfig())
    writer.save(1, {"w": torch.ones(8)})
    writer.wait()
    try:
        reader = open_checkpointer("pccheck", directory, CheckpointConfig())
        info = reader.latest()  # the writer holds the lock: nothing to repair, no error
        assert info is not None and info.step == 1
        reader.close()
    finally:
        writer.close()
