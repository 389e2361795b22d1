"""Deferred/gpu snapshots under random sequences of save, guarded and unguarded changes, barrier
and wait (hypothesis): every checkpoint on disk holds exactly the state of its save() call,
every change made before its deferred copy completed fails exactly that checkpoint
(SnapshotTornError, raised once, at the next save/wait/close), a change after the copy
completed fails nothing, and nothing else is lost. Buffers are reused from save to save, so
a reuse before the engine copied them would show up here as a wrong checkpoint.

Each deferred save's host copy is held until the next operation, so an unguarded change is
deterministically before the copy (``early_change``) or after it (``late_change``); a change
racing the copy's end is the case docs/API.md "Snapshot modes" says cannot be told apart."""
from __future__ import annotations

import tempfile
import threading
from unittest import mock

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptlab.core import CheckpointConfig, SnapshotTornError, list_checkpoints, load_latest, open_checkpointer
from ckptlab.core.snapshot import PendingSnapshot, Snapshotter

OPS = st.sampled_from(["save", "save", "guarded_change", "early_change", "late_change", "barrier", "wait"])


class _CopyGate:
    """Holds the copy into staging of chosen steps until opened (wraps Snapshotter._fill)."""

    def __init__(self) -> None:
        self.held: dict[int, threading.Event] = {}
        self._real = Snapshotter._fill

    def fill(self, p: PendingSnapshot, filler, nbytes: int) -> None:
        gate = self.held.get(p.step)
        if gate is not None:
            assert gate.wait(30), f"the copy of step {p.step} was never let go"
        self._real(p, filler, nbytes)

    def hold(self, step: int) -> None:
        self.held[step] = threading.Event()

    def open(self) -> None:
        for gate in self.held.values():
            gate.set()
        self.held.clear()
CFG = CheckpointConfig(chunk_bytes=1 << 16, writer_threads=2, keep_last=0, max_inflight=2)


def _run(mode: str, ops: list[str], directory: str) -> None:
    big = torch.zeros(96 << 10, dtype=torch.float32)  # 384 KiB: several chunks, a copy that takes a moment
    small = torch.zeros(3, dtype=torch.int64)
    expected: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    torn: set[int] = set()          # steps whose checkpoint must fail
    raised: list[int] = []          # steps reported torn
    unreleased: int | None = None   # deferred: the last save whose barrier has not passed yet
    held: int | None = None         # deferred: the last save whose copy is still held
    gate = _CopyGate()
    step = 0

    def call(fn) -> bool:
        """Run fn; a SnapshotTornError must be the pending torn step's, and releases it."""
        nonlocal unreleased, held
        gate.open()  # every operation lets the held copy go first (barrier and save wait for it)
        held = None
        try:
            fn()
        except SnapshotTornError as e:
            raised.append(e.step)
            assert e.step in torn, f"step {e.step} reported torn but was not changed early"
            assert "big" in " ".join(e.names)
            unreleased = None
            return False
        unreleased = None  # barrier, wait and save all pass the pending snapshot's barrier
        return True

    with mock.patch.object(Snapshotter, "_fill", staticmethod(gate.fill)), \
            open_checkpointer("pccheck", directory, CFG.replace(snapshot=mode)) as ck:
        for op in ops:
            if op == "save":
                step += 1
                state = {"big": big, "opt": {"small": small}, "n": step}
                snapshot = (big.clone(), small.clone())

                def save() -> None:
                    if mode == "deferred":  # after call() opened the gates
                        gate.hold(step)
                    ck.save(step, state)

                if call(save):
                    expected[step] = snapshot
                    unreleased = step if mode == "deferred" else None
                    held = unreleased
            elif op == "guarded_change":  # what guard(optimizer) does before optimizer.step()
                call(ck.barrier)
                big.add_(1.0)
                small.add_(1)
            elif op == "early_change":    # unguarded, before the held copy: tears that snapshot
                if held is not None:
                    torn.add(held)
                big.mul_(-1.0)
            elif op == "late_change":     # unguarded, after the copy completed: harmless
                gate.open()
                held = None
                pending = ck._snapshots.pending
                if pending is not None:
                    assert pending.host_ready.wait(30)
                big.mul_(-1.0)
            elif op == "barrier":
                call(ck.barrier)
            elif op == "wait":
                call(ck.wait)
        gate.open()
        try:
            ck.close()
        except SnapshotTornError as e:
            raised.append(e.step)

    assert sorted(raised) == sorted(torn), "each early change fails exactly its checkpoint, reported once"
    on_disk = {info.step for info in list_checkpoints(directory)}
    assert on_disk == set(expected) - torn
    for s in on_disk:
        loaded = load_latest(directory, step=s)[1]
        assert loaded["n"] == s
        assert torch.equal(loaded["big"], expected[s][0]), f"step {s}: big differs from its save()"
        assert torch.equal(loaded["opt"]["small"], expected[s][1]), f"step {s}: small differs"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=14))
def test_deferred_sequences(ops):
    with tempfile.TemporaryDirectory() as d:
        _run("deferred", ops, d)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=14))
def test_gpu_mode_sequences_need_no_barrier(ops):
    """gpu mode copies CPU tensors inside save(): early changes are harmless there."""
    with tempfile.TemporaryDirectory() as d:
        _run("gpu", ops, d)
