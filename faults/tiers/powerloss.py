"""The ``powerloss`` tier: record a run's file-system operations (several saves, retention,
overlap, sometimes a slow checkpoint 2 and a second session), rebuild every crash state a power
cut may leave (faults/replay.py), and check and recover each. After the engine's recordings,
:func:`torchsave_count` record the torchsave child (its Python I/O log, same format), whose
states are recovered by a torchsave writer.
"""
from __future__ import annotations

import os
import random
import shutil

from ckptlab.faults import oracle
from ckptlab.faults.iolog import IoRecord, read_io_log
from ckptlab.faults.replay import CrashModel, materialize
from ckptlab.faults.tiers.common import (
    KiB, MiB, Context, Setup, failed_row, numbered, random_setup, random_torchsave_setup, recovery_plan, row,
    run_saver, seeded, session, setup_of, trial_seed,
)

MAX_BAD_STATES = 20  # a broken engine breaks thousands of states: stop looking after this many


def torchsave_count(count: int) -> int:
    """Torchsave recordings besides ``count`` engine recordings."""
    return max(1, count // 8) if count else 0


STREAM_TRIALS, STREAM_TRIALS_SHORT = 6, 2


def generate(seed: int, count: int, short: bool) -> list[dict]:
    def params(i: int, rng: random.Random) -> dict:
        setup = random_setup(rng, small=True)
        setup.engine["chunk_bytes"] = rng.choice([64 * KiB, 128 * KiB])
        setup.engine["staging_bytes"] = max(setup.engine["staging_bytes"], setup.engine["chunk_bytes"])
        setup.steps = setup.steps[:4]
        setup.compute_ms = 0.0
        if i % 3 == 0:  # with retention on and overlapping saves, a slow checkpoint 2
            setup.engine.update(keep_last=2, max_inflight=3, writer_threads=3, staging_bytes=4 * MiB)
            setup.wait_each = False
        return {"setup": setup.as_json(), "sessions": 2 if i % 4 == 1 else 1, "delay": i % 3 == 0,
                "random_variants": 1 if i % 2 else 2}

    trials = seeded("powerloss", seed, count, params)
    extra = []
    for j in range(torchsave_count(count)):
        rng = random.Random(trial_seed(seed, "powerloss-torchsave", j))
        setup = random_torchsave_setup(rng)
        setup.steps = setup.steps[:4]
        setup.engine["keep_last"] = 2 if j % 2 == 0 else setup.engine["keep_last"]  # retention in the first
        extra.append({"writer": "torchsave", "setup": setup.as_json(), "sessions": 2 if j % 2 else 1, "delay": False,
                      "random_variants": 2})
    # Engine streams (the deferred-snapshot path: chunks filled by the caller, out of order):
    # appended after the others, so their ids stay put.
    for j in range(STREAM_TRIALS_SHORT if short else STREAM_TRIALS):
        rng = random.Random(trial_seed(seed, "powerloss-stream", j))
        p = params(j, rng)
        p["setup"]["fill"] = "stream"
        extra.append(p)
    return trials + numbered("powerloss", seed, [t["p"] for t in trials] + extra)[count:]


def _sessions_before(model: CrashModel, k: int) -> list[list[int]]:
    sessions: list[list[int]] = []
    for r in model.records[:k]:
        if r.is_mark and r.path == "start":
            sessions.append([])
        elif r.is_mark and r.path == "submit":
            if not sessions:
                sessions.append([])
            sessions[-1].append(int(r.detail()["step"]))
    return sessions


def run(trial: dict, ctx: Context, tdir: str, max_report: int = 3) -> dict:
    p = trial["p"]
    setup = setup_of(trial)
    log = os.path.join(tdir, "io.log")
    faults = "point=before_data_fsync,ckpt=2,action=delay=150" if p["delay"] else ""
    sessions = [session(setup, ctx, faults=faults, io_log=log)]
    if p["sessions"] == 2:
        last = setup.steps[-1]
        sessions.append(session(setup, ctx, steps=[last + s for s in setup.steps[:2]], io_log=log))
    child = run_saver(ctx, tdir, setup, *sessions)
    if child.rc != 0:
        return failed_row(trial, child, "recording run failed")
    return _replay(trial, ctx, tdir, setup, read_io_log(log), max_report)


def _replay(trial: dict, ctx: Context, tdir: str, setup: Setup, records: list[IoRecord], max_report: int) -> dict:
    """Check every crash state of the recorded run; keep the first few bad ones in ``tdir``."""
    model = CrashModel(records)
    v: list[str] = []
    acks = [(int(r.detail()["step"]), True) for r in records if r.is_mark and r.path in ("ack", "fail")]
    order = oracle.check_commit_order(acks)
    if order:
        v.append(order)
    rng = random.Random(trial["seed"])
    checks = 0
    bad_states = 0
    state_root = os.path.join(ctx.states, os.path.basename(tdir))
    all_steps = sorted({int(r.detail()["step"]) for r in records if r.is_mark and r.path == "submit"})
    new_step = max(all_steps + [0]) + 1000
    new_plan = recovery_plan(setup, new_step)
    recover_every = 1 if not ctx.short else 4

    def context(k: int) -> tuple:
        acked = [int(m["step"]) for m in model.marks_before("ack", k)]
        failed = frozenset(int(m["step"]) for m in model.marks_before("fail", k))
        sessions = tuple(tuple(x) for x in _sessions_before(model, k))
        return (max(acked) if acked else None, failed, sessions)

    try:
        for state in model.states(rng, random_variants=trial["p"]["random_variants"], context=context):
            checks += 1
            sdir = os.path.join(state_root, f"s{checks}")
            materialize(state.files, sdir)
            acked, failed, sessions = context(state.k)
            d = oracle.check_directory(sdir, setup.layout, setup.seed, acked=acked,
                                       sessions=[list(x) for x in sessions], failed=set(failed))
            sv = list(d.violations)
            if not sv and checks % recover_every == 0:
                problem = oracle.check_recoverable(sdir, setup.layout, setup.seed, new_step, new_plan,
                                                   writer=setup.writer)
                if problem:
                    sv.append(problem)
            if sv:
                bad_states += 1
                where = records[state.k - 1] if state.k else None
                if len(v) < max_report:
                    v.append(f"crash after record {state.k} ({where}), variant {state.variant}, "
                             f"{state.pending} ops pending: " + "; ".join(sv))
                if bad_states <= max_report:
                    shutil.copytree(sdir, os.path.join(tdir, f"state-{state.k}-{state.variant}"), dirs_exist_ok=True)
            shutil.rmtree(sdir, ignore_errors=True)
            if bad_states >= MAX_BAD_STATES:
                v.append(f"stopped after {MAX_BAD_STATES} violating states")
                break
    finally:
        shutil.rmtree(state_root, ignore_errors=True)
    if bad_states > max_report:
        v.append(f"{bad_states} crash states violate the oracle in all")
    return row(trial, "ok", checks=checks, violations=v, fired=True, count=bad_states + (1 if order else 0),
               acked=max([s for s, ok in acks if ok], default=None),
               extra={"records": len(records), "bad_states": bad_states})
