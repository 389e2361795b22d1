"""What a campaign covers: each trial's cells (tier, writer, fault point, action), and the
grid each tier should fill, with the cells that are empty by design and why. The writer
``pccheck-stream`` is the engine filled through streams, as deferred snapshots fill it.

    cells(trial)               the cells one trial exercises
    count(trials)              trials per cell
    expected(tiers, variants)  {cell: None (must be covered) | why it is empty by design}

A tier tests its own actions at every point it can: ``points`` kills and delays at every fault
point, ``ioerr`` every error action at every erroring point, ``realfs`` both on each file
system; the other tiers have no named points (a random time, every crash state, a committed
checkpoint, a full disk), so their "point" is that, in parentheses. ``multirank`` kills one
rank at every coordinator point (core/distributed.py) and every engine point of its part.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ckptlab.core.fault_spec import COORDINATOR_ERROR_POINTS, ERROR_ACTIONS, ERROR_POINTS, coordinator_points, \
    fault_points
from ckptlab.faults.damage import KINDS as DAMAGE
from ckptlab.faults.tiers import ioerr, multirank, training

Cell = tuple[str, str, str, str]  # tier, writer, point, action
RANDOM_TIME, CRASH_STATES, COMMITTED, FULL_DISK, STEP = (
    "(random time)", "(every crash state)", "(committed checkpoint)", "(full disk)", "(a training step)")
WRITERS = ("pccheck", "torchsave")
# pccheck with the engine filled through streams (the deferred-snapshot path; faults/saver.py fill=stream)
STREAM_WRITER = "pccheck-stream"
DYING = "dying disk"  # an error action with mode=persist: every failing operation from then on


def tier_label(trial: dict) -> str:
    """The tier as the coverage table names it: realfs per file system and mount variant."""
    p = trial["p"]
    return f"realfs {p['fs']} {p['mount']}".strip() if trial["tier"] == "realfs" else trial["tier"]


def _point_cells(p: dict) -> list[tuple[str, str]]:
    kind = p.get("kind", "ioerr" if "action" in p else "kill")
    if p.get("persist"):
        return [(p["point"], DYING)]
    if "action" in p:
        return [(p["point"], p["action"])]
    if kind in ("kill", "delay"):
        return [(p["point"], kind)]
    if kind == "seal":  # a late seal, killed after checkpoint 2 commits
        return [("after_commit", "kill")]
    if kind == "order":
        return [("before_data_fsync", "delay")] + ([("after_commit", "kill")] if p["kill"] else [])
    if kind == "double":
        return [(p["first"][0], "kill"), (p["second"], "kill")]
    if kind == "enospc":
        return [(FULL_DISK, "enospc")]
    raise ValueError(f"no coverage cells for trial kind {kind!r}")


def is_stream(p: dict) -> bool:
    """Whether a trial's parameters fill the engine through streams (fill=stream, on the trial or its setup)."""
    setup = p.get("setup")
    return p.get("fill") == "stream" or (isinstance(setup, dict) and setup.get("fill") == "stream")


def cells(trial: dict) -> list[Cell]:
    tier, p = trial["tier"], trial["p"]
    writer = STREAM_WRITER if is_stream(p) else p.get("writer", "pccheck")
    if tier in ("points", "ioerr", "realfs"):
        pairs = _point_cells(p)
    elif tier == "random":
        pairs = [(RANDOM_TIME, "kill")]
    elif tier == "powerloss":
        pairs = [(CRASH_STATES, "power cut")]
    elif tier == "bitrot":
        pairs = [(COMMITTED, p["kind"])]
    elif tier == "enospc":
        pairs = [(FULL_DISK, "enospc")]
    elif tier == "training":
        pairs = [_training_cell(p["kind"], p["arg"])]
    elif tier == "multirank":
        pairs = [(CRASH_STATES, "power cut")] if p["kind"] == "powerloss" else [(p["point"], p["kind"])]
    else:
        raise ValueError(f"no coverage cells for tier {tier!r}")
    label = tier_label(trial)
    return [(label, writer, point, action) for point, action in pairs]


