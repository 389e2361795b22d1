"""The ``ioerr`` tier: the N-th occurrence of each failing operation (chunk write, data
fdatasync, MANIFEST write and fsync, temp-directory fsync, rename) returns EIO / ENOSPC /
EDQUOT or a short write, SQLite ``ioerr`` style, for every N of a run; one more save follows.
The torchsave writer (its child imports torch: fewer trials) gets each errno at each point
in its second checkpoint and a short last chunk; its save() must raise the injected errno.
"""
from __future__ import annotations

import os

from ckptlab.core.fault_spec import ERROR_POINTS
from ckptlab.faults.iolog import marks, read_io_log
from ckptlab.faults.tiers.common import (
    Context, Setup, crash_checks, failed_row, failed_step_checks, numbered, point_setup, run_saver, session, setup_of,
    torchsave_point_setup, verdict,
)

IOERR_SETUPS = [0, 1]
# --short: one torchsave error, a short chunk write (tests/core/test_torchsave_faults.py fails
# every other erroring point once)
SHORT_TORCHSAVE = [("before_chunk_write", "short")]


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
    # torchsave: each erroring point in checkpoint 2 (so there is a previous one to keep), and
    # a short write of the run's last chunk.
    ts = torchsave_point_setup()
    cases = [(p, a, 2) for p, a in SHORT_TORCHSAVE] if short else \
        [(p, a, ts.point_count(p, 1) + 1) for p in ERROR_POINTS for a in actions]
    if not short:
        cases.append(("before_chunk_write", "short", _total(ts, "before_chunk_write")))
    for point, action, h in cases:
        trials.append({"writer": "torchsave", "setup": "torchsave", "point": point, "hit": h, "action": action})
    return numbered("ioerr", seed, trials)


def run(trial: dict, ctx: Context, tdir: str) -> dict:
    p = trial["p"]
    setup = setup_of(trial)
    setup.steps = setup.steps + [setup.steps[-1] + 1]  # one more save: the engine must go on
    log = os.path.join(tdir, "io.log")
    rule = f"point={p['point']},hit={p['hit']},action={p['action']}"
    child = run_saver(ctx, tdir, setup, session(setup, ctx, faults=rule, io_log=log, io_log_data=False))
    if child.rc != 0:
        return failed_row(trial, child, "an injected error crashed the process")
    injected = [m.detail() for m in marks(read_io_log(log), "inject")]
    hist, v, d = crash_checks(setup, child)
    reported = {s: e for s, e, _ in hist.failures}
    for inj in injected:
        step, cause = int(inj["step"]), f"errno {inj['errno']} was injected at its {inj['point']}"
        if step not in hist.failed:
            v.append(f"step {step}: {cause} and it was never reported")
        elif step in reported and reported[step] != int(inj["errno"]):
            v.append(f"step {step}: {cause} but it failed with errno {reported[step]}")
        v += failed_step_checks(step, hist, d, cause)
    leaked = [n for n in os.listdir(child.ckdir) if n.startswith(".step_") and ".tmp-" in n]
    if leaked and not v:
        v.append(f"temp directories left behind after a failed checkpoint and a clean close: {leaked}")
    return verdict(trial, bool(injected), v, hist, d, extra={"injected": injected})
