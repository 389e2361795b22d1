"""The campaign's tiers (docs/BACKGROUND.md §2), one module each, and their registry.

    points       points.py       SIGKILL at every fault point x checkpoint x occurrence
    random       random_time.py  SIGKILL at a uniformly random time
    ioerr        ioerr.py        the N-th failing operation returns an errno or a short write
    powerloss    powerloss.py    every crash state a power cut may leave, replayed from an I/O log
    bitrot       bitrot.py       damage to committed checkpoints
    enospc       enospc.py       a real full disk (tmpfs in a user namespace)
    training     training.py     the reference training loop crashed, resumed, compared

common.py holds what they share: trials, run shapes, the saver child, checks, result rows.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ckptlab.faults.tiers import bitrot, enospc, ioerr, points, powerloss, random_time, training
from ckptlab.faults.tiers.common import Context


def _always() -> tuple[bool, str]:
    return True, ""


@dataclass(frozen=True)
class Tier:
    generate: Callable[[int, int, bool], list[dict]]  # (campaign seed, trial count, short) -> trials
    run: Callable[[dict, Context, str], dict]        # (trial, context, its directory) -> result row
    available: Callable[[], tuple[bool, str]] = _always  # (runs here, why not)


REGISTRY: dict[str, Tier] = {
    "points": Tier(points.generate, points.run),
    "random": Tier(random_time.generate, random_time.run),
    "ioerr": Tier(ioerr.generate, ioerr.run),
    "powerloss": Tier(powerloss.generate, powerloss.run),
    "bitrot": Tier(bitrot.generate, bitrot.run),
    "enospc": Tier(enospc.generate, enospc.run, enospc.available),
    "training": Tier(training.generate, training.run, training.available),
}
TIERS = tuple(REGISTRY)
