"""The DCP peer kinds behind the checkpointer interface (in process, no process group)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ckptlab.training.checkpointers import (CheckpointMismatchError, DcpCheckpointer,
                                            NoCheckpointError, open_dcp_checkpointer)
from ckptlab.training.data import ResumableSampler, SyntheticTokens
from ckptlab.training.model import build_model
from ckptlab.training.presets import get_preset
from ckptlab.training.rng import RNGState

TINY = get_preset("tiny").model


def _state(seed: int = 0, **shape: int) -> dict:
    torch.manual_seed(seed)
    model = build_model(TINY.replace(**shape))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler = ResumableSampler(SyntheticTokens(model.cfg.vocab_size, 16, 0), 2)
    x, y = sampler.next_batch()
    model(x, y).backward()
    optim.step()
    return {"model": model, "optim": optim, "data": sampler, "rng": RNGState(),
            "extra": {"note": "hello"}}


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("async_save", [False, True])
def test_round_trip_restores_every_entry(tmp_path: Path, async_save: bool) -> None:
    src = _state(seed=0)
    with DcpCheckpointer(tmp_path, async_save=async_save) as ck:
        ck.save(7, src)
        ck.wait()
        assert ck.latest().step == 7
    dst = _state(seed=1)
    dst["data"].next_batch()
    with DcpCheckpointer(tmp_path, async_save=async_save) as ck:
        step, loaded = ck.load(dst)
    assert step == 7 and loaded["extra"] == {"note": "hello"}
    assert _same_tensors(src["model"].state_dict(), dst["model"].state_dict())
    s_opt, d_opt = src["optim"].state_dict()["state"], dst["optim"].state_dict()["state"]
    assert all(_same_tensors(s_opt[i], d_opt[i]) for i in s_opt)
    assert dst["data"].state_dict() == src["data"].state_dict()


def test_async_save_snapshots_before_returning(tmp_path: Path) -> None:
    state = _state()
    before = {k: v.clone() for k, v in state["model"].state_dict().items()}
    with DcpCheckpointer(tmp_path, async_save=True) as ck:
        ck.save(1, state)
        with torch.no_grad():
            for p in state["model"].parameters():
                p.add_(1.0)  # training goes on while the checkpoint persists
        ck.wait()
        ck.load(state)
    assert _same_tensors(before, state["model"].state_dict())


def test_only_committed_directories_count_and_retention_keeps_the_newest(tmp_path: Path) -> None:
    state = _state()
    with DcpCheckpointer(tmp_path, keep_last=2) as ck:
        for step in (1, 2, 3):
            ck.save(step, state)
    names = sorted(os.listdir(tmp_path))
    assert names == ["step_000000000002", "step_000000000003"]
    (tmp_path / ".step_000000000004.partial").mkdir()  # a crashed write
    (tmp_path / "step_000000000009").mkdir()  # no .metadata: never committed by us
    assert DcpCheckpointer(tmp_path).latest().step == 3
    assert not (tmp_path / ".step_000000000004.partial").exists()  # cleaned on open


def test_empty_directory_has_nothing_to_load(tmp_path: Path) -> None:
    with pytest.raises(NoCheckpointError):
        DcpCheckpointer(tmp_path).load(_state())


def test_other_model_shape_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    with DcpCheckpointer(tmp_path) as ck:
        ck.save(1, _state())
    with pytest.raises(CheckpointMismatchError, match="tok_embeddings.weight"):
        DcpCheckpointer(tmp_path).load(_state(dim=96, n_heads=4))
    with pytest.raises(CheckpointMismatchError, match="layers.2"):
        DcpCheckpointer(tmp_path).load(_state(n_layers=3))


def test_factory_used_by_core_open_checkpointer(tmp_path: Path) -> None:
    class Config:
        max_inflight, writer_threads, keep_last = 3, 2, 0

    ck = open_dcp_checkpointer("dcp-async", tmp_path, Config())
    assert ck.async_save and ck.max_inflight == 3 and ck.thread_count == 2 and ck.keep_last == 0
    with pytest.raises(ValueError):
        open_dcp_checkpointer("pccheck", tmp_path)


def test_async_back_pressure_commits_every_checkpoint(tmp_path: Path) -> None:
    state = _state()
    with DcpCheckpointer(tmp_path, async_save=True, max_inflight=1, keep_last=0) as ck:
        for step in (1, 2, 3):
            ck.save(step, state)
        ck.wait()
        assert len(ck.stats()["time_to_durable_s"]) == 3
    assert sorted(os.listdir(tmp_path)) == [f"step_{s:012d}" for s in (1, 2, 3)]


def test_a_failed_write_raises_and_keeps_the_previous_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckptlab.training.checkpointers import CheckpointError

    state = _state()
    ck = DcpCheckpointer(tmp_path)
    ck.save(1, state)

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck._dcp, "save", broken_save)
    with pytest.raises(CheckpointError, match="step 2.*No space left"):
        ck.save(2, state)
    assert sorted(os.listdir(tmp_path)) == ["step_000000000001"]
