"""Reading the engine's I/O log (csrc/io_log.hpp): one record per file-system operation.

Turn it on with ``Engine(io_log=PATH)`` / ``CheckpointConfig(io_log=PATH)`` / the
``CKPTLAB_IO_LOG`` environment variable (``CKPTLAB_IO_LOG_DATA=0`` leaves out the written
bytes). Records are in an order consistent with the engine threads' happens-before order;
a torn last record (the process was killed while appending) is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class IoRecord:
    seq: int
    t_ns: int
    tid: int
    op: str          # mkdir create open_create write fallocate fsync fdatasync fsync_dir rename unlink rmdir mark
    err: int         # errno; 0 = the operation succeeded
    path: str        # for marks: the marker kind (start submit point inject ack fail close)
    path2: str       # rename target; for marks the "key=value ..." detail
    offset: int
    nbytes: int
    crc: int
    data: bytes | None = field(default=None, repr=False)

    @property
    def is_mark(self) -> bool:
        return self.op == "mark"

    def detail(self) -> dict[str, str]:
        """A marker's key=value fields (the dir= value may hold spaces: it is last)."""
        out: dict[str, str] = {}
        text = self.path2
        if " dir=" in text or text.startswith("dir="):
            head, _, d = text.partition("dir=")
            out["dir"] = d
            text = head
        for tok in text.split():
            k, _, v = tok.partition("=")
            out[k] = v
        return out

    def __str__(self) -> str:
        if self.is_mark:
            return f"#{self.seq} [{self.tid}] mark {self.path} {self.path2}"
        extra = f" -> {self.path2}" if self.op == "rename" else ""
        if self.op in ("write", "fallocate"):
            extra = f" @{self.offset}+{self.nbytes}"
        err = f" (errno {self.err})" if self.err else ""
        return f"#{self.seq} [{self.tid}] {self.op} {self.path}{extra}{err}"


def _unescape(s: str) -> str:
    if s == "-":
        return ""
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append({"t": "\t", "n": "\n", "\\": "\\"}.get(s[i + 1], s[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_io_log(data: bytes) -> list[IoRecord]:
    """All complete records of a log, in order."""
    out = []
    pos, n = 0, len(data)
    while pos < n:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # torn header
        fields = data[pos:nl].decode("utf-8", "surrogateescape").split("\t")
        if len(fields) != 11:
            break
        seq, t_ns, tid, op, err, p1, p2, off, nb, crc, has = fields
        pos = nl + 1
        payload = None
        if has == "1":
            nbytes = int(nb)
            if pos + nbytes > n:
                break  # torn payload
            payload = bytes(data[pos:pos + nbytes])
            pos += nbytes
        out.append(IoRecord(int(seq), int(t_ns), int(tid), op, int(err), _unescape(p1), _unescape(p2),
                            int(off), int(nb), int(crc, 16), payload))
    return out


def read_io_log(path: str) -> list[IoRecord]:
    with open(path, "rb") as f:
        return parse_io_log(f.read())


def marks(records: list[IoRecord], kind: str) -> list[IoRecord]:
    return [r for r in records if r.is_mark and r.path == kind]


def point_census(records: list[IoRecord]) -> dict[str, int]:
    """How often each fault point was passed in a recorded run (for hit=N enumeration)."""
    counts: dict[str, int] = {}
    for r in marks(records, "point"):
        p = r.detail()["point"]
        counts[p] = counts.get(p, 0) + 1
    return counts


def format_log(records: list[IoRecord], limit: int | None = None) -> str:
    lines = [str(r) for r in records[:limit]]
    if limit is not None and len(records) > limit:
        lines.append(f"... {len(records) - limit} more")
    return "\n".join(lines)
