"""Several checkpoints in flight: out-of-order completion, in-order publication, back-pressure."""
import os

import torch

from ckptlab.core import CheckpointConfig, list_checkpoints, load_latest, open_checkpointer
from ckpt_testutil import assert_state_is_step, det_state

PHASE_FSYNC = 5  # _engine.phase_names().index("fsync")


def _last_fsync_end(trace, ckpt_id):
    ends = [e for c, p, e in zip(trace["ckpt_id"], trace["phase"], trace["t_end_ns"]) if c == ckpt_id and p == PHASE_FSYNC]
    return max(ends)


SLOW_FIRST = "point=before_chunk_write,ckpt=1,hit=1,action=delay=400"


def _run_two_with_slow_first(ckpt_dir):
    # The first chunk of checkpoint 1 is delayed, so checkpoint 2's data is durable first.
    cfg = CheckpointConfig(chunk_bytes=64 * 1024, writer_threads=4, max_inflight=2, trace=True, keep_last=0,
                           faults=SLOW_FIRST)
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        ck.save(1, det_state(1, 256 * 1024))
        ck.save(2, det_state(2, 256 * 1024))
        ck.wait()
        return ck.commit_records(), ck.drain_trace()


def test_later_checkpoint_finishing_first_is_published_after_the_earlier(ckpt_dir):
    records, trace = _run_two_with_slow_first(ckpt_dir)
    assert _last_fsync_end(trace, 2) < _last_fsync_end(trace, 1), "setup: checkpoint 2 must finish data first"
    assert [r["step"] for r in records] == [1, 2] and all(r["ok"] for r in records)
    assert records[0]["t_done_ns"] <= records[1]["t_done_ns"]
    for s in (1, 2):
        assert_state_is_step(load_latest(ckpt_dir, step=s)[1], s, 256 * 1024)


def test_unordered_commit_mutation_changes_the_order(ckpt_dir):
    """The ordering assertion above can fail: the same two saves through an engine without
    ordering (the campaign's mutation, not a checkpointer option) publish 2 first."""
    import numpy as np

    from ckptlab import _engine

    meta = '{"objects":[0,0],"storages":[],"tensors":[]}'
    e = _engine.Engine(ckpt_dir, chunk_bytes=64 * 1024, staging_bytes=1 << 20, writer_threads=4, max_inflight=2,
                       keep_last=0, faults=SLOW_FIRST, unsafe=["unordered_commit"], prefault=False)
    bufs = [np.full(256 * 1024, s, dtype=np.uint8) for s in (1, 2)]
    try:
        for s, b in zip((1, 2), bufs):
            e.submit(s, meta, [(b.ctypes.data, b.nbytes, 0)], b.nbytes)
        assert e.wait(timeout=30)
        assert [r["step"] for r in e.commit_records()] == [2, 1]
    finally:
        e.close()


def test_back_pressure_waits_for_a_free_slot(ckpt_dir):
    cfg = CheckpointConfig(chunk_bytes=64 * 1024, max_inflight=1, keep_last=0,
                           faults="point=before_data_fsync,ckpt=1,hit=1,action=delay=300")
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        ck.save(1, det_state(1, 128 * 1024))
        ck.save(2, det_state(2, 128 * 1024))  # must wait until checkpoint 1 is acknowledged
        ck.wait()
        r1, r2 = ck.commit_records()
    assert r2["t_staged_ns"] >= r1["t_done_ns"]


def test_many_concurrent_saves_all_commit_in_order_and_exact(ckpt_dir):
    faults = ";".join(f"point=before_chunk_write,ckpt={c},hit=1,action=delay={(c * 37) % 60}" for c in range(1, 21))
    cfg = CheckpointConfig(chunk_bytes=64 * 1024, writer_threads=3, max_inflight=3, keep_last=0, faults=faults)
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        for s in range(1, 21):
            ck.save(s, det_state(s, 200 * 1024))
        ck.wait()
        records = ck.commit_records()
    assert [r["step"] for r in records] == list(range(1, 21))
    assert [i.step for i in list_checkpoints(ckpt_dir, verify=True)] == list(range(1, 21))
    for s in (1, 7, 20):
        assert_state_is_step(load_latest(ckpt_dir, step=s)[1], s, 200 * 1024)
    assert not [n for n in os.listdir(ckpt_dir) if n.startswith(".step_")]


def test_staging_memory_is_bounded_and_reused(ckpt_dir):
    cfg = CheckpointConfig(chunk_bytes=64 * 1024, staging_bytes=4 * 64 * 1024, max_inflight=2)
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        region = ck.engine.staging_region
        for s in range(1, 6):
            ck.save(s, {"t": torch.full((100_000,), float(s))})
        ck.wait()
        assert ck.engine.staging_region == region  # same buffers, never reallocated
        assert ck.engine.staging_free_buffers == ck.engine.staging_buffers == 4
    assert load_latest(ckpt_dir)[1]["t"][0].item() == 5.0
