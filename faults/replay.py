"""Crash states a Linux file system may leave after a power cut, rebuilt from an I/O log.

ALICE / CrashMonkey style (docs/BACKGROUND.md §2, tier L0), root-free: the engine records
its operations (faults/iolog.py); :class:`CrashModel` replays them onto inodes and, for a
crash after the first ``k`` records, separates what is *durable* from what is merely
*pending*, under a conservative persistence model that holds on every Linux file system:

- A file's data and size (write, fallocate) are durable once an ``fsync``/``fdatasync`` of that
  file returned after them. Until then each write may be lost, kept, or torn (a prefix kept,
  at 512-byte granularity, the rest old bytes or garbage), independently of the others.
- A directory entry change (create, mkdir, rename, unlink, rmdir) is durable once an
  ``fsync`` of the directory holding the entry returned after it (both directories for a
  rename between two). A file fsync does not persist its name; a directory fsync does not
  persist its files' data. Until then each entry change may be lost or kept, in any subset
  (a rename is atomic: old name or new, never both).

:meth:`CrashModel.states` enumerates, for every crash point, the state with nothing pending
kept ("durable": the pure power cut), everything kept ("all": what a process crash leaves),
only the data or only the entries, the last pending write torn, and random subsets; identical
states are reported once. Each state is a ``{relative path: bytes | None (directory)}`` map
that :func:`materialize` writes into a directory for the loader to run on.
"""
from __future__ import annotations

import bisect
import os
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from ckptlab import _engine
from ckptlab.faults.iolog import IoRecord

DIR = None  # value of a directory in a state map
TEAR_GRANULE = 512


@dataclass
class LogicalOp:
    idx: int                 # index of the record in the log
    kind: str                # write extend sync add remove rename
    inode: int               # file for write/extend, synced inode for sync, directory for entry ops
    name: str = ""
    target: int = -1         # inode an entry op adds/removes/moves
    dir2: int = -1           # rename destination directory
    name2: str = ""
    offset: int = 0
    length: int = 0
    data: bytes | None = field(default=None, repr=False)

    @property
    def is_data(self) -> bool:
        return self.kind in ("write", "extend")

    @property
    def is_entry(self) -> bool:
        return self.kind in ("add", "remove", "rename")


@dataclass(frozen=True)
class CrashState:
    k: int                          # records applied before the crash
    variant: str
    files: dict[str, bytes | None]  # relative path -> content, None for directories
    signature: int
    pending: int                    # operations that were not durable at k


class ReplayError(RuntimeError):
    pass


