"""core/dcp.py: the DCP peer kinds behind the checkpointer protocol (in process, no process
group), on the commit protocol of core/commit.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ckptlab.core import (CheckpointConfig, CheckpointError, CheckpointMismatchError, Checkpointer,
                          NoCheckpointError, open_checkpointer)
from ckptlab.core.dcp import DcpCheckpointer
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


def _dcp(path: Path, async_save: bool = False, **config: object) -> DcpCheckpointer:
    return open_checkpointer("dcp-async" if async_save else "dcp", path, CheckpointConfig(**config))


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("async_save", [False, True])
def test_round_trip_restores_every_entry(tmp_path: Path, async_save: bool) -> None:
    src = _state(seed=0)
    with _dcp(tmp_path, async_save) as ck:
        ck.save(7, src)
        ck.wait()
        assert ck.latest().step == 7
    dst = _state(seed=1)
    dst["data"].next_batch()
    with _dcp(tmp_path, async_save) as ck:
        step, loaded = ck.load(dst)
    assert step == 7 and loaded["extra"] == {"note": "hello"}
    assert _same_tensors(src["model"].state_dict(), dst["model"].state_dict())
    s_opt, d_opt = src["optim"].state_dict()["state"], dst["optim"].state_dict()["state"]
    assert all(_same_tensors(s_opt[i], d_opt[i]) for i in s_opt)
    assert dst["data"].state_dict() == src["data"].state_dict()


def test_a_load_without_a_state_returns_the_saved_tensors(tmp_path: Path) -> None:
    """load() with no objects to restore into returns what was saved, tensors included (as
    every other kind does), instead of only the side file's entries."""
    src = _state(seed=0)
    with _dcp(tmp_path) as ck:
        ck.save(3, src)
        ck.wait()
    with _dcp(tmp_path) as ck:
        step, loaded = ck.load()
    assert step == 3 and loaded["extra"] == {"note": "hello"}
    assert _same_tensors(src["model"].state_dict(), loaded["model"])


def test_async_save_snapshots_before_returning(tmp_path: Path) -> None:
    state = _state()
    before = {k: v.clone() for k, v in state["model"].state_dict().items()}
    with _dcp(tmp_path, True) as ck:
        ck.save(1, state)
        with torch.no_grad():
            for p in state["model"].parameters():
                p.add_(1.0)  # training goes on while the checkpoint persists
        ck.wait()
        ck.load(state)
    assert _same_tensors(before, state["model"].state_dict())


def test_only_committed_directories_count_and_retention_keeps_the_newest(tmp_path: Path) -> None:
    state = _state()
    with _dcp(tmp_path, keep_last=2) as ck:
        for step in (1, 2, 3):
            ck.save(step, state)
    names = sorted(n for n in os.listdir(tmp_path) if n != ".ckptlab.lock")
    assert names == ["step_000000000002", "step_000000000003"]
    (tmp_path / ".step_000000000004.tmp-1-0").mkdir()  # a crashed write
    (tmp_path / "step_000000000009").mkdir()  # no .metadata: never committed by us
    with _dcp(tmp_path) as ck:
        assert ck.latest().step == 3
    assert not (tmp_path / ".step_000000000004.tmp-1-0").exists()  # cleaned on open


def test_a_moved_aside_copy_is_restored_on_open(tmp_path: Path) -> None:
    """A crash between moving step_N aside and renaming the new one in leaves the only copy
    of step N under a .replaced- name; opening restores it (the engine does the same)."""
    state = _state()
    with _dcp(tmp_path) as ck:
        ck.save(5, state)
    os.rename(tmp_path / "step_000000000005", tmp_path / ".step_000000000005.replaced-1-0")
    with _dcp(tmp_path) as ck:
        assert ck.latest().step == 5
        assert ck.load(_state(seed=3))[0] == 5


def test_retention_never_deletes_a_committed_name_in_place(tmp_path: Path, monkeypatch) -> None:
    """Older checkpoints are renamed away before they are deleted, so a crash during
    retention never leaves a half-deleted step_N for a reader to trust."""
    from ckptlab.core.writer_io import WriterIO

    deleted: list[str] = []
    real = WriterIO.remove_tree
    monkeypatch.setattr(WriterIO, "remove_tree",
                        lambda self, p: (deleted.append(os.path.basename(str(p))), real(self, p))[1])
    with _dcp(tmp_path, keep_last=1) as ck:
        ck.save(1, _state())
        ck.save(2, _state())
    assert deleted and all(".deleting-" in name for name in deleted if "step_000000000001" in name)


def test_empty_directory_has_nothing_to_load(tmp_path: Path) -> None:
    with _dcp(tmp_path) as ck, pytest.raises(NoCheckpointError):
        ck.load(_state())


