"""The ``random`` tier: SIGKILL at a uniformly random time in a run of overlapping saves (some
with a second writer session); each run shape is timed once, undisturbed, and killed many times.
After the engine's trials, :func:`torchsave_count` more kill the torchsave child during its saves.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil

from ckptlab.faults import oracle
from ckptlab.faults.tiers.common import (
    Context, Setup, checked, made_once, numbered, random_setup, random_torchsave_setup, run_saver, seeded, session,
    setup_of, trial_seed,
)

RANDOM_SETUPS = 12  # distinct run shapes; each is timed once (calibration) and killed many times
TORCHSAVE_SETUPS = 2


def torchsave_count(count: int) -> int:
    """Torchsave trials besides ``count`` engine trials (each child imports torch: ~2 s)."""
    return max(1, count // 50) if count else 0


def generate(seed: int, count: int, short: bool) -> list[dict]:
    pool = []
    for j in range(min(RANDOM_SETUPS, count)):
        rng = random.Random(trial_seed(seed, "random-setup", j))
        setup = random_setup(rng, small=True)
        setup.steps = [setup.steps[0] * (i + 1) for i in range(rng.randint(4, 7))]
        pool.append((setup.as_json(), 2 if j % 4 == 3 else 1))

    def params(i: int, rng: random.Random) -> dict:
        setup, sessions = pool[i % len(pool)]
        return {"setup": setup, "u": rng.random(), "sessions": sessions}

    trials = seeded("random", seed, count, params)
    ts_pool = [random_torchsave_setup(random.Random(trial_seed(seed, "random-torchsave-setup", j))).as_json()
               for j in range(TORCHSAVE_SETUPS)]
    extra = []
    for j in range(torchsave_count(count)):
        rng = random.Random(trial_seed(seed, "random-torchsave", j))
        extra.append({"writer": "torchsave", "setup": ts_pool[j % len(ts_pool)], "u": rng.random(),
                      "sessions": 2 if j % 3 == 2 else 1})
    return trials + numbered("random", seed, [t["p"] for t in trials] + extra)[count:]


def _calibrate(ctx: Context, setup: Setup) -> float:
    """Seconds from 'ready' to exit of an undisturbed run of this setup (cached per setup)."""
    key = hashlib.sha256(oracle.dump(setup.as_json()).encode()).hexdigest()[:16]

    def make(tmp: str) -> None:
        tdir = tmp + ".run"
        os.makedirs(tdir)
        try:
            child = run_saver(ctx, tdir, setup)
        finally:
            shutil.rmtree(tdir, ignore_errors=True)
        if child.rc != 0:
            raise RuntimeError(child.failure("calibration run failed"))
        with open(tmp, "w") as f:
            json.dump({"seconds": child.seconds - child.ready_s}, f)

    with open(made_once(os.path.join(ctx.work, "calibration", key + ".json"), make)) as f:
        return json.load(f)["seconds"]


def run(trial: dict, ctx: Context, tdir: str) -> dict:
    p = trial["p"]
    setup = setup_of(trial)
    sessions = [session(setup, ctx)]
    if p["sessions"] == 2:  # a second writer continues in the same directory
        last = setup.steps[-1]
        sessions.append(session(setup, ctx, steps=[last + s for s in setup.steps]))
    total = _calibrate(ctx, setup) * p["sessions"]
    delay = p["u"] * total * 0.85  # undisturbed runs are a little faster than the first (timed) one
    child = run_saver(ctx, tdir, setup, *sessions, kill_after=delay)
    return checked(trial, setup, child, fired=child.killed_by_us, extra={"kill_after_s": round(delay, 4)})
