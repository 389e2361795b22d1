"""The loss file: one line per optimizer step, ``<step> <loss>``, compared byte for byte.

The loss is written with ``repr(float)``. Python's float repr is the shortest decimal that
reads back to the same double, and a fp32/bf16 loss converts to a double exactly, so two
files are byte-identical exactly when every loss is bit-identical — "identical to the last
bit" is ``cmp a.txt b.txt``. ``float.fromhex``-style hex is not needed and stays readable.

A resumed run first cuts the file back to the checkpoint's step (a killed run may have
logged steps past its last durable checkpoint), then appends, so the file always describes
the trajectory that the checkpoints hold.

A record of the run like a trace, so it lives in profiling: training writes it, analysis
(``analysis.losses``) and the validation workflow read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ckptlab.profiling.files import atomic_write_bytes

__all__ = ["LossWriter", "read_loss_file", "truncate_loss_file", "compare_loss_files",
           "LossMismatch", "format_line"]


def format_line(step: int, loss: float) -> str:
    return f"{step} {float(loss)!r}\n"


def read_loss_file(path: str | os.PathLike[str]) -> list[tuple[int, float]]:
    """[(step, loss), ...] in file order; ``ValueError`` naming the line if malformed."""
    rows = []
    with open(path, encoding="ascii") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected '<step> <loss>', got {line!r}")
            rows.append((int(parts[0]), float(parts[1])))
    return rows


def truncate_loss_file(path: str | os.PathLike[str], last_step: int) -> int:
    """Keep the lines with step <= ``last_step`` (atomically); returns how many were kept."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, encoding="ascii") as f:
        kept = [line for line in f if line.split() and int(line.split()[0]) <= last_step]
    atomic_write_bytes(path, "".join(kept).encode("ascii"))
    return len(kept)


class LossWriter:
    """Appends one line per step and flushes it, so a SIGKILL loses no logged step."""

    def __init__(self, path: str | os.PathLike[str] | None, *, append: bool) -> None:
        self._file: IO[str] | None = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a" if append else "w", encoding="ascii")

    def write(self, step: int, loss: float) -> None:
        if self._file is not None:
            self._file.write(format_line(step, loss))
            self._file.flush()

    def sync(self) -> None:
        """fsync, for when the file must survive more than a process kill."""
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class LossMismatch:
    """Where two loss files first differ (``line`` is 1-based; a value is None past EOF)."""

    line: int
    left: str | None
    right: str | None

    def __str__(self) -> str:
        return f"line {self.line}: {self.left!r} != {self.right!r}"


def compare_loss_files(left: str | os.PathLike[str],
                       right: str | os.PathLike[str]) -> LossMismatch | None:
    """None when the files are byte-identical, else the first differing line."""
    a = Path(left).read_text(encoding="ascii").splitlines()
    b = Path(right).read_text(encoding="ascii").splitlines()
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x != y:
            return LossMismatch(i + 1, x, y)
    if Path(left).read_bytes() != Path(right).read_bytes():  # e.g. a missing final newline
        return LossMismatch(len(a), "<bytes differ>", "<bytes differ>")
    return None
