"""The ``bitrot`` tier: damage a committed checkpoint (faults/damage.py: flipped bits, zeroed
blocks, truncated, deleted, swapped or misdirected files, appended garbage); the damage must be
detected (O5), the loader must fall back, and a new writer must save over it.
"""
from __future__ import annotations

import json
import os
import random
import shutil

from ckptlab.core import CorruptCheckpointError, verify_checkpoint
from ckptlab.core.commit import committed_step_dirs
from ckptlab.faults import oracle
from ckptlab.faults.damage import KINDS, corrupt
from ckptlab.faults.tiers.common import Context, Setup, made_once, random_setup, row, run_saver, seeded, trial_seed


def generate(seed: int, count: int, short: bool) -> list[dict]:
    bases = 1 if short else 4  # checkpoint directories to damage, made once each

    def params(i: int, rng: random.Random) -> dict:
        return {"base": i % bases, "base_seed": trial_seed(seed, "bitrot-base", i % bases),
                "kind": KINDS[i % len(KINDS)], "newest": rng.random() < 0.7}

    return seeded("bitrot", seed, count, params)


def _base(ctx: Context, index: int, base_seed: int) -> tuple[str, Setup]:
    """Committed checkpoints to damage, made once per base by a saver child (cached)."""
    rng = random.Random(base_seed)
    setup = random_setup(rng, small=True)
    setup.engine.update(keep_last=0)
    setup.steps = setup.steps[:3]

    def make(tmp: str) -> None:
        os.makedirs(tmp)
        child = run_saver(ctx, tmp, setup)
        if child.rc != 0:
            raise RuntimeError(child.failure("bit-rot base run failed"))
        with open(os.path.join(tmp, "setup.json"), "w") as f:
            json.dump(setup.as_json(), f)
        with open(os.path.join(tmp, "history.json"), "w") as f:
            json.dump({"acked": child.history().acked}, f)

    base = made_once(os.path.join(ctx.work, "bases", f"b{index}-{base_seed}"), make)
    with open(os.path.join(base, "setup.json")) as f:
        return base, Setup.from_json(json.load(f))


def run(trial: dict, ctx: Context, tdir: str) -> dict:
    p = trial["p"]
    base, setup = _base(ctx, p["base"], p["base_seed"])
    ckdir = os.path.join(ctx.states, os.path.basename(tdir) + "-ck")
    shutil.copytree(os.path.join(base, "ck"), ckdir)
    try:
        return _damage_and_check(trial, ckdir, setup)
    finally:
        shutil.rmtree(ckdir, ignore_errors=True)


def _damage_and_check(trial: dict, ckdir: str, setup: Setup) -> dict:
    p = trial["p"]
    rng = random.Random(trial["seed"])
    dirs = committed_step_dirs(ckdir)
    steps = [s for s, _ in dirs]
    if len(dirs) < 2:
        return row(trial, "violation", violations=[f"base has {len(dirs)} committed checkpoints, expected >= 2"])
    ti = len(dirs) - 1 if p["newest"] else rng.randrange(len(dirs) - 1)
    target, path = dirs[ti]
    other = dirs[ti - 1][1] if ti else dirs[ti + 1][1]
    kind, desc = corrupt(path, rng, p["kind"], other=other)
    if desc is None:
        return row(trial, "noop", checks=0, detail=f"{kind} changed nothing")
    v: list[str] = []
    try:
        verify_checkpoint(path)
        v.append(f"{desc}: step {target} still verifies (corruption not detected)")
    except CorruptCheckpointError:
        pass
    d = oracle.check_directory(ckdir, setup.layout, setup.seed, acked=None, sessions=[steps])
    v += [x for x in d.violations if "are missing" not in x]
    expected = max(s for s in steps if s != target) if target == steps[-1] else steps[-1]
    if d.loaded_step != expected:
        v.append(f"{desc}: loaded step {d.loaded_step}, expected the fallback to step {expected}")
    # Recovery saves over the damage: the damaged newest step is saved again (replaced).
    new_step = target if target == steps[-1] else steps[-1] + 1
    problem = oracle.check_recoverable(ckdir, setup.layout, setup.seed, new_step, setup.plan(new_step))
    if problem:
        v.append(f"{desc}: {problem}")
    return row(trial, "ok", violations=v, fired=True, loaded=d.loaded_step, detail=desc,
               extra={"corruption": desc})
