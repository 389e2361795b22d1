"""The ``ioerr`` tier: the N-th occurrence of each failing operation (chunk write, data
fdatasync, MANIFEST write and fsync, temp-directory fsync, rename) returns EIO / ENOSPC /
EDQUOT or a short write, SQLite ``ioerr`` style, for every N of a run; one more save follows.
The torchsave writer (its child imports torch: fewer trials) gets each errno at each point
in its second checkpoint and a short last chunk; its save() must raise the injected errno.

Persistent trials (``mode=persist``, a dying disk): from the first failing operation of
checkpoint K on, every write, fsync and rename fails. The checkpoint that hit it and every
later one must fail with the injected errno, never be acknowledged nor on disk; the last
acknowledged one is what loads; the child still finishes (waits and close() return) and a
writer on a healthy disk recovers the directory (O4).
"""
from __future__ import annotations

import os

from ckptlab.core.fault_spec import ERROR_POINTS
from ckptlab.faults.iolog import marks, read_io_log
from ckptlab.faults.oracle import DiskCheck, History
from ckptlab.faults.tiers.common import (
    Context, Setup, crash_checks, failed_row, failed_step_checks, numbered, point_setup, run_saver, session, setup_of,
    torchsave_point_setup, verdict,
)

IOERR_SETUPS = [0, 1]
# --short: one torchsave error, a short chunk write (tests/core/test_torchsave_faults.py fails
# every other erroring point once)
SHORT_TORCHSAVE = [("before_chunk_write", "short")]
# Persistent errors: (setup, point, ckpt, action) for the engine; (point, ckpt, action) for
# torchsave (its point setup). Setup 0 overlaps two checkpoints: a disk that dies in the
# writes of checkpoint 2 also fails checkpoint 1 (still fsyncing), so the writers' points die
# in checkpoint 3 (1 is acknowledged before 3 is staged), the committer's in checkpoint 2.
def persist_ckpt(point: str) -> int:
    """The checkpoint of setup 0 in which a persistent error at ``point`` starts."""
    return 3 if point in ("before_chunk_write", "before_data_fsync") else 2


PERSIST_ENGINE = [(0, p, persist_ckpt(p), ("eio", "enospc", "edquot")[i % 3]) for i, p in enumerate(ERROR_POINTS)] + [(1, "before_chunk_write", 3, "short")]
PERSIST_SHORT = [(0, "before_data_fsync", persist_ckpt("before_data_fsync"), "eio")]
PERSIST_TORCHSAVE = [("before_chunk_write", 2, "eio"), ("before_manifest_fsync", 3, "edquot")]


def _total(setup: Setup, point: str) -> int:
    return sum(setup.point_count(point, c) for c in range(1, len(setup.steps) + 1))


def generate(seed: int, count: int, short: bool) -> list[dict]:
    """The whole space (``count`` is ignored)."""
    trials = []
    actions = ["eio", "enospc", "edquot"]
    for si in IOERR_SETUPS[:1] if short else IOERR_SETUPS:
        setup = point_setup(si)
        for point in ERROR_POINTS:
            total = _total(setup, point)
            hits = sorted({1, total}) if short else list(range(1, total + 1))
            for h in hits:
                action = actions[(h + len(trials)) % len(actions)]
                if point == "before_chunk_write" and h % 4 == 0:
                    action = "short"
                trials.append({"setup": si, "point": point, "hit": h, "action": action})
    for si, point, ckpt, action in PERSIST_SHORT if short else PERSIST_ENGINE:
        trials.append({"setup": si, "point": point, "ckpt": ckpt, "action": action, "persist": True})
    # torchsave: each erroring point in checkpoint 2 (so there is a previous one to keep), and
    # a short write of the run's last chunk.
    ts = torchsave_point_setup()
    cases = [(p, a, 2) for p, a in SHORT_TORCHSAVE] if short else \
        [(p, a, ts.point_count(p, 1) + 1) for p in ERROR_POINTS for a in actions]
    if not short:
        cases.append(("before_chunk_write", "short", _total(ts, "before_chunk_write")))
    for point, action, h in cases:
        trials.append({"writer": "torchsave", "setup": "torchsave", "point": point, "hit": h, "action": action})
    for point, ckpt, action in [] if short else PERSIST_TORCHSAVE:
        trials.append({"writer": "torchsave", "setup": "torchsave", "point": point, "ckpt": ckpt, "action": action,
                       "persist": True})
    return numbered("ioerr", seed, trials)