class CrashModel:
    """Inode-level replay of an engine I/O log rooted at the checkpoint directory."""

    ROOT = 0

    def __init__(self, records: list[IoRecord], root: str | None = None,
                 initial: dict[str, bytes | None] | None = None) -> None:
        self.records = records
        starts = [r for r in records if r.is_mark and r.path == "start"]
        if root is None:
            if not starts:
                raise ReplayError("the log has no 'start' marker; pass root=")
            root = starts[0].detail()["dir"]
        self.root = os.path.normpath(root)
        self.is_dir: dict[int, bool] = {self.ROOT: True}
        self.initial_entries: dict[int, dict[str, int]] = {self.ROOT: {}}
        self.initial_data: dict[int, bytes] = {}
        self._next = 1
        for rel in sorted(initial or {}, key=lambda p: p.count("/")):
            self._add_initial(rel, (initial or {})[rel])
        self.ops: list[LogicalOp] = []
        self.syncs: dict[int, list[int]] = {}
        self._forward()

    # --- building -------------------------------------------------------------------------
    def _new(self, is_dir: bool) -> int:
        ino = self._next
        self._next += 1
        self.is_dir[ino] = is_dir
        if is_dir:
            self.initial_entries[ino] = {}
        return ino

    def _add_initial(self, rel: str, content: bytes | None) -> None:
        parts = rel.split("/")
        d = self.ROOT
        for p in parts[:-1]:
            d = self.initial_entries[d][p]
        ino = self._new(content is None)
        if content is not None:
            self.initial_data[ino] = bytes(content)
        self.initial_entries[d][parts[-1]] = ino

    def _split(self, path: str) -> list[str] | None:
        path = os.path.normpath(path)
        if path == self.root:
            return []
        if not path.startswith(self.root.rstrip("/") + "/"):
            return None
        return path[len(self.root.rstrip("/")) + 1:].split("/")

    def _forward(self) -> None:
        ns = {d: dict(e) for d, e in self.initial_entries.items()}

        def lookup(parts: list[str]) -> int | None:
            ino = self.ROOT
            for p in parts:
                if not self.is_dir.get(ino) or p not in ns[ino]:
                    return None
                ino = ns[ino][p]
            return ino

        def parent_of(path: str) -> tuple[int, str] | None:
            parts = self._split(path)
            if not parts:
                return None
            d = lookup(parts[:-1])
            return None if d is None else (d, parts[-1])

        for i, r in enumerate(self.records):
            if r.is_mark or r.err:
                continue
            op = r.op
            if op in ("mkdir", "create", "open_create"):
                pn = parent_of(r.path)
                if pn is None:
                    continue
                d, name = pn
                if name in ns[d]:
                    continue  # open_create of an existing file
                ino = self._new(op == "mkdir")
                if op == "mkdir":
                    ns[ino] = {}
                ns[d][name] = ino
                self.ops.append(LogicalOp(i, "add", d, name, ino))
            elif op in ("write", "fallocate"):
                parts = self._split(r.path)
                ino = None if parts is None else lookup(parts)
                if ino is None:
                    continue
                if op == "write":
                    if r.nbytes and r.data is None:
                        raise ReplayError("the I/O log was recorded without data (CKPTLAB_IO_LOG_DATA=0); "
                                          "crash states need the written bytes")
                    self.ops.append(LogicalOp(i, "write", ino, offset=r.offset, length=r.nbytes, data=r.data or b""))
                else:
                    self.ops.append(LogicalOp(i, "extend", ino, offset=r.offset, length=r.nbytes))
            elif op in ("fsync", "fdatasync", "fsync_dir"):
                parts = self._split(r.path)
                ino = None if parts is None else lookup(parts)
                if ino is None:
                    continue
                self.ops.append(LogicalOp(i, "sync", ino))
                self.syncs.setdefault(ino, []).append(i)
            elif op in ("unlink", "rmdir"):
                pn = parent_of(r.path)
                if pn is None or pn[1] not in ns[pn[0]]:
                    continue
                d, name = pn
                ino = ns[d].pop(name)
                self.ops.append(LogicalOp(i, "remove", d, name, ino))
            elif op == "rename":
                src, dst = parent_of(r.path), parent_of(r.path2)
                if src is None or dst is None or src[1] not in ns[src[0]]:
                    continue
                ino = ns[src[0]].pop(src[1])
                ns[dst[0]][dst[1]] = ino
                self.ops.append(LogicalOp(i, "rename", src[0], src[1], ino, dst[0], dst[1]))

    # --- what is durable ---------------------------------------------------------------------
    def _synced_between(self, ino: int, lo: int, hi: int) -> bool:
        s = self.syncs.get(ino)
        if not s:
            return False
        j = bisect.bisect_right(s, lo)
        return j < len(s) and s[j] < hi

    def durable(self, op: LogicalOp, k: int) -> bool:
        if op.kind == "sync":
            return True
        if op.kind == "rename" and op.dir2 != op.inode:
            return self._synced_between(op.inode, op.idx, k) and self._synced_between(op.dir2, op.idx, k)
        return self._synced_between(op.inode, op.idx, k)

    def pending(self, k: int) -> list[LogicalOp]:
        return [op for op in self.ops if op.idx < k and op.kind != "sync" and not self.durable(op, k)]

    def crash_points(self) -> list[int]:
        """Record counts worth crashing after: 0, after every file-system operation, after
        every acknowledgement marker (the oracle changes there), and the whole log."""
        pts = {0, len(self.records)}
        for i, r in enumerate(self.records):
            if not r.is_mark and not r.err or r.is_mark and r.path in ("ack", "fail"):
                pts.add(i + 1)
        return sorted(pts)

    # --- building one state --------------------------------------------------------------------
    def build(self, k: int, keep, tear) -> dict[str, bytes | None]:
        """The state after a crash at ``k``: durable ops, plus pending ones where keep(op);
        tear(op) -> None or (bytes kept, fill) for a kept pending write."""
        ns = {d: dict(e) for d, e in self.initial_entries.items()}
        data: dict[int, bytearray] = {}
        for op in self.ops:
            if op.idx >= k:
                break
            if op.kind == "sync":
                continue
            is_durable = self.durable(op, k)
            if not is_durable and not keep(op):
                continue
            if op.kind == "add":
                if self.is_dir[op.target]:
                    ns.setdefault(op.target, {})
                ns[op.inode][op.name] = op.target
            elif op.kind == "remove":
                if ns[op.inode].get(op.name) == op.target:
                    del ns[op.inode][op.name]
            elif op.kind == "rename":
                if ns[op.inode].get(op.name) == op.target:
                    existing = ns[op.dir2].get(op.name2)
                    if existing is not None and self.is_dir.get(existing) and ns.get(existing):
                        continue  # rename onto a non-empty directory cannot happen
                    del ns[op.inode][op.name]
                    ns[op.dir2][op.name2] = op.target
            else:
                buf = data.get(op.inode)
                if buf is None:
                    buf = data[op.inode] = bytearray(self.initial_data.get(op.inode, b""))
                if op.kind == "extend":
                    end = op.offset + op.length
                    if len(buf) < end:
                        buf.extend(bytes(end - len(buf)))
                    continue
                payload = op.data or b""
                t = None if is_durable else tear(op)
                if t is not None:
                    cut, fill = t
                    old = bytes(buf[op.offset:op.offset + len(payload)])
                    old += bytes(len(payload) - len(old))
                    rest = fill[: len(payload) - cut] if fill is not None else old[cut:]
                    payload = payload[:cut] + rest
                end = op.offset + len(payload)
                if len(buf) < end:
                    buf.extend(bytes(end - len(buf)))
                buf[op.offset:end] = payload
        out: dict[str, bytes | None] = {}
        seen = set()

        def walk(ino: int, prefix: str) -> None:
            for name, child in sorted(ns.get(ino, {}).items()):
                rel = f"{prefix}{name}"
                if self.is_dir.get(child):
                    if child in seen:
                        continue
                    seen.add(child)
                    out[rel] = DIR
                    walk(child, rel + "/")
                else:
                    out[rel] = bytes(data[child]) if child in data else self.initial_data.get(child, b"")
        walk(self.ROOT, "")
        return out

    def states(self, rng: random.Random, random_variants: int = 2, points: list[int] | None = None,
               torn: bool = True, context=None) -> Iterator[CrashState]:
        """Every distinct crash state over ``points`` (default: :meth:`crash_points`).

        ``context(k)`` returns what else the checker depends on at crash point k (e.g. the
        steps acknowledged so far): a state is reported again when its context differs.
        """
        seen: set = set()
        for k in (points if points is not None else self.crash_points()):
            ctx_key = context(k) if context is not None else None
            pend = self.pending(k)
            writes = [op for op in pend if op.kind == "write" and op.length > 0]
            variants: list[tuple[str, object, object]] = [("durable", lambda op: False, lambda op: None)]
            if pend:
                variants.append(("all", lambda op: True, lambda op: None))
                if any(op.is_data for op in pend) and any(op.is_entry for op in pend):
                    variants.append(("data", lambda op: op.is_data, lambda op: None))
                    variants.append(("entries", lambda op: op.is_entry, lambda op: None))
                if torn and writes:
                    last = writes[-1]
                    cut = rng.randrange(0, max(1, last.length // TEAR_GRANULE)) * TEAR_GRANULE
                    fill = rng.randbytes(last.length) if rng.random() < 0.5 else None
                    variants.append(("torn", lambda op: True,
                                     lambda op, last=last, cut=cut, fill=fill: (cut, fill) if op is last else None))
                for i in range(random_variants if len(pend) > 1 or torn else 0):
                    chosen = {id(op) for op in pend if rng.random() < 0.5}
                    tears = {}
                    for op in writes:
                        if id(op) in chosen and torn and rng.random() < 0.25:
                            c = rng.randrange(0, max(1, op.length // TEAR_GRANULE)) * TEAR_GRANULE
                            tears[id(op)] = (c, rng.randbytes(op.length) if rng.random() < 0.5 else None)
                    variants.append((f"random{i}", lambda op, chosen=chosen: id(op) in chosen,
                                     lambda op, tears=tears: tears.get(id(op))))
            for name, keep, tear in variants:
                files = self.build(k, keep, tear)
                sig = signature(files)
                if (sig, ctx_key) in seen:
                    continue
                seen.add((sig, ctx_key))
                yield CrashState(k, name, files, sig, len(pend))

    # --- the history the oracle needs ---------------------------------------------------------
    def marks_before(self, kind: str, k: int) -> list[dict[str, str]]:
        return [r.detail() for r in self.records[:k] if r.is_mark and r.path == kind]


def signature(files: dict[str, bytes | None]) -> int:
    """64 bits identifying a state (CRC32 and CRC32C of everything)."""
    a = b = 0
    for path in sorted(files):
        content = files[path]
        head = path.encode() + (b"\0D" if content is None else b"\0F" + len(content).to_bytes(8, "little"))
        a, b = zlib.crc32(head, a), _engine.crc32c(head, b)
        if content:
            a, b = zlib.crc32(content, a), _engine.crc32c(content, b)
    return a << 32 | b


def materialize(files: dict[str, bytes | None], dest: str) -> None:
    """Write a state map into the (empty or missing) directory ``dest``."""
    os.makedirs(dest, exist_ok=True)
    for rel in sorted(files, key=lambda p: p.count("/")):
        path = os.path.join(dest, rel)
        if files[rel] is None:
            os.makedirs(path, exist_ok=True)
        else:
            with open(path, "wb") as f:
                f.write(files[rel])


def snapshot(directory: str) -> dict[str, bytes | None]:
    """A directory's current contents as a state map (the durable start of a replay)."""
    out: dict[str, bytes | None] = {}
    for base, dirs, files in os.walk(directory):
        rel = os.path.relpath(base, directory)
        for d in dirs:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in files:
            with open(os.path.join(base, f), "rb") as fh:
                out[os.path.normpath(os.path.join(rel, f))] = fh.read()
    return out
