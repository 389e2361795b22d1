"""The multi-rank layout on disk: per-rank part directories, the global commit record of a
step, and the partition plan that splits replicated tensors across ranks.

Layout (docs/FORMAT.md, "Multi-rank")::

    DIR/rank_00000/step_N/     rank 0's part: a normal single-process checkpoint
    DIR/rank_00001/step_N/     rank 1's part
    DIR/global/step_N.json     the global commit record, written by rank 0 last

A step is globally committed iff its record exists and decodes (its own CRC32C checks out).
The record is written as every ckptlab file is (temp file, fsync, rename, directory fsync),
after every rank's part is durable; retention deletes the record first, then the parts.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass

from ckptlab import _engine
from ckptlab.core.commit import step_dir_name
from ckptlab.core.durable import makedirs_durable, write_file_durable
from ckptlab.core.errors import CorruptCheckpointError
from ckptlab.core.manifest import MANIFEST_NAME
from ckptlab.core.writer_io import DISARMED, NO_CHECKPOINT, CheckpointIO, FilePoints, WriterIO

GLOBAL_DIR = "global"
RECORD_FORMAT = "ckptlab-global"
RECORD_VERSION = 1
MAX_RECORD_BYTES = 16 << 20
_RECORD_NAME = re.compile(r"step_([0-9]{1,18})\.json")


def rank_dir_name(rank: int) -> str:
    return f"rank_{rank:05d}"


def rank_directories(directory: str) -> dict[int, str]:
    """{rank: path} of the ``rank_*`` part directories in ``directory``, by rank."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return {}
    found = {int(n[5:]): os.path.join(directory, n) for n in names
             if n.startswith("rank_") and n[5:].isdigit() and os.path.isdir(os.path.join(directory, n))}
    return dict(sorted(found.items()))


def record_name(step: int) -> str:
    return f"{step_dir_name(step)}.json"


def part_path(directory: str, rank: int, step: int) -> str:
    return os.path.join(directory, rank_dir_name(rank), step_dir_name(step))


@dataclass(frozen=True)
class PartIdentity:
    """What the global record says about one rank's part: enough to notice that the part on
    disk is not the one that was acknowledged (a rewrite, a swap, a truncation)."""

    rank: int
    manifest_crc32c: int
    manifest_bytes: int

    def to_json(self) -> dict:
        return {"rank": self.rank, "manifest_crc32c": self.manifest_crc32c, "manifest_bytes": self.manifest_bytes}


def part_identity(path: str, rank: int) -> PartIdentity:
    """The identity of the committed part at ``path`` (its MANIFEST's CRC32C and size)."""
    mpath = os.path.join(path, MANIFEST_NAME)
    try:
        with open(mpath, "rb") as f:
            data = f.read(MAX_RECORD_BYTES * 64)
    except OSError as e:
        raise CorruptCheckpointError(mpath, f"part of rank {rank} has no readable MANIFEST: {e.strerror}") from None
    return PartIdentity(rank, _engine.crc32c(data), len(data))


@dataclass(frozen=True)
class GlobalRecord:
    step: int
    world_size: int
    parts: tuple[PartIdentity, ...]
    plan: tuple[int, ...]  # owner rank of each replicated region, in region order

    def body(self) -> dict:
        return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "step": self.step, "world_size": self.world_size,
                "parts": [p.to_json() for p in self.parts], "plan": list(self.plan)}


def encode_record(record: GlobalRecord) -> bytes:
    body = json.dumps(record.body(), sort_keys=True, separators=(",", ":"))
    doc = {"body": body, "crc32c": _engine.crc32c(body.encode())}
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def decode_record(data: bytes, source: str) -> GlobalRecord:
    """The one parser of a global record; anything else is a CorruptCheckpointError."""
    try:
        doc = json.loads(data)
        body_text = doc["body"]
        if _engine.crc32c(body_text.encode()) != doc["crc32c"]:
            raise CorruptCheckpointError(source, "global commit record fails its CRC32C")
        body = json.loads(body_text)
        if body["format"] != RECORD_FORMAT or body["version"] != RECORD_VERSION:
            raise CorruptCheckpointError(source, f"not a version {RECORD_VERSION} {RECORD_FORMAT} record")
        parts = tuple(PartIdentity(int(p["rank"]), int(p["manifest_crc32c"]), int(p["manifest_bytes"]))
                      for p in body["parts"])
        record = GlobalRecord(int(body["step"]), int(body["world_size"]), parts, tuple(int(r) for r in body["plan"]))
    except CorruptCheckpointError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptCheckpointError(source, f"global commit record does not decode: {type(e).__name__}: {e}") from None
    if [p.rank for p in parts] != list(range(record.world_size)):
        raise CorruptCheckpointError(source, f"record names parts {[p.rank for p in parts]} for a world of "
                                             f"{record.world_size}")
    return record


