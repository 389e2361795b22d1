"""What ``ckptlab inspect`` shows of a multi-rank directory (core/global_commit.py layout):
the world size, each globally committed step with its parts, and parts no record covers.

Read only: nothing is repaired or deleted, so a directory can be inspected while a job runs
(a part in flight is simply not committed yet). A part is "corrupt" when its MANIFEST or
sizes fail (``--verify``: any chunk's CRC32C) or when it is not the part the global record
acknowledged (its MANIFEST's CRC32C or size differs); a step is corrupt when its record does
not decode or any part is.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from ckptlab.core import global_commit as gc
from ckptlab.core.commit import committed_step_dirs
from ckptlab.core.errors import CorruptCheckpointError
from ckptlab.core.recovery import read_manifest, verify_checkpoint

__all__ = ["PartStatus", "GlobalStep", "GlobalInspection", "is_multi_rank", "inspect_global"]


@dataclass
class PartStatus:
    rank: int
    step: int
    path: str
    nbytes: int
    status: str  # "ok" (verified), "unverified" (manifest and sizes only), "corrupt", "missing"
    identity_matches: bool | None = None  # MANIFEST is the one the record names; None: no record
    problem: str | None = None


@dataclass
class GlobalStep:
    step: int
    world_size: int
    status: str  # worst of its parts; "corrupt" also when the record does not decode
    record: str
    parts: list[PartStatus] = field(default_factory=list)
    problem: str | None = None


@dataclass
class GlobalInspection:
    directory: str
    world_size: int | None  # the newest decodable record's, else how many rank_* directories
    steps: list[GlobalStep]
    uncommitted: list[PartStatus]  # committed parts that no global record covers

    @property
    def corrupt(self) -> bool:
        return any(s.status == "corrupt" for s in self.steps)

    def as_dict(self) -> dict:
        return asdict(self)


def is_multi_rank(directory: str | os.PathLike) -> bool:
    """A directory written by the multi-rank checkpointer (a ``global/`` or ``rank_*`` entry)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    return gc.GLOBAL_DIR in names or any(n.startswith("rank_") and n[5:].isdigit() for n in names)


def _part(path: str, rank: int, step: int, verify: bool, threads: int) -> PartStatus:
    if not os.path.isdir(path):
        return PartStatus(rank, step, path, 0, "missing", problem=f"{path}: part of rank {rank} is missing")
    try:
        m = verify_checkpoint(path, threads) if verify else read_manifest(path)
    except CorruptCheckpointError as e:
        return PartStatus(rank, step, path, _dir_bytes(path), "corrupt", problem=str(e))
    nbytes = sum(f.nbytes for f in m.files)
    if m.step != step:
        return PartStatus(rank, step, path, nbytes, "corrupt", problem=f"{path}: part says step {m.step}")
    return PartStatus(rank, step, path, nbytes, "ok" if verify else "unverified")


def _dir_bytes(path: str) -> int:
    try:
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    except OSError:
        return 0


def inspect_global(directory: str | os.PathLike, verify: bool = False, threads: int = 4) -> GlobalInspection:
    """Every global record (oldest first) with its parts checked, and the uncovered parts."""
    directory = os.path.abspath(os.fspath(directory))
    steps: list[GlobalStep] = []
    covered: set[tuple[int, int]] = set()
    world: int | None = None
    for s, rpath in gc.recorded_steps(directory):
        try:
            record = gc.read_record(rpath)
        except CorruptCheckpointError as e:
            steps.append(GlobalStep(s, 0, "corrupt", rpath, problem=str(e)))
            continue
        world = record.world_size
        parts = []
        for rank in range(record.world_size):
            path = gc.part_path(directory, rank, record.step)
            covered.add((rank, record.step))
            part = _part(path, rank, record.step, verify, threads)
            if part.status != "missing":
                try:
                    part.identity_matches = gc.part_identity(path, rank) == record.parts[rank]
                except CorruptCheckpointError:
                    part.identity_matches = False
                if not part.identity_matches and part.status != "corrupt":
                    part.status = "corrupt"
                    part.problem = f"{path}: MANIFEST differs from the one the global record acknowledged"
            parts.append(part)
        bad = any(p.status in ("corrupt", "missing") for p in parts)
        status = "corrupt" if bad else ("ok" if verify else "unverified")
        steps.append(GlobalStep(record.step, record.world_size, status, rpath, parts))
    uncommitted = [_part(path, rank, s, verify, threads)
                   for rank, rdir in gc.rank_directories(directory).items()
                   for s, path in committed_step_dirs(rdir) if (rank, s) not in covered]
    return GlobalInspection(directory, world if world is not None else (len(gc.rank_directories(directory)) or None),
                            steps, uncommitted)
