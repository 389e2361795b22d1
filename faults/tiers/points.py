"""The ``points`` tier: SIGKILL at every named fault point x checkpoint {1, 2, last} x
occurrence {first, last}, on three engine shapes, the engine filled through streams, and the
torchsave shape; commit-order
scenarios (a slow checkpoint 2 overtaken by 3; engine only: torchsave saves synchronously);
consecutive crashes (crash, recover, crash in the first save after recovery); a short delay at
every point (engine and torchsave: the run must still succeed).
"""
from __future__ import annotations

import random

from ckptlab.core.fault_spec import fault_points
from ckptlab.faults.tiers.common import (
    MiB, POINT_SETUPS, Context, Setup, checked, crash_checks, failed_row, numbered, point_setup, row, run_saver, session, setup_of,
    torchsave_point_setup, trial_seed, verdict,
)

# --short: a few torchsave kills (each child imports torch: ~2 s)
SHORT_TORCHSAVE_POINTS = ("before_rename", "during_gc")
# --short: the engine filled through streams (as deferred snapshots fill it)
SHORT_STREAM_POINTS = ("before_chunk_write", "before_data_fsync", "before_manifest", "before_rename")
TORCHSAVE_DOUBLES = 2
DELAY_MS = 30
SEAL_DELAY_MS = 200


def _kills(shape: Setup, points: list[str], short: bool, **extra: object) -> list[dict]:
    """SIGKILL at each point x checkpoint {1, 2, last} x occurrence {first, last} (short:
    checkpoint 2, or the last where 2 does not pass the point; first occurrence)."""
    trials = []
    n = len(shape.steps)
    ckpts = [2] if short else sorted({1, 2, n})
    for point in points:
        for ck in ckpts:
            count = shape.point_count(point, ck)
            if count == 0 and short:
                count, ck = shape.point_count(point, n), n
            if count == 0:
                continue
            for hit in ([1] if short else sorted({1, count})):
                trials.append({"kind": "kill", **extra, "point": point, "ckpt": ck, "hit": hit})
    return trials


def _delays(shape: Setup, **extra: object) -> list[dict]:
    """A DELAY_MS sleep at each point's first occurrence in checkpoint 2 (or the last that passes it)."""
    trials = []
    for point in fault_points():
        ck = 2 if shape.point_count(point, 2) else len(shape.steps)
        if shape.point_count(point, ck):
            trials.append({"kind": "delay", **extra, "point": point, "ckpt": ck, "hit": 1})
    return trials


def generate(seed: int, count: int, short: bool) -> list[dict]:
    """The whole space (``count`` is ignored)."""
    trials: list[dict] = []
    setups = [0] if short else list(range(len(POINT_SETUPS)))
    for si in setups:
        setup = point_setup(si)
        trials += _kills(setup, fault_points(), short, setup=si)
        # Commit order: checkpoint 2 made slow so 3 finishes first; with and without a kill
        # right after 3 commits.
        trials.append({"kind": "order", "setup": si, "kill": True})
        if not short:
            trials.append({"kind": "order", "setup": si, "kill": False})
    if not short:
        rng = random.Random(seed)
        points = fault_points()
        for _ in range(12):
            trials.append({"kind": "double", "setup": rng.randrange(len(POINT_SETUPS)),
                           "first": [rng.choice(points), rng.randint(1, 3)], "second": rng.choice(points)})
    if not short:  # a delay at every point: the run must still succeed as a whole
        trials += _delays(point_setup(0), setup=0)
    # The torchsave writer: the same kills (and delays) at every point it passes, after the
    # engine's trials (their ids stay put), and consecutive crashes.
    ts = {"setup": "torchsave", "writer": "torchsave"}
    trials += _kills(torchsave_point_setup(), list(SHORT_TORCHSAVE_POINTS) if short else fault_points(), short, **ts)
    if not short:
        trials += _delays(torchsave_point_setup(), **ts)
        rng = random.Random(trial_seed(seed, "points-torchsave", 0))
        for _ in range(TORCHSAVE_DOUBLES):
            trials.append({"kind": "double", **ts, "first": [rng.choice(fault_points()), rng.randint(1, 3)],
                           "second": rng.choice(fault_points())})
    # Engine streams (the deferred-snapshot path): the same kills with the saver filling
    # staging chunks itself, out of order, sealing each step; appended, so earlier ids stay put.
    points = list(SHORT_STREAM_POINTS) if short else fault_points()
    trials += _kills(point_setup(0), points, short, setup=0, fill="stream")
    # The commit waits for the seal: a stream whose data is durable but whose seal is 200 ms
    # late, killed right after checkpoint 2 commits (never before its seal unless the engine
    # ignored it: the ignore_seal mutation's teeth).
    trials.append({"kind": "seal", "setup": 0, "fill": "stream"})
    return numbered("points", seed, trials)