def rule_of(p: dict) -> str:
    """The trial's fault spec: the hit-th pass of its point, or (persistent) its first pass in
    checkpoint ``ckpt`` and every failing operation after it."""
    if p.get("persist"):
        return f"point={p['point']},ckpt={p['ckpt']},action={p['action']},mode=persist"
    return f"point={p['point']},hit={p['hit']},action={p['action']}"


def run(trial: dict, ctx: Context, tdir: str) -> dict:
    p = trial["p"]
    setup = setup_of(trial)
    setup.steps = setup.steps + [setup.steps[-1] + 1]  # one more save: the engine must go on
    log = os.path.join(tdir, "io.log")
    child = run_saver(ctx, tdir, setup, session(setup, ctx, faults=rule_of(p), io_log=log, io_log_data=False))
    if child.rc != 0:
        return failed_row(trial, child, "an injected error crashed the process")
    injected = [m.detail() for m in marks(read_io_log(log), "inject")]
    hist, v, d = crash_checks(setup, child)
    reported = {s: e for s, e, _ in hist.failures}
    persist = bool(p.get("persist"))
    for inj in injected:
        step, cause = int(inj["step"]), f"errno {inj['errno']} was injected at its {inj['point']}"
        if step not in hist.failed:
            v.append(f"step {step}: {cause} and it was never reported")
        elif step in reported and reported[step] != int(inj["errno"]):
            v.append(f"step {step}: {cause} but it failed with errno {reported[step]}")
        v += failed_step_checks(step, hist, d, cause, later_must_succeed=not persist)
    if persist and injected:
        v += dead_disk_checks(int(injected[0]["step"]), int(injected[0]["errno"]), hist, d)
    leaked = [n for n in os.listdir(child.ckdir) if n.startswith(".step_") and ".tmp-" in n]
    if leaked and not v:
        v.append(f"temp directories left behind after a failed checkpoint and a clean close: {leaked}")
    return verdict(trial, bool(injected), v, hist, d, extra={"injected": injected})


def dead_disk_checks(dead_at: int, err: int, hist: History, disk: DiskCheck) -> list[str]:
    """O3 for a persistent error first injected in step ``dead_at``: it and every step
    submitted after it failed with ``err`` (reported, never acknowledged, never on disk), the
    last acknowledged step is what loads, and the child finished (its waits and close())."""
    v = []
    if not hist.done:
        v.append(f"the disk died at step {dead_at} and the saver never finished (a wait or close() hung)")
    submitted = hist.submitted
    reported = {s: e for s, e, _ in hist.failures} | dict(hist.errors)
    for step in submitted[submitted.index(dead_at):] if dead_at in submitted else []:
        cause = f"the disk died (errno {err}) at step {dead_at}"
        if step in hist.acked or step in disk.valid:
            v.append(f"step {step} was {'acknowledged' if step in hist.acked else 'committed'} although {cause}")
        elif step not in hist.failed:
            v.append(f"step {step} was never reported as failed although {cause}")
        elif reported.get(step, err) != err:
            v.append(f"step {step} failed with errno {reported[step]}, not the dead disk's {err}")
    if disk.loaded_step != hist.max_acked:
        v.append(f"after the disk died at step {dead_at} the loader returns {disk.loaded_step}, "
                 f"not the last acknowledged step {hist.max_acked}")
    return v
