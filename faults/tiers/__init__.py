"""The campaign's tiers (docs/BACKGROUND.md §2), one module each, and their registry.

    points       points.py       SIGKILL at every fault point x checkpoint x occurrence
    random       random_time.py  SIGKILL at a uniformly random time
    ioerr        ioerr.py        the N-th failing operation returns an errno or a short write
    powerloss    powerloss.py    every crash state a power cut may leave, replayed from an I/O log
    bitrot       bitrot.py       damage to committed checkpoints
    enospc       enospc.py       a real full disk (tmpfs in a user namespace)
    realfs       realfs.py       kill, I/O-error and full-disk trials on loop-mounted ext4 and xfs (root)
    training     training.py     the reference training loop crashed, resumed, compared
    multirank    multirank.py    a gloo world: one rank killed at each protocol point; every rank's I/O replayed

common.py holds what they share: trials, run shapes, the saver child, checks, result rows.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ckptlab.faults.tiers import bitrot, enospc, ioerr, multirank, points, powerloss, random_time, realfs, training
from ckptlab.faults.tiers.common import Context


def _always() -> tuple[bool, str]:
    return True, ""


def _no_parts() -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Tier:
    generate: Callable[[int, int, bool], list[dict]]  # (campaign seed, trial count, short) -> trials
    run: Callable[[dict, Context, str], dict]        # (trial, context, its directory) -> result row
    available: Callable[[], tuple[bool, str]] = _always  # (runs here, why not)
    parts_skipped: Callable[[], dict[str, str]] = _no_parts  # parts of an available tier left out, and why


REGISTRY: dict[str, Tier] = {
    "points": Tier(points.generate, points.run),
    "random": Tier(random_time.generate, random_time.run),
    "ioerr": Tier(ioerr.generate, ioerr.run),
    "powerloss": Tier(powerloss.generate, powerloss.run),
    "bitrot": Tier(bitrot.generate, bitrot.run),
    "enospc": Tier(enospc.generate, enospc.run, enospc.available),
    "realfs": Tier(realfs.generate, realfs.run, realfs.available, realfs.skipped),
    "training": Tier(training.generate, training.run, training.available),
    "multirank": Tier(multirank.generate, multirank.run),
}
TIERS = tuple(REGISTRY)
