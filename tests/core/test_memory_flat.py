"""Host memory stays flat across saves and loads (users have hit checkpointers that leak a
state's worth of host RAM per save until the cgroup OOM-kills the job): many saves through
one checkpointer, then many loads, and the process's resident memory after the warm-up does
not grow with their number."""
from __future__ import annotations

import gc

import psutil
import pytest
import torch

from ckptlab.core import CheckpointConfig, load_latest, open_checkpointer

STATE_BYTES = 24 << 20
SAVES = 16
# a leak of a tenth of the state per save would add 16 x 2.4 MiB; allocator noise is far below
SLACK = 16 << 20


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def _state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"w": torch.randn(STATE_BYTES // 8, generator=g), "m": torch.randn(STATE_BYTES // 8, generator=g),
            "step": step, "lr": 1e-3 / step}


@pytest.mark.parametrize("snapshot", ["sync", "deferred"])
def test_resident_memory_does_not_grow_with_saves(snapshot, ckpt_dir):
    state = _state(1)
    cfg = CheckpointConfig(chunk_bytes=1 << 20, writer_threads=2, snapshot=snapshot, keep_last=2)
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        for step in range(1, 4):  # warm-up: staging, threads, caches
            ck.save(step, state)
            ck.wait()
        before = _rss()
        for step in range(4, 4 + SAVES):
            ck.barrier()
            state["w"].add_(1.0)  # the state changes between saves, as in training
            ck.save(step, state)
            ck.wait()
        after = _rss()
        assert ck.stats()["committed"] == 3 + SAVES
    assert after - before < SLACK, f"{snapshot}: RSS grew {(after - before) >> 20} MiB over {SAVES} saves"


def test_resident_memory_does_not_grow_with_loads(ckpt_dir):
    with open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(chunk_bytes=1 << 20, writer_threads=2)) as ck:
        ck.save(1, _state(1))
    target = _state(2)
    for _ in range(3):
        load_latest(ckpt_dir, state=target)
    before = _rss()
    for _ in range(SAVES):
        _, loaded = load_latest(ckpt_dir, state=target)
        del loaded
    after = _rss()
    assert torch.equal(target["w"], _state(1)["w"])
    assert after - before < SLACK, f"RSS grew {(after - before) >> 20} MiB over {SAVES} loads"