def _training_cell(kind: str, arg: object) -> tuple[str, str]:
    if kind == "point":
        return str(arg).split(",")[0], "kill"
    return (STEP, "fail") if kind == "step" else (RANDOM_TIME, "kill")


def count(trials: Iterable[dict]) -> Counter[Cell]:
    return Counter(c for t in trials for c in cells(t))


def _error_cell_why(point: str, action: str) -> str | None:
    if point not in ERROR_POINTS:
        return "nothing fails at this point (no operation follows it)"
    if action == "short" and point != "before_chunk_write":
        return "a short write needs a write (only before_chunk_write)"
    return None


def expected(tiers: Iterable[str], realfs_variants: Iterable[str] = ()) -> dict[Cell, str | None]:
    """The grid of ``tiers`` (``realfs_variants``: the file-system labels realfs runs here)."""
    grid: dict[Cell, str | None] = {}
    points = fault_points()
    engine_only = "engine only: the torchsave child is crashed by points, random, ioerr and powerloss"
    for tier in tiers:
        if tier == "points":
            grid |= {(tier, w, pt, a): None for w in WRITERS for pt in points for a in ("kill", "delay")}
            grid |= {(tier, STREAM_WRITER, pt, "kill"): None for pt in points}
            grid |= {(tier, STREAM_WRITER, pt, "delay"): "streams differ from submit() before the writers, and "
                     "every point is a writer's or the committer's: the submit() delays time them" for pt in points}
        elif tier == "ioerr":
            grid |= {(tier, w, pt, a): _error_cell_why(pt, a) for w in WRITERS for pt in points for a in ERROR_ACTIONS}
            grid |= {(tier, "pccheck", pt, DYING): _error_cell_why(pt, "eio") for pt in points}
            torchsave_dying = {pt for pt, _, _ in ioerr.PERSIST_TORCHSAVE}
            grid |= {(tier, "torchsave", pt, DYING): _error_cell_why(pt, "eio") or (
                None if pt in torchsave_dying else "two dying-disk trials for torchsave here (its child imports "
                "torch); realfs and tests/core/test_dying_disk.py fail every point under it") for pt in points}
        elif tier == "realfs":
            for label in realfs_variants:
                for w in WRITERS:
                    grid |= {(label, w, pt, "kill"): None for pt in points}
                    grid |= {(label, w, pt, a): _error_cell_why(pt, a) for pt in points for a in ERROR_ACTIONS}
                    grid |= {(label, w, pt, DYING): _error_cell_why(pt, "eio") for pt in points}
                    grid[(label, w, FULL_DISK, "enospc")] = None
        elif tier in ("random", "powerloss"):
            action = "kill" if tier == "random" else "power cut"
            grid |= {(tier, w, RANDOM_TIME if tier == "random" else CRASH_STATES, action): None for w in WRITERS}
            if tier == "powerloss":
                grid[(tier, STREAM_WRITER, CRASH_STATES, action)] = None
        elif tier == "bitrot":
            grid |= {(tier, "pccheck", COMMITTED, k): None for k in DAMAGE}
            grid |= {(tier, "torchsave", COMMITTED, k): engine_only + " (damage detection is the loader's, "
                     "tested for every writer in tests/core)" for k in DAMAGE}
        elif tier == "enospc":
            grid[(tier, "pccheck", FULL_DISK, "enospc")] = None
            grid[(tier, "torchsave", FULL_DISK, "enospc")] = engine_only + " (realfs fills a disk under torchsave)"
        elif tier == "training":
            grid |= {(tier, "pccheck", *_training_cell(k, a)): None for k, a in training.KINDS}
        elif tier == "multirank":
            grid |= {(tier, "pccheck", pt, "kill"): None for pt in coordinator_points() + multirank.engine_points()}
            grid |= {(tier, "pccheck", pt, "kill"): "a rank's inner checkpointer keeps every part (keep_last=0): "
                     "retention is the coordinator's (during_global_gc)" for pt in multirank.NO_INNER_GC}
            grid |= {(tier, "pccheck", pt, "delay"): None for pt in coordinator_points()}
            grid |= {(tier, "pccheck", pt, "eio"): None for pt in COORDINATOR_ERROR_POINTS}
            grid[(tier, "pccheck", CRASH_STATES, "power cut")] = None
    return grid
