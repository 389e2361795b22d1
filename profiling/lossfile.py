"""The loss file: one line per optimizer step, compared byte for byte.

Two formats, chosen by the file name when a run creates the file:

* ``*.csv``: real CSV, a ``step,loss`` header then ``<step>,<loss>`` (``pandas.read_csv``
  gives an int64 ``step`` and a float64 ``loss`` column);
* any other name (``loss.txt``, the validation's files): ``<step> <loss>``, no header.

The loss is written with ``repr(float)`` in both: Python's float repr is the shortest decimal
that reads back to the same double, and a fp32/bf16 loss converts to a double exactly, so two
files are byte-identical exactly when every loss is bit-identical ("identical to the last
bit" is ``cmp a.csv b.csv``), and a CSV reader gets the very same doubles back (pandas' parser
round-trips them, tested). ``float.hex`` would be exact too, but a CSV reader would see
strings, not numbers.

Readers go by the content, not the name: a file without the header is the space-separated
format, which earlier runs also wrote under ``loss_trace_*.csv`` names; a resumed run
appends in the format the file already has, so an old run stays comparable with itself.

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
           "LossMismatch", "format_line", "CSV_HEADER"]


CSV_HEADER = "step,loss"


def format_line(step: int, loss: float, sep: str = " ") -> str:
    return f"{step}{sep}{float(loss)!r}\n"


def _is_csv_name(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() == ".csv"


def _separator_of(path: Path) -> str | None:
    """The separator of an existing, non-empty file (',' when it has the CSV header), else None."""
    try:
        with open(path, encoding="ascii") as f:
            first = f.readline()
    except FileNotFoundError:
        return None
    if not first:
        return None
    return "," if first.strip() == CSV_HEADER else " "


def _parse(path: str | os.PathLike[str], lineno: int, line: str) -> tuple[int, float]:
    parts = line.strip().split(",") if "," in line else line.split()
    if len(parts) != 2:
        raise ValueError(f"{path}:{lineno}: expected '<step>,<loss>' or '<step> <loss>', got {line!r}")
    try:
        return int(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"{path}:{lineno}: expected a step and a loss, got {line!r}") from None


def read_loss_file(path: str | os.PathLike[str]) -> list[tuple[int, float]]:
    """[(step, loss), ...] in file order, from either format; ``ValueError`` naming the line
    if malformed."""
    rows = []
    with open(path, encoding="ascii") as f:
        for lineno, line in enumerate(f, 1):
            if lineno == 1 and line.strip() == CSV_HEADER:
                continue
            rows.append(_parse(path, lineno, line))
    return rows


def truncate_loss_file(path: str | os.PathLike[str], last_step: int) -> int:
    """Keep the lines with step <= ``last_step`` (and a CSV header), atomically; returns how
    many steps were kept."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, encoding="ascii") as f:
        lines = f.readlines()
    header = lines[:1] if lines and lines[0].strip() == CSV_HEADER else []
    kept = [line for i, line in enumerate(lines[len(header):], len(header) + 1)
            if line.strip() and _parse(path, i, line)[0] <= last_step]
    atomic_write_bytes(path, "".join(header + kept).encode("ascii"))
    return len(kept)


class LossWriter:
    """Appends one line per step and flushes it, so a SIGKILL loses no logged step."""

    def __init__(self, path: str | os.PathLike[str] | None, *, append: bool) -> None:
        self._file: IO[str] | None = None
        self._sep = " "
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            existing = _separator_of(Path(path)) if append else None
            self._sep = existing or ("," if _is_csv_name(path) else " ")
            self._file = open(path, "a" if append else "w", encoding="ascii")
            if existing is None and self._sep == ",":
                self._file.write(CSV_HEADER + "\n")
                self._file.flush()

    def write(self, step: int, loss: float) -> None:
        if self._file is not None:
            self._file.write(format_line(step, loss, self._sep))
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
