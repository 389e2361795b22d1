"""Deferred and GPU-buffer snapshots (core/snapshot.py) on CPU tensors: save() returns before
the copies are done, barrier()/guard() order changes after them, changes made too early fail
the checkpoint instead of tearing it, and failures surface at the next call."""
import os
import threading

import pytest
import torch

from ckptlab.core import (CheckpointConfig, CheckpointWriteError, SnapshotTornError, list_checkpoints, load_latest,
                          open_checkpointer)
from ckpt_testutil import assert_state_is_step, det_state

CFG = CheckpointConfig(chunk_bytes=1 << 20, writer_threads=2, snapshot="deferred", keep_last=0)


@pytest.mark.parametrize("mode", ["deferred", "gpu"])
def test_saves_round_trip_bit_exact(mode, ckpt_dir):
    with open_checkpointer("pccheck", ckpt_dir, CFG.replace(snapshot=mode)) as ck:
        for step in (1, 2, 3):
            ck.save(step, det_state(step, 3 << 20))
        ck.wait()
        assert ck.stats()["committed"] == 3 and ck.stats()["snapshot"] == mode
    for step in (1, 2, 3):
        assert_state_is_step(load_latest(ckpt_dir, step=step)[1], step, 3 << 20)


def test_non_contiguous_and_odd_dtypes(ckpt_dir):
    base = torch.arange(4096, dtype=torch.float64).reshape(64, 64)
    state = {"t": base.t(), "strided": base[::3, 1::2], "b": torch.tensor([True, False]),
             "c": torch.randn(5, dtype=torch.complex64).conj(), "bf": torch.randn(7).bfloat16()}
    expected = {k: v.clone() for k, v in state.items()}
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        ck.save(1, state)
    loaded = load_latest(ckpt_dir)[1]
    for k, v in expected.items():
        assert torch.equal(loaded[k], v.resolve_conj()), k


def test_changes_after_barrier_are_not_in_the_checkpoint(ckpt_dir):
    big = torch.zeros(16 << 20, dtype=torch.float32)  # 64 MiB: its copy takes a while
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        for step in (1, 2):
            big.fill_(step)
            ck.save(step, {"big": big})
            ck.barrier()
            big.fill_(-1.0)  # allowed now: the snapshot of `step` is complete
        ck.wait()
    for step in (1, 2):
        t = load_latest(ckpt_dir, step=step)[1]["big"]
        assert bool((t == step).all()), f"step {step} holds values written after barrier()"


def test_guard_runs_the_barrier_before_each_optimizer_step(ckpt_dir):
    torch.manual_seed(0)
    model = torch.nn.Linear(512, 512)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    saved = {}
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        ck.guard(opt)
        for step in range(1, 5):
            model(torch.randn(4, 512)).sum().backward()
            opt.step()  # without the guard this would race with (and be refused for) the snapshot
            opt.zero_grad()
            saved[step] = {k: v.clone() for k, v in model.state_dict().items()}
            ck.save(step, {"model": model, "optim": opt})
        ck.wait()
    for step, expected in saved.items():
        fresh = torch.nn.Linear(512, 512)
        load_latest(ckpt_dir, {"model": fresh}, step=step)
        for k, v in expected.items():
            assert torch.equal(fresh.state_dict()[k], v), (step, k)


def test_change_before_the_copy_fails_that_checkpoint_and_keeps_the_previous(ckpt_dir, copy_gate):
    w = torch.ones(1 << 16)
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        copy_gate.set()
        ck.save(1, {"w": w})
        ck.barrier()
        copy_gate.clear()
        ck.save(2, {"w": w})
        w.add_(1)  # no barrier(), the copy still held: the snapshot of step 2 may be torn
        copy_gate.set()
        with pytest.raises(SnapshotTornError, match=r"step 2 .*'w'.*guard\(optimizer\)") as info:
            ck.wait()
        assert info.value.step == 2 and info.value.names == ["w"]
        ck.save(3, {"w": w})  # the checkpointer keeps working
    assert [c.step for c in list_checkpoints(ckpt_dir) if c.status != "corrupt"] == [1, 3]
    assert torch.equal(load_latest(ckpt_dir, step=1)[1]["w"], torch.ones(1 << 16))
    assert torch.equal(load_latest(ckpt_dir)[1]["w"], torch.full((1 << 16,), 2.0))