def test_other_model_shape_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    with _dcp(tmp_path) as ck:
        ck.save(1, _state())
        with pytest.raises(CheckpointMismatchError, match="tok_embeddings.weight"):
            ck.load(_state(dim=96, n_heads=4))
        with pytest.raises(CheckpointMismatchError, match="layers.2"):
            ck.load(_state(n_layers=3))


def test_opened_through_the_registry_with_its_config(tmp_path: Path) -> None:
    with _dcp(tmp_path, True, max_inflight=3, writer_threads=2, keep_last=0) as ck:
        assert isinstance(ck, Checkpointer) and ck.kind == "dcp-async" and ck.async_save
        assert ck.config.max_inflight == 3 and ck.config.writer_threads == 2 and ck.config.keep_last == 0
    for bad, field in ((dict(snapshot="deferred"), "snapshot"), (dict(writer_cpus="0"), "writer_cpus")):
        with pytest.raises(ValueError, match=f"CheckpointConfig.{field}"):
            _dcp(tmp_path, **bad)


def test_wait_with_a_timeout_reports_what_is_still_in_flight(tmp_path: Path, monkeypatch) -> None:
    import threading

    release = threading.Event()
    with _dcp(tmp_path, True) as ck:
        real = ck._commit
        monkeypatch.setattr(ck, "_commit", lambda *a: (release.wait(10), real(*a)))
        ck.save(1, _state())
        assert ck.wait(timeout=0.05) is False
        release.set()
        assert ck.wait(timeout=10) is True
        assert ck.latest().step == 1
        with pytest.raises(ValueError, match="timeout"):
            ck.wait(timeout=-1)


def test_async_back_pressure_commits_every_checkpoint(tmp_path: Path) -> None:
    state = _state()
    with _dcp(tmp_path, True, max_inflight=1, keep_last=0) as ck:
        for step in (1, 2, 3):
            ck.save(step, state)
        ck.wait()
        assert len(ck.stats()["time_to_durable_s"]) == 3
    assert sorted(n for n in os.listdir(tmp_path) if n != ".ckptlab.lock") == [f"step_{s:012d}" for s in (1, 2, 3)]


def test_a_failed_write_raises_and_keeps_the_previous_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state()
    ck = _dcp(tmp_path)
    ck.save(1, state)

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck._dcp, "save", broken_save)
    with pytest.raises(CheckpointError, match="step 2.*No space left"):
        ck.save(2, state)
    ck.close()
    assert sorted(os.listdir(tmp_path)) == [".ckptlab.lock", "step_000000000001"]


@pytest.mark.parametrize("async_save", [False, True])
def test_commit_protocol_points_fail_that_checkpoint_only(tmp_path: Path, async_save: bool) -> None:
    """Armed, DCP passes the commit protocol's points (core/writer_io.py): an error injected
    before checkpoint 2's rename fails that checkpoint, step 1 stays, step 3 commits; the
    points DCP's own file writes would pass are not in its log."""
    log = tmp_path / "io.log"
    os.environ["CKPTLAB_IO_LOG_DATA"] = "0"  # the autouse fixture removes it again
    with _dcp(tmp_path / "ck", async_save, faults="point=before_rename,ckpt=2,action=eio", io_log=str(log)) as ck:
        ck.save(1, _state())
        ck.wait()
        with pytest.raises(CheckpointError, match="Input/output error"):
            ck.save(2, _state())  # dcp raises here, dcp-async at the wait
            ck.wait()
        ck.save(3, _state())
        ck.wait()
        assert [s for s, _ in ck._committed()] == [1, 3]
    points = {line.split("\t")[6].split()[0] for line in log.read_text().splitlines()
              if line.split("\t")[5] == "point"}
    assert points == {"point=" + p for p in ("before_tmpdir_fsync", "before_rename", "after_rename", "after_commit",
                                             "before_gc")}


def test_a_load_is_one_load_record_with_its_step(tmp_path: Path) -> None:
    """As core's load (docs/TRACE.md): one `load` record per checkpoint read, with its step;
    saving records none (the training loop's subprocess variant is under -m slow)."""
    from ckptlab.profiling import read_trace, start_trace

    ck = open_checkpointer("dcp", tmp_path / "ck", CheckpointConfig())
    with start_trace(tmp_path / "t.arrow", ck):
        ck.save(2, _state())
        ck.wait()
        ck.load(state=_state(seed=1))
    ck.close()
    df = read_trace(tmp_path / "t.arrow").to_pandas()
    assert df[df.phase.astype(str) == "load"].step.tolist() == [2]  # the save recorded none
