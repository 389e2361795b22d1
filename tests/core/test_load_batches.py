"""Loads read chunks in batches of at most half the load buffer (core/load_pipeline.py): the
same reader, the same errors and the same fallback as one big read, shared storages still
shared, and a corrupt chunk in the last batch changes nothing in the target."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

from ckptlab import _engine
from ckptlab.core import (CheckpointConfig, CorruptCheckpointWarning, NoCheckpointError, load_latest,
                          open_checkpointer)
from ckptlab.core.load_pipeline import Target, read_into
from ckptlab.core.recovery import read_manifest

CHUNK = 64 * 1024
CFG = CheckpointConfig(chunk_bytes=CHUNK, keep_last=0, writer_threads=2)


@pytest.fixture
def read_calls(monkeypatch):
    """Every read_verified call's tasks: (chunk, nbytes) per task."""
    calls: list[list[tuple[int, int]]] = []
    real = _engine.read_verified

    def spy(tasks, *args, **kwargs):
        calls.append([(t[4], t[2]) for t in tasks])
        return real(tasks, *args, **kwargs)

    monkeypatch.setattr(_engine, "read_verified", spy)
    return calls


def _state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    big = torch.randn(100_000, generator=g)  # ~400 KB: spans many 64 KiB chunks
    return {"big": big, "head": big[:10], "tail": big[-7:].view(torch.int32), "tied": big,
            "small": torch.arange(5, dtype=torch.int64) + step, "rows": torch.randn(40, 30, generator=g).t(),
            "step": step}


def _save(ckpt_dir, *steps):
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        for s in steps:
            ck.save(s, _state(s))


def _step_dir(ckpt_dir, step):
    return os.path.join(ckpt_dir, f"step_{step:012d}")


def test_tiny_buffer_reads_every_chunk_once_in_many_batches_within_the_budget(ckpt_dir, read_calls):
    _save(ckpt_dir, 1)
    n_chunks = len(read_manifest(_step_dir(ckpt_dir, 1)).chunks)
    assert n_chunks >= 6
    step, got = load_latest(ckpt_dir, load_buffer_bytes=2 * CHUNK)  # batches of one chunk
    assert step == 1
    assert len(read_calls) == n_chunks
    assert all(sum(n for _, n in call) <= CHUNK for call in read_calls)
    assert sorted(c for call in read_calls for c, _ in call) == list(range(n_chunks))
    expected = _state(1)
    for k, v in expected.items():
        assert torch.equal(got[k], v) if isinstance(v, torch.Tensor) else got[k] == v, k


def test_batches_take_as_many_chunks_as_fit(ckpt_dir, read_calls):
    _save(ckpt_dir, 1)
    n_chunks = len(read_manifest(_step_dir(ckpt_dir, 1)).chunks)
    load_latest(ckpt_dir, load_buffer_bytes=6 * CHUNK)  # three chunks a batch
    assert [len(c) for c in read_calls[:-1]] == [3] * (len(read_calls) - 1)
    assert sum(len(c) for c in read_calls) == n_chunks
    read_calls.clear()
    load_latest(ckpt_dir)  # the default buffer holds this whole checkpoint: one batch
    assert len(read_calls) == 1


def test_shared_storages_stay_shared_across_batches(ckpt_dir, read_calls):
    _save(ckpt_dir, 1)
    got = load_latest(ckpt_dir, load_buffer_bytes=2 * CHUNK)[1]
    assert len(read_calls) > 3
    ptr = got["big"].untyped_storage().data_ptr()
    for k in ("head", "tail", "tied"):
        assert got[k].untyped_storage().data_ptr() == ptr, k
    got["big"][0] = 12345.0  # one storage: a write through one view shows in the others
    assert got["head"][0].item() == 12345.0 and got["tied"][0].item() == 12345.0
    assert torch.equal(got["tail"], _state(1)["tail"])


