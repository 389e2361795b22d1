"""The Python stages of the torchsave, dcp and dcp-async checkpointers are traced phases
(docs/TRACE.md, "Python phases"): each save records them with its step, nested inside the
caller's ``save`` range (the completion side of dcp-async: inside save .. wait)."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from torch import nn

from training_helpers import skip_without_core

pytest.importorskip("pyarrow")

STEP = 5

# Phases each kind records on the caller's thread inside save(), in order.
CALLER = {
    "torchsave": ["capture", "serialize", "digest", "file_write", "file_fsync", "file_write",
                  "file_fsync", "dir_commit", "retain"],
    "dcp": ["capture", "serialize", "dcp_save", "file_write", "file_fsync", "dir_commit", "retain"],
    "dcp-async": ["capture", "serialize", "dcp_async_save"],
}
# dcp-async commits where DCP completes the write: its thread, after save() returned (or, when
# the write finished before save() registered its callback, inline at the end of save()).
COMPLETION = {"dcp-async": ["file_write", "file_fsync", "dir_commit", "retain"]}
WITH_BYTES = {"serialize", "digest", "file_write", "file_fsync"}


def _state() -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(8, 16)).sum().backward()
    optim.step()
    return {"model": model, "optim": optim, "extra": {"note": "hello"}}


def _open(kind: str, directory: Path, **config):
    from ckptlab.core import CheckpointConfig, open_checkpointer
    return open_checkpointer(kind, str(directory), CheckpointConfig(**config))


def _records(path: str) -> list[dict]:
    from ckptlab.profiling import read_trace
    table = read_trace(path)
    rows = table.select(["phase", "step", "thread", "nbytes", "t_begin_ns", "t_end_ns"]).to_pylist()
    return sorted(rows, key=lambda r: (r["t_begin_ns"], -r["t_end_ns"]))


def _inside(inner: dict, outer: dict) -> bool:
    return outer["t_begin_ns"] <= inner["t_begin_ns"] <= inner["t_end_ns"] <= outer["t_end_ns"]


@pytest.mark.parametrize("kind", ["torchsave", "dcp", "dcp-async"])
def test_save_records_its_stages_inside_the_save_range(tmp_path: Path, kind: str) -> None:
    skip_without_core(kind)
    from ckptlab.profiling import phase, start_trace

    state = _state()
    ck = _open(kind, tmp_path / "ckpt", keep_last=1)
    session = start_trace(tmp_path / "trace.arrow")
    try:
        with phase("save", step=STEP):
            ck.save(STEP, state)
        with phase("wait", step=STEP):
            ck.wait()
        ck.close()
    finally:
        path = session.close()

    rows = _records(path)
    outer_save = [r for r in rows if r["phase"] == "save"]
    outer_wait = [r for r in rows if r["phase"] == "wait"]
    assert len(outer_save) == 1 and len(outer_wait) == 1, [r["phase"] for r in rows]
    save, wait = outer_save[0], outer_wait[0]
    caller = save["thread"]

    completion = COMPLETION.get(kind, [])
    inside_save = [r for r in rows if r is not save and r["thread"] == caller and _inside(r, save)
                   and r["phase"] not in completion]
    assert [r["phase"] for r in inside_save] == CALLER[kind]
    for r in inside_save:
        assert r["step"] == STEP, r
        if r["phase"] in WITH_BYTES and (kind == "torchsave" or r["phase"].startswith("file_")):
            assert r["nbytes"] > 0, r

    if kind == "torchsave":
        step_dir = tmp_path / "ckpt" / f"step_{STEP:012d}"
        writes = [r["nbytes"] for r in inside_save if r["phase"] == "file_write"]
        assert writes == [(step_dir / "state.pt").stat().st_size, (step_dir / "MANIFEST").stat().st_size]
        commit = next(r for r in inside_save if r["phase"] == "dir_commit")
        assert commit["nbytes"] == writes[0]

    if completion:
        window = {"t_begin_ns": save["t_begin_ns"], "t_end_ns": wait["t_end_ns"]}
        later = [r for r in rows if r["phase"] in completion]
        assert [r["phase"] for r in later] == completion
        assert len({r["thread"] for r in later}) == 1
        async_call = next(r for r in inside_save if r["phase"] == "dcp_async_save")
        for r in later:
            assert r["step"] == STEP and _inside(r, window), r
            assert r["t_begin_ns"] >= async_call["t_begin_ns"]
    # every stage record of this save is accounted for
    stages = set(CALLER[kind]) | set(completion)
    assert sum(r["phase"] in stages for r in rows) == len(CALLER[kind]) + len(completion)


class _OpensGate(threading.Event):
    """A pending checkpoint's done-event that lets its write finish once save() waits on it."""

    def __init__(self, gate: threading.Event, done: threading.Event) -> None:
        super().__init__()
        self.gate = gate
        if done.is_set():
            self.set()

    def wait(self, timeout: float | None = None) -> bool:
        self.gate.set()
        return super().wait(timeout)