def run(trial: dict, ctx: Context, tdir: str) -> dict:
    p = trial["p"]
    setup = setup_of(trial)
    if p["kind"] == "double":
        return _double(trial, ctx, tdir, setup)
    if p["kind"] == "order":
        setup.engine.update(max_inflight=3, writer_threads=3, shards=3, staging_bytes=4 * MiB)
        setup.wait_each = False
        faults = "point=before_data_fsync,ckpt=2,action=delay=300"
        if p["kill"]:
            faults += ";point=after_commit,ckpt=3,action=kill"
    elif p["kind"] == "seal":
        faults = "point=after_commit,ckpt=2,action=kill"
    elif p["kind"] == "delay":
        faults = f"point={p['point']},ckpt={p['ckpt']},hit={p['hit']},action=delay={DELAY_MS}"
    else:
        faults = f"point={p['point']},ckpt={p['ckpt']},hit={p['hit']},action=kill"
    sess = session(setup, ctx, faults=faults)
    if p["kind"] == "seal":
        sess.update(wait_each=True, seal_delay_ms=SEAL_DELAY_MS)
    child = run_saver(ctx, tdir, setup, sess)
    if p["kind"] == "delay":
        return _delayed(trial, setup, child)
    must_die = p["kind"] in ("kill", "seal") or p["kill"]
    return checked(trial, setup, child, fired=child.sigkilled if must_die else True)


def _double(trial: dict, ctx: Context, tdir: str, setup: Setup) -> dict:
    """Crash, recover, crash again in the first save after recovery (same directory and ack log)."""
    p = trial["p"]
    point, ck = p["first"]
    ck = min(ck, len(setup.steps))
    if setup.point_count(point, ck) == 0:
        point = "before_rename"
    first = run_saver(ctx, tdir, setup, session(setup, ctx, faults=f"point={point},ckpt={ck},action=kill"))
    hist, v, d = crash_checks(setup, first, recover=False)
    if v or not first.clean_or_killed:
        return row(trial, "violation", violations=v or [first.failure()], fired=first.sigkilled,
                   loaded=d.loaded_step, acked=hist.max_acked)
    steps = [(d.loaded_step or 0) + i + 1 for i in range(3)]
    second = p["second"] if setup.point_count(p["second"], 1) else "before_rename"
    child = run_saver(ctx, tdir, setup, session(setup, ctx, steps=steps, faults=f"point={second},ckpt=1,action=kill"))
    return checked(trial, setup, child, fired=first.sigkilled and child.sigkilled)


def _delayed(trial: dict, setup: Setup, child) -> dict:
    """A delay is no fault: the run must exit cleanly with every step acknowledged."""
    if child.rc != 0:
        return failed_row(trial, child, "a delay at a fault point failed the run")
    hist, v, d = crash_checks(setup, child)
    missing = [s for s in setup.steps if s not in hist.acked]
    if missing:
        v.append(f"a {DELAY_MS} ms delay at {trial['p']['point']} and steps {missing} were never acknowledged")
    return verdict(trial, True, v, hist, d)