def test_torn_snapshot_is_reported_by_the_next_save(ckpt_dir, copy_gate):
    w = torch.ones(1000)
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        ck.save(1, {"w": w})
        w.mul_(3)  # before the held copy
        copy_gate.set()
        with pytest.raises(SnapshotTornError):
            ck.save(2, {"w": w})
    assert list_checkpoints(ckpt_dir) == []


def test_gpu_mode_needs_no_barrier_for_cpu_tensors(ckpt_dir):
    w = torch.ones(1 << 16)
    with open_checkpointer("pccheck", ckpt_dir, CFG.replace(snapshot="gpu")) as ck:
        ck.save(1, {"w": w})
        w.add_(1)  # CPU tensors were copied inside save()
        ck.wait()
    assert torch.equal(load_latest(ckpt_dir)[1]["w"], torch.ones(1 << 16))


def test_write_failure_of_a_deferred_checkpoint_surfaces_at_wait(ckpt_dir):
    cfg = CFG.replace(faults="point=before_chunk_write,step=2,action=eio")
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        ck.save(1, det_state(1))
        ck.save(2, det_state(2))
        with pytest.raises(CheckpointWriteError, match="step 2") as info:
            ck.wait()
        assert info.value.errno == 5
    assert [c.step for c in list_checkpoints(ckpt_dir) if c.status != "corrupt"] == [1]


def test_close_without_wait_commits_the_pending_snapshot_and_stops_the_thread(ckpt_dir):
    ck = open_checkpointer("pccheck", ckpt_dir, CFG)
    ck.save(6, det_state(6))
    ck.save(7, det_state(7))
    assert [t.name for t in threading.enumerate()].count("ckptlab-snapshot") == 1  # one, reused
    ck.close()
    assert "ckptlab-snapshot" not in [t.name for t in threading.enumerate()]
    assert_state_is_step(load_latest(ckpt_dir)[1], 7)


def test_stall_is_shorter_than_the_copy(ckpt_dir):
    """Not a timing assertion: the snapshot is still pending when save() returns."""
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        ck.save(1, {"big": torch.zeros(32 << 20)})
        pending = ck._snapshots.pending
        assert pending is not None and not pending.released.is_set()
        ck.wait()
        assert ck._snapshots.pending is None


def test_guard_rejects_non_optimizers_and_is_removed_at_close(ckpt_dir):
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ck = open_checkpointer("pccheck", ckpt_dir, CFG)
    with pytest.raises(TypeError, match="Optimizer"):
        ck.guard(model)
    ck.guard(opt)
    assert len(opt._optimizer_step_pre_hooks) == 1
    ck.close()
    assert len(opt._optimizer_step_pre_hooks) == 0


def test_bad_snapshot_settings_are_refused(ckpt_dir):
    with pytest.raises(ValueError, match="snapshot must be one of"):
        CheckpointConfig(snapshot="async")
    with pytest.raises(ValueError, match="pinned_host_copies=True"):
        CheckpointConfig(snapshot="deferred", pinned_host_copies=False)
    with pytest.raises(ValueError, match="torchsave saves synchronously"):
        open_checkpointer("torchsave", ckpt_dir, CFG)
    assert os.listdir(ckpt_dir) == []


# --- one copy: straight into staging, chunk by chunk (core/staging_fill.py) -------------------

def test_deferred_state_larger_than_staging_streams_through_it_bit_exact(ckpt_dir):
    """Staging of 2 chunks, a checkpoint of about 6: each chunk is written while later ones are
    still being copied (back-pressure per chunk), and no host copy of the state is kept."""
    cfg = CFG.replace(chunk_bytes=1 << 16, staging_bytes=2 << 16)
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        for step in (1, 2, 3):
            ck.save(step, det_state(step, 6 << 16))
            ck.barrier()
        ck.wait()
        s = ck.stats()
        assert s["committed"] == 3 and s["staging_bytes"] == 2 << 16 and s["snapshot_host_bytes"] == 0
        assert ck.engine.staging_free_buffers == ck.engine.staging_buffers
        # resident staging: whole buffers, at most the pool, and nothing beyond it was ever needed
        assert s["staging_touched_bytes"] in (1 << 16, 2 << 16), s
    for step in (1, 2, 3):
        assert_state_is_step(load_latest(ckpt_dir, step=step)[1], step, 6 << 16)


