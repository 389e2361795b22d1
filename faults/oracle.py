"""The campaign's oracle: what must hold after any crash (docs/BACKGROUND.md §2, docs/FAULTS.md).

- O1 never torn, never a mix: every checkpoint that verifies holds, bit for bit, the state
  saved at its step (tensors are PRNG streams of (seed, step, name): faults/payload.py), and
  the loader returns one of them or raises NoCheckpointError.
- O2 durability: the loaded step is the newest valid one, it was saved by the run, and it is
  >= the last acknowledged step; with no acknowledgement, "no checkpoint" is allowed. Commits
  are published in step order: among the steps one session saved, the valid ones on disk
  have no hole (a later step committed while an earlier, not failed one is missing), and the
  engine's acknowledgement history is increasing.
- O3 error honesty: an injected I/O error fails that checkpoint (reported, never
  acknowledged, never on disk) and the previous one stays loadable.
- O4 recoverability: a new writer in the same directory saves and loads again, twice alike.
- O5 detection: corruption of a committed checkpoint is detected; the loader falls back.

Process crashes (SIGKILL) are held to more: no committed-looking directory may fail to
verify, since everything before the commit rename was written and fsynced.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from ckptlab.faults.payload import TensorSpec, check_state


@dataclass
class History:
    """What the saver child recorded (faults/saver.py) before it ended or was killed."""

    sessions: list[list[int]] = field(default_factory=list)  # steps submitted, per session
    commits: list[tuple[int, bool]] = field(default_factory=list)  # engine order
    failures: list[tuple[int, int, str]] = field(default_factory=list)
    errors: list[tuple[int, int]] = field(default_factory=list)
    done: bool = False
    freed: bool = False
    sealed: set[int] = field(default_factory=set)  # streams the saver was about to seal ("seal S")

    @property
    def submitted(self) -> list[int]:
        return [s for sess in self.sessions for s in sess]

    @property
    def acked(self) -> list[int]:
        return [s for s, ok in self.commits if ok]

    @property
    def max_acked(self) -> int | None:
        a = self.acked
        return max(a) if a else None

    @property
    def failed(self) -> set[int]:
        return {s for s, ok in self.commits if not ok} | {f[0] for f in self.failures} | {e[0] for e in self.errors}


def read_history(path: str) -> History:
    h = History()
    if not os.path.exists(path):
        return h
    with open(path) as f:
        lines = f.read().split("\n")
    for line in lines[:-1]:  # the last piece is "" or a torn line
        parts = line.split()
        if not parts:
            continue
        kind = parts[0]
        if kind == "open":
            h.sessions.append([])
        elif kind == "submit":
            if not h.sessions:
                h.sessions.append([])
            h.sessions[-1].append(int(parts[1]))
        elif kind == "commit":
            h.commits.append((int(parts[1]), parts[2] == "1"))
        elif kind == "fail":
            h.failures.append((int(parts[1]), int(parts[2]), parts[3] if len(parts) > 3 else ""))
        elif kind == "error":
            h.errors.append((int(parts[1]), int(parts[2])))
        elif kind == "seal":
            h.sealed.add(int(parts[1]))
        elif kind == "freed":
            h.freed = True
        elif kind == "done":
            h.done = True
    return h


@dataclass
class DiskCheck:
    loaded_step: int | None
    valid: list[int]
    corrupt: dict[int, str]
    violations: list[str]


def _quiet_load(directory: str, step: int | None = None):
    """load_latest without its skip warnings (skipping damage is what the oracle expects)."""
    from ckptlab.core import load_latest

    logger = logging.getLogger("ckptlab")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_latest(directory, step=step, threads=2)
    finally:
        logger.setLevel(level)


def check_directory(directory: str, layout: list[TensorSpec], seed: int, *, acked: int | None,
                    sessions: list[list[int]], failed: set[int] = frozenset(),
                    strict_committed: bool = False) -> DiskCheck:
    """O1 + O2 on a checkpoint directory after a crash."""
    from ckptlab.core import CheckpointError, NoCheckpointError
    from ckptlab.core.commit import committed_step_dirs

    submitted = {s for sess in sessions for s in sess}
    others = tuple(sorted(submitted))
    v: list[str] = []
    valid: list[int] = []
    corrupt: dict[int, str] = {}
    for step, _path in committed_step_dirs(directory):
        try:
            s, state = _quiet_load(directory, step=step)
        except (NoCheckpointError, CheckpointError) as e:
            corrupt[step] = str(e)[-300:]
            if strict_committed:
                v.append(f"committed checkpoint step {step} does not verify after a process crash: {str(e)[-200:]}")
            continue
        if step not in submitted:
            v.append(f"step {step} is on disk but was never saved")
            continue
        problem = check_state(state, layout, seed, s, others)
        if problem:
            v.append(f"step {step} verifies but holds wrong bytes: {problem}")
            continue
        valid.append(step)
    try:
        loaded, state = _quiet_load(directory)
    except NoCheckpointError:
        loaded = None
        if acked is not None:
            v.append(f"step {acked} was acknowledged but no checkpoint loads")
    except CheckpointError as e:
        loaded = None
        v.append(f"the loader raised {type(e).__name__} instead of falling back: {str(e)[-200:]}")
    if loaded is not None:
        problem = check_state(state, layout, seed, loaded, others)
        if problem:
            v.append(f"loaded step {loaded} is not what was saved: {problem}")
        if valid and loaded != max(valid):
            v.append(f"loaded step {loaded} but newer valid step {max(valid)} exists")
        if acked is not None and loaded < acked:
            v.append(f"loaded step {loaded} is older than the acknowledged step {acked} (acknowledged data lost)")
    # Commits in step order: no hole among the steps one session saved.
    for sess in sessions:
        on_disk = sorted(s for s in valid if s in sess)
        if len(on_disk) >= 2:
            holes = [c for c in sess if on_disk[0] < c < on_disk[-1] and c not in valid and c not in failed]
            if holes:
                v.append(f"steps {on_disk} are committed but {holes} (saved between them, not failed) are missing: "
                         "commits were not published in step order")
    return DiskCheck(loaded, valid, corrupt, v)


def check_commit_order(commits: list[tuple[int, bool]]) -> str | None:
    """The engine reports checkpoints (committed or failed) in step order, within a session."""
    steps = [s for s, _ in commits]
    for a, b in itertools.pairwise(steps):
        if b < a:
            return f"the engine acknowledged step {b} after step {a}: commits out of step order ({steps})"
    return None


def check_recoverable(directory: str, layout: list[TensorSpec], seed: int, step: int, plan: dict[str, Any] | None,
                      io_mode: str = "auto", writer: str = "pccheck") -> str | None:
    """O4: a fresh writer of the crashed run's kind (the engine for pccheck, which submits
    ``plan``; a torchsave checkpointer for torchsave) cleans up, saves ``step`` and loads it
    back, twice alike."""
    try:
        problem = _save_torchsave(directory, layout, seed, step) if writer == "torchsave" else \
            _save_engine(directory, layout, seed, step, plan or {}, io_mode)
        if problem:
            return problem
        leftovers = [n for n in os.listdir(directory) if n.startswith(".step_") and ".tmp-" in n]
        if leftovers:
            return f"temp directories survive a new writer: {leftovers}"
        first, state = _quiet_load(directory)
        if first != step:
            return f"after a new save of step {step}, the loader returned step {first}"
        problem = check_state(state, layout, seed, step)
        if problem:
            return f"the new save of step {step} does not load back: {problem}"
        again, _ = _quiet_load(directory)
        if again != first:
            return f"loading twice gave steps {first} and {again}"
    except Exception as e:  # noqa: BLE001 - any exception here is the finding
        return f"recovery raised {type(e).__name__}: {e}"
    return None


def _save_engine(directory: str, layout: list[TensorSpec], seed: int, step: int, plan: dict[str, Any],
                 io_mode: str) -> str | None:
    from ckptlab import _engine
    from ckptlab.faults.saver import segments_for

    meta, segments, keep = segments_for(plan, layout, seed, step)
    eng = _engine.Engine(directory, writer_threads=2, chunk_bytes=64 << 10, staging_bytes=1 << 20,
                         keep_last=0, io_mode=io_mode, prefault=False)
    try:
        eng.submit(step, meta, segments, plan["total_bytes"])
        del keep
        eng.wait()
        f = eng.take_failure()
        if f is not None:
            return f"a new writer could not save after the crash: {f['message']}"
    finally:
        eng.close()
    return None


def _save_torchsave(directory: str, layout: list[TensorSpec], seed: int, step: int) -> str | None:
    from ckptlab.core import CheckpointConfig, CheckpointWriteError, open_checkpointer
    from ckptlab.faults.payload import state_for

    try:
        with open_checkpointer("torchsave", directory, CheckpointConfig(chunk_bytes=64 << 10, keep_last=0)) as ck:
            ck.save(step, state_for(layout, seed, step))
    except CheckpointWriteError as e:
        return f"a new torchsave writer could not save after the crash: {e}"
    return None


def dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, default=str)