RECORD_FILE = FilePoints(before_fsync="before_record_fsync")  # the record's temp file


def write_record(directory: str, record: GlobalRecord, io: CheckpointIO = NO_CHECKPOINT) -> str:
    """Make ``record`` durable: temp file, fsync, rename, fsync of ``DIR/global``. Through
    ``io`` (core/writer_io.py) each operation is logged and passes the coordinator's fault
    points (``before_record_fsync``, ``before_record_rename``, ``before_record_dir_fsync``),
    an error a point returns failing the operation after it."""
    gdir = os.path.join(directory, GLOBAL_DIR)
    makedirs_durable(gdir, io.io)
    final = os.path.join(gdir, record_name(record.step))
    tmp = os.path.join(gdir, f".{record_name(record.step)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write_file_durable(tmp, encode_record(record), step=record.step, io=io, points=RECORD_FILE)
        io.check("before_record_rename", final)
        io.io.rename(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            io.io.unlink(tmp)
        raise
    io.check("before_record_dir_fsync", gdir)
    io.io.fsync_dir(gdir)
    return final


_RECORD_LEFTOVER = re.compile(r"\.step_\d+\.json\.tmp-.+")


def remove_record_leftovers(directory: str, io: WriterIO = DISARMED) -> list[str]:
    """Remove the temp files of record writes a crash interrupted (``global/.step_N.json.tmp-*``;
    never a committed record). Run by rank 0 when the ranks open, before any record is written."""
    gdir = os.path.join(directory, GLOBAL_DIR)
    try:
        names = [n for n in os.listdir(gdir) if _RECORD_LEFTOVER.fullmatch(n)]
    except FileNotFoundError:
        return []
    for n in names:
        io.unlink(os.path.join(gdir, n))
    if names:
        io.fsync_dir(gdir)
    return names


def read_record(path: str) -> GlobalRecord:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECORD_BYTES + 1)
    except OSError as e:
        raise CorruptCheckpointError(path, f"global commit record unreadable: {e.strerror}") from None
    if len(data) > MAX_RECORD_BYTES:
        raise CorruptCheckpointError(path, "global commit record is implausibly large")
    return decode_record(data, path)


def recorded_steps(directory: str) -> list[tuple[int, str]]:
    """(step, record path) of every committed-looking global record, oldest first."""
    gdir = os.path.join(directory, GLOBAL_DIR)
    try:
        names = os.listdir(gdir)
    except FileNotFoundError:
        return []
    out = [(int(m.group(1)), os.path.join(gdir, n)) for n in names if (m := _RECORD_NAME.fullmatch(n))]
    out.sort()
    return out


def delete_record(directory: str, step: int, io: CheckpointIO = NO_CHECKPOINT) -> None:
    """Uncommit ``step`` (retention): the record goes first, durably, then the parts."""
    gdir = os.path.join(directory, GLOBAL_DIR)
    try:
        io.io.unlink(os.path.join(gdir, record_name(step)))
    except FileNotFoundError:
        return
    io.io.fsync_dir(gdir)


def delete_part(rank_directory: str, step: int, io: CheckpointIO = NO_CHECKPOINT) -> None:
    """Delete one rank's part of ``step``: renamed to a ``.deleting-`` name first (no reader
    sees a half-deleted committed name; a crash leaves a leftover commit.recover() removes)."""
    path = os.path.join(rank_directory, step_dir_name(step))
    if not os.path.isdir(path):
        return
    trash = os.path.join(rank_directory, f".{step_dir_name(step)}.deleting-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    io.io.rename(path, trash)
    io.io.remove_tree(trash)
    io.io.fsync_dir(rank_directory)


def partition(sizes: list[tuple[str, int]], world_size: int) -> list[int]:
    """Owner rank of each region (``(name, nbytes)``, in region order): the same answer on
    every rank without communication. Largest first (ties by name), each to the rank with
    the fewest bytes so far (ties to the lowest rank)."""
    owners = [0] * len(sizes)
    load = [0] * world_size
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i][1], sizes[i][0])):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owners[i] = r
        load[r] += sizes[i][1]
    return owners