def test_torn_snapshot_larger_than_staging_commits_nothing_and_returns_every_buffer(ckpt_dir, copy_gate):
    cfg = CFG.replace(chunk_bytes=1 << 16, staging_bytes=2 << 16)
    w = torch.ones(5 << 14)  # 320 KiB: 5+ chunks through 2 staging buffers
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        copy_gate.set()
        ck.save(1, {"w": w})
        ck.wait()
        copy_gate.clear()
        ck.save(2, {"w": w})
        w.add_(1)  # before the held copy
        copy_gate.set()
        with pytest.raises(SnapshotTornError, match="'w'"):
            ck.wait()
        assert ck.engine.wait(30)  # the aborted step's queued chunks are skipped by the writers
        assert ck.engine.staging_free_buffers == ck.engine.staging_buffers
        assert not ck.engine.take_failure(), "the torn step is reported once, as SnapshotTornError"
    assert [c.step for c in list_checkpoints(ckpt_dir)] == [1]
    assert not [n for n in os.listdir(ckpt_dir) if n.startswith(".step")], "the torn step's files are removed"
    assert torch.equal(load_latest(ckpt_dir)[1]["w"], torch.ones(5 << 14))


def test_auto_mode_takes_deferred_for_a_cpu_state(ckpt_dir):
    with open_checkpointer("pccheck", ckpt_dir, CFG.replace(snapshot="auto")) as ck:
        ck.save(1, det_state(1, 1 << 20))
        ck.wait()
        assert ck.stats()["snapshot"] == "auto" and ck.stats()["snapshot_mode"] == "deferred"
    assert_state_is_step(load_latest(ckpt_dir)[1], 1, 1 << 20)


def test_auto_mode_chooses_the_gpu_buffer_only_where_it_fits_with_headroom():
    from ckptlab.core.snapshot import GPU_HEADROOM_BYTES, choose_mode

    d0, d1 = torch.device("cuda", 0), torch.device("cuda", 1)
    gib = 1 << 30
    assert choose_mode({}, {}) == "deferred"
    assert choose_mode({d0: 13 * gib}, {d0: 60 * gib}) == "gpu"          # seed-2048 on an H100
    assert choose_mode({d0: 48 * gib}, {d0: 60 * gib}) == "deferred"     # seed-full on an H100: 12 GiB < 15 GiB headroom
    assert choose_mode({d0: 48 * gib}, {d0: 130 * gib}) == "gpu"         # seed-full on an H200
    assert choose_mode({d0: gib}, {d0: gib + GPU_HEADROOM_BYTES - 1}) == "deferred"
    assert choose_mode({d0: gib, d1: gib}, {d0: 40 * gib, d1: gib}) == "deferred"  # every device must fit


def test_usable_gpu_memory_counts_torchs_cached_blocks(monkeypatch):
    """After a training step torch's allocator keeps gradients' and activations' blocks cached:
    the driver reports them used, but the snapshot buffer can have them."""
    from ckptlab.core import snapshot

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (60 * gib, 141 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda dev: 80 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev: 50 * gib)
    assert snapshot.usable_gpu_bytes(torch.device("cuda", 0)) == 90 * gib
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev: 80 * gib)
    assert snapshot.usable_gpu_bytes(torch.device("cuda", 0)) == 60 * gib


class _Unlisted:
    """A leaf the loader's allowlist does not know."""


def test_a_leaf_that_would_not_load_fails_its_deferred_step_before_anything_is_written(ckpt_dir):
    """The first save checks in save(); later deferred saves leave the check to the snapshot
    thread (off the stall), which fails the step before it opens it: the error comes at the
    next call and the step never reaches the disk."""
    from ckptlab.core import UnsafePickleError

    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        with pytest.raises(UnsafePickleError):
            ck.save(1, {"w": torch.ones(4), "x": _Unlisted()})
        ck.save(2, {"w": torch.ones(4)})
        ck.save(3, {"w": torch.ones(4), "x": _Unlisted()})  # returns: checked on the thread
        with pytest.raises(UnsafePickleError, match="_Unlisted"):
            ck.wait()
        assert ck.engine.take_failure() is None
        ck.save(4, {"w": torch.full((4,), 4.0)})
    assert [c.step for c in list_checkpoints(ckpt_dir)] == [2, 4]