def _flip_last_chunk(ckpt_dir, step):
    path = _step_dir(ckpt_dir, step)
    m = read_manifest(path)
    last = m.chunks[-1]
    fpath = os.path.join(path, m.files[last.file].name)
    with open(fpath, "r+b") as f:
        f.seek(last.offset + last.nbytes // 2)
        b = f.read(1)[0]
        f.seek(last.offset + last.nbytes // 2)
        f.write(bytes([b ^ 0x10]))
    return len(m.chunks)


def test_a_corrupt_chunk_in_the_last_batch_falls_back_and_leaves_the_target_untouched(ckpt_dir, read_calls):
    _save(ckpt_dir, 1, 2)
    n_chunks = _flip_last_chunk(ckpt_dir, 2)
    target = {"w": torch.full((100_000,), -1.0)}
    before = target["w"].clone()
    with pytest.raises(NoCheckpointError, match="CRC32C"):  # exactly step 2: nothing to fall back to
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CorruptCheckpointWarning)
            load_latest(ckpt_dir, {"big": target["w"]}, step=2, load_buffer_bytes=2 * CHUNK)
    assert len(read_calls) == n_chunks, "every batch before the last was read (and verified) first"
    assert torch.equal(target["w"], before)

    read_calls.clear()
    with pytest.warns(CorruptCheckpointWarning, match="step_000000000002"):
        step, got = load_latest(ckpt_dir, {"big": target["w"]}, load_buffer_bytes=2 * CHUNK)
    assert step == 1 and len(read_calls) > n_chunks  # step 2's batches, then step 1's
    assert torch.equal(target["w"], _state(1)["big"]) and torch.equal(got["big"], _state(1)["big"])


def test_a_bad_chunk_reports_the_same_error_in_batches_as_in_one_read(ckpt_dir):
    _save(ckpt_dir, 1, 2)
    n_chunks = _flip_last_chunk(ckpt_dir, 2)
    path = _step_dir(ckpt_dir, 2)
    m = read_manifest(path)
    c = m.chunks[n_chunks // 2]  # a middle chunk too: the first bad one is named
    with open(os.path.join(path, m.files[c.file].name), "r+b") as f:
        f.seek(c.offset + 3)
        b = f.read(1)[0]
        f.seek(c.offset + 3)
        f.write(bytes([b ^ 0x01]))
    reasons = []
    for buffer_bytes in (2 * CHUNK, 1 << 30):
        with pytest.warns(CorruptCheckpointWarning) as w:
            assert load_latest(ckpt_dir, load_buffer_bytes=buffer_bytes)[0] == 1
        reasons.append(str(w[0].message))
    assert f"chunk {n_chunks // 2} " in reasons[0]
    assert reasons[0] == reasons[1].split(" (and ")[0]  # one read also counts the later bad chunk


def test_staged_copies_assemble_the_same_bytes(tmp_path):
    """The staging path (pinned slots + copies on a CUDA device) run with host buffers: every
    byte lands where the direct read puts it, whatever the batch size."""
    ckpt_dir = tmp_path / "ck"
    _save(ckpt_dir, 3)
    path = _step_dir(ckpt_dir, 3)
    m = read_manifest(path)
    direct = [torch.empty(s.nbytes, dtype=torch.uint8) for s in m.storages]
    read_into(path, m, [Target(s.offset, d) for s, d in zip(m.storages, direct)], threads=2, buffer_bytes=None)
    for buffer_bytes in (2 * CHUNK, 5 * CHUNK, 1 << 30):
        staged = [torch.full((s.nbytes,), 7, dtype=torch.uint8) for s in m.storages]
        stats = read_into(path, m, [Target(s.offset, d, staged=True) for s, d in zip(m.storages, staged)],
                          threads=2, buffer_bytes=buffer_bytes)
        assert stats.staged_bytes <= max(buffer_bytes, 2 * CHUNK)
        assert stats.copied_bytes == sum(s.nbytes for s in m.storages)
        for a, b in zip(direct, staged):
            assert torch.equal(a, b), buffer_bytes


def test_load_buffer_bytes_is_checked():
    with pytest.raises(ValueError, match="load_buffer_bytes"):
        CheckpointConfig(load_buffer_bytes=1000)
