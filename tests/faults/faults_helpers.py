"""Helpers for the fault tests: save PRNG states with the engine in this process."""
from __future__ import annotations

import random

from ckptlab import _engine
from ckptlab.faults.payload import random_layout
from ckptlab.faults.saver import segments_for
from ckptlab.faults.tiers.common import Setup

KiB = 1024


def small_setup(seed: int = 7, size: int = 200 * KiB, **engine) -> Setup:
    rng = random.Random(seed)
    eng = dict(writer_threads=2, shards=2, chunk_bytes=64 * KiB, staging_bytes=1 << 20, max_inflight=2,
               keep_last=0, io_mode="auto", prefault=False)
    eng.update(engine)
    return Setup(seed, random_layout(rng, size), eng, [1, 2, 3])


def save_steps(directory: str, setup: Setup, steps: list[int] | None = None, **engine_extra) -> _engine.Engine:
    """Save ``steps`` (default setup.steps) and close; returns the closed engine."""
    eng = _engine.Engine(directory, **dict(setup.engine, **engine_extra))
    try:
        for step in steps or setup.steps:
            plan = setup.plan(step)
            meta, segments, keep = segments_for(plan, setup.layout, setup.seed, step)
            eng.submit(step, meta, segments, plan["total_bytes"])
            del keep
        eng.wait()
        assert eng.take_failure() is None
    finally:
        eng.close()
    return eng