def test_dcp_async_back_pressure_is_a_wait_inside_save(tmp_path: Path, monkeypatch) -> None:
    """max_inflight=1 and a first checkpoint held in flight: the second save() waits for it,
    recorded as `wait` (step: the checkpoint waited for) inside that save's range."""
    import torch.distributed.checkpoint as dcp

    from ckptlab.profiling import phase, start_trace

    gate = threading.Event()
    real_async_save = dcp.async_save

    def held_async_save(*args, **kwargs):  # completes only once the gate opens
        result = real_async_save(*args, **kwargs)
        inner: Future = getattr(result, "upload_completion", result)
        outer: Future = Future()

        def relay() -> None:
            gate.wait(60)
            try:
                outer.set_result(inner.result())
            except BaseException as exc:  # noqa: BLE001 - handed to the checkpointer
                outer.set_exception(exc)

        threading.Thread(target=relay, daemon=True).start()
        return outer

    monkeypatch.setattr(dcp, "async_save", held_async_save)
    state = _state()
    ck = _open("dcp-async", tmp_path / "ckpt", max_inflight=1, keep_last=0)
    session = start_trace(tmp_path / "trace.arrow")
    try:
        with phase("save", step=1):
            ck.save(1, state)
        pending = ck._pending[0]
        pending.done = _OpensGate(gate, pending.done)
        with phase("save", step=2):
            ck.save(2, state)
        ck.close()
    finally:
        gate.set()
        path = session.close()
    assert ck.latest().step == 2

    rows = _records(path)
    saves = {r["step"]: r for r in rows if r["phase"] == "save"}
    waits = [r for r in rows if r["phase"] == "wait"]
    assert len(waits) == 1, waits
    assert waits[0]["step"] == 1 and waits[0]["thread"] == saves[2]["thread"]
    assert _inside(waits[0], saves[2]) and not _inside(waits[0], saves[1])
    # the wait comes first in save(2): before its capture
    capture2 = next(r for r in rows if r["phase"] == "capture" and r["step"] == 2)
    assert waits[0]["t_end_ns"] <= capture2["t_begin_ns"]


# torchsave loads as pccheck; dcp under -m slow (its load record in process: tests/core/test_dcp.py)
@pytest.mark.parametrize("kind", ["pccheck", pytest.param("torchsave", marks=pytest.mark.slow),
                                  pytest.param("dcp", marks=pytest.mark.slow)])
def test_only_a_resumed_run_records_a_load(tmp_path, kind: str) -> None:
    """`load` is the checkpointer's reading of one checkpoint: none in a fresh run, one with the
    checkpoint's step in a resumed run."""
    from training_helpers import train

    from ckptlab.profiling import read_trace

    ck = tmp_path / "ck"
    common = ["--checkpointer", kind, "--training-steps", "4", "--checkpoint-freq", "2", "--ckpt-dir", ck]
    fresh = train(*common, "--trace", tmp_path / "fresh.arrow")
    assert fresh.returncode == 0, fresh.stderr
    resumed = train(*common[:3], "6", *common[4:], "--load-checkpoint", "--trace", tmp_path / "resumed.arrow")
    assert resumed.returncode == 0, resumed.stderr

    def loads(name: str) -> list[int]:
        df = read_trace(tmp_path / name).to_pandas()
        return df[df.phase.astype(str) == "load"].step.tolist()

    assert loads("fresh.arrow") == []
    assert loads("resumed.arrow") == [4]
