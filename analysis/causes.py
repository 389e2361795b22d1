"""Which writer thread straggled in a checkpoint, and why: one cause class per straggler
(docs/TRACE.md, "Straggler causes").

A checkpoint's **straggler** is its last writer thread when it is late enough to matter. It is
compared with the **reference** finish: the median thread's finish, or with exactly 2 threads
the other thread's (see below); with 1 thread there is nothing to compare and no straggler.

- it finishes at least ``MIN_RATIO`` (1.1) times the reference: below that the writers are
  balanced and which one is last is a coin toss (the H100 trace's ratios stay under 1.001);
- and at least ``MIN_GAP_S`` (1 ms) after it: less than a scheduler time slice, which timer
  and wake-up noise alone can produce;
- and, with 3 or more writer threads, its finish is an outlier: modified z-score above
  ``OUTLIER_Z`` (3.5, Iglewicz-Hoaglin), so the last of an even spread is not blamed.

Two threads are degenerate for median statistics: the median is their mean, so the gap would
be half their difference and the ratio diluted (a thread finishing 1.2x after the other is
only 1.09x their mean and would pass), and the MAD is half the difference, so both z-scores are
always +-0.67 and say nothing. So with 2 threads the reference is the other thread: the ratio
and gap rules then mean what they mean with many threads (the straggler against a typical
peer), and the gap is the whole difference, which the excess parts below add up to.

Its **gap** (finish minus the reference) is then split into what the straggler
spent more than its peers (the other writer threads, medians over them):

- ``late-start``: its first record began later than the peers' (start minus their median
  start): staging or queueing, it waited for its first chunk or was busy with an earlier
  checkpoint;
- ``cpu-wait``, ``blocked``, ``on-cpu``: its run-queue wait, blocked time and on-CPU time
  beyond what the peers spent *for the same bytes* (its bytes times the peers' median seconds
  per byte; a thread that merely took more chunks is not slow);
- ``idle``: its time between its own records beyond the peers' median (outside any record:
  waiting for the next chunk, a wake-up).

The cause is the largest of the first four when it accounts for at least ``DOMINANT_SHARE``
(half) of the gap: the parts roughly add up to the gap, so no other part can then be as
large and the answer is unambiguous. Otherwise the cause is ``unknown`` and ``cause_why``
says why: idle time dominates (the records cannot say what the thread did), no part
dominates, or the scheduler counters were not measured (schema version 1, ``-1``): then only
a late start (which needs no counters) is named, anything inside operations is not guessed.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ckptlab.analysis.stragglers import OUTLIER_Z

MIN_RATIO = 1.1
MIN_GAP_S = 1e-3
DOMINANT_SHARE = 0.5
CAUSES = ("late-start", "cpu-wait", "blocked", "on-cpu")
# cause class -> (key of a thread row, in words)
PART_OF = {"cpu-wait": ("runq_wait_s", "waiting for a CPU"), "blocked": ("blocked_s", "blocked"),
           "on-cpu": ("on_cpu_s", "on a CPU")}
IN_WORDS = {"late-start": "starting late", "cpu-wait": "waiting for a CPU (runnable, another thread had its core)",
            "blocked": "blocked off CPU (device, writeback or a lock)",
            "on-cpu": "running on its CPU (checksum/copy, frequency, a busy sibling core)"}


def reference_finish(finish: Sequence[float], last: int) -> float:
    """What the last thread ``last`` is compared with: the median finish, or with 2 threads the
    other thread's (module doc: the median of 2 is their mean)."""
    if len(finish) == 2:
        return float(finish[1 - last])
    return float(np.median(finish))


def is_straggler(finish: Sequence[float], last: int, z: float) -> bool:
    """The module doc's three rules for the last thread ``last`` of ``finish``."""
    ref = reference_finish(finish, last)
    gap = finish[last] - ref
    if len(finish) < 2 or ref <= 0 or gap < MIN_GAP_S or finish[last] < MIN_RATIO * ref:
        return False
    return len(finish) < 3 or z > OUTLIER_Z


def _per_byte(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    rates = [r[key] / r["bytes"] for r in rows if r["bytes"] > 0 and r[key] is not None]
    return float(np.median(rates)) if rates and all(r[key] is not None for r in rows) else None


def excess_parts(straggler: dict[str, Any], peers: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Seconds the straggler spent beyond its peers, per part (module doc); None where the
    counters were not measured."""
    out: dict[str, float | None] = {
        "late-start": straggler["start_s"] - float(np.median([p["start_s"] for p in peers])),
        "idle": straggler["idle_s"] - float(np.median([p["idle_s"] for p in peers])),
    }
    for cause, (key, _) in PART_OF.items():
        rate = _per_byte(peers, key)
        out[cause] = None if rate is None or straggler[key] is None else straggler[key] - rate * straggler["bytes"]
    return out


def classify(gap_s: float, excess: dict[str, float | None]) -> tuple[str, str, float]:
    """(cause, why in words, share of the gap the cause explains)."""
    late = excess["late-start"] or 0.0
    if late >= DOMINANT_SHARE * gap_s:
        return "late-start", f"its first chunk started {late * 1e3:.1f} ms after the other threads' median start", late / gap_s
    if any(excess[c] is None for c in PART_OF):
        return ("unknown", "the scheduler counters (run_ns, wait_ns) were not measured in this trace (schema "
                "version 1 or -1 values), so time inside its operations cannot be split; not guessed", 0.0)
    parts = {c: float(excess[c]) for c in CAUSES}
    cause = max(parts, key=lambda c: parts[c])
    share = parts[cause] / gap_s
    if share >= DOMINANT_SHARE:
        return cause, (f"it spent {parts[cause] * 1e3:.1f} ms more than the other threads would have for its "
                       f"bytes {IN_WORDS[cause]}"), share
    idle = excess["idle"] or 0.0
    if idle >= DOMINANT_SHARE * gap_s:
        return ("unknown", f"{idle * 1e3:.1f} ms of the gap was idle between its own records (outside any "
                "operation, e.g. a fault delay); the records cannot say why", 0.0)
    words = ", ".join(f"{c} {v * 1e3:.1f} ms" for c, v in sorted(parts.items(), key=lambda kv: -kv[1]))
    return "unknown", f"no part explains half of the {gap_s * 1e3:.1f} ms gap ({words})", 0.0
