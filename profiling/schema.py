"""The trace record: its columns, the Arrow file schema, and reading and writing trace files.

``RAW_COLUMNS`` is the one Python list of a timing record's columns, in the order the engine
hands them over (``bindings.cpp`` ``records_to_columns``); docs/TRACE.md documents each.
Everything else derives from it: ``Record`` (what ``phase``/``record`` produce), the file
``SCHEMA`` (which adds the dictionary-encoded ``run_id`` and ``thread_name`` and encodes
``phase``), and ``Finaliser`` (raw columns -> file batches). A test compares it with the
engine's own list.

Importing this module needs neither numpy nor pyarrow, so ``phase`` can build a ``Record``
on a machine without pyarrow; the file functions import pyarrow when called.
"""
from __future__ import annotations

import functools
import json
import os
from collections import namedtuple
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ckptlab.profiling.files import atomic_replace

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

# Column -> numpy dtype name, in the engine's order (and the file's, see SCHEMA).
RAW_COLUMNS: dict[str, str] = {
    "ckpt_id": "uint64",
    "step": "int64",
    "thread": "int32",
    "cpu_begin": "int32",
    "cpu_end": "int32",
    "phase": "int16",
    "chunk": "int64",
    "offset": "uint64",
    "nbytes": "uint64",
    "t_begin_ns": "uint64",
    "t_end_ns": "uint64",
    "run_ns": "int64",
    "wait_ns": "int64",
    "ctx_vol": "int32",
    "ctx_invol": "int32",
}
# Scheduler counters over each record (-1 = not measured); optional in columns handed to a
# session and absent from schema-version-1 files.
SCHED_COLUMNS = ("run_ns", "wait_ns", "ctx_vol", "ctx_invol")
UNMEASURED = -1

# One Python-side record (``phase`` codes, not names): fields are RAW_COLUMNS, by name.
Record = namedtuple("Record", list(RAW_COLUMNS))

# Dictionary-encoded file columns: name -> (index dtype, the raw column it goes after; None:
# first). ``phase`` is encoded in place: its raw values (the phase codes) are the indices.
_DICTIONARIES = {"run_id": ("int32", None), "thread_name": ("int32", "thread"),
                 "phase": (RAW_COLUMNS["phase"], "phase")}

# Schema-metadata keys whose values are JSON (the others are plain strings).
JSON_KEYS = frozenset({"ckptlab.config", "ckptlab.versions", "ckptlab.threads", "ckptlab.phases",
                       "ckptlab.command", "ckptlab.cpu_steal"})


def file_columns() -> list[str]:
    """Column names of a trace file, in file order (RAW_COLUMNS plus run_id and thread_name)."""
    out = [n for n, (_, after) in _DICTIONARIES.items() if after is None]
    for name in RAW_COLUMNS:
        if name not in _DICTIONARIES:
            out.append(name)
        out += [n for n, (_, after) in _DICTIONARIES.items() if after == name]
    return out


@functools.cache
def file_schema() -> pa.Schema:
    """The Arrow schema of a trace file (docs/TRACE.md documents each column; a test keeps them in sync)."""
    import pyarrow as pa

    def field(name: str) -> pa.Field:
        if name in _DICTIONARIES:
            return pa.field(name, pa.dictionary(getattr(pa, _DICTIONARIES[name][0])(), pa.string()), nullable=False)
        return pa.field(name, pa.from_numpy_dtype(_dtype(RAW_COLUMNS[name])), nullable=False)

    return pa.schema([field(n) for n in file_columns()])


@functools.cache
def raw_schema() -> pa.Schema:
    """The schema of raw record batches (a session's spill file)."""
    import pyarrow as pa

    return pa.schema([pa.field(n, pa.from_numpy_dtype(_dtype(t)), nullable=False) for n, t in RAW_COLUMNS.items()])


def __getattr__(name: str) -> Any:
    if name == "SCHEMA":  # built on first use: pyarrow is imported only by code that needs it
        return file_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dtype(name: str) -> np.dtype:
    import numpy as np

    return np.dtype(name)


def normalise_raw(columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Engine-format columns as contiguous numpy arrays of RAW_COLUMNS' dtypes; missing
    scheduler counters become -1 (not measured), any other missing column is a ValueError."""
    import numpy as np

    missing = [n for n in RAW_COLUMNS if n not in columns and n not in SCHED_COLUMNS]
    if missing:
        raise ValueError(f"record columns lack {missing}")
    n = len(columns["t_begin_ns"])
    return {c: np.ascontiguousarray(columns[c], dtype=t) if c in columns else np.full(n, UNMEASURED, dtype=t)
            for c, t in RAW_COLUMNS.items()}


def records_to_raw(records: list[Record]) -> dict[str, np.ndarray]:
    """Python-side records as raw columns."""
    import numpy as np

    fields = list(zip(*records, strict=True)) if records else [()] * len(RAW_COLUMNS)
    return {name: np.asarray(fields[i], dtype=t) for i, (name, t) in enumerate(RAW_COLUMNS.items())}


class Finaliser:
    """Turns raw batches into file batches with one shared set of dictionaries."""

    def __init__(self, run_id: str, phases: list[str], threads: Mapping[int, str]) -> None:
        import numpy as np
        import pyarrow as pa

        self.tids = np.array(sorted(threads), dtype=np.int64)
        self.values = {"run_id": pa.array([run_id], pa.string()), "phase": pa.array(phases, pa.string()),
                       "thread_name": pa.array([threads[t] for t in sorted(threads)], pa.string())}

    def _indices(self, name: str, raw: Mapping[str, np.ndarray]) -> np.ndarray:
        import numpy as np

        if name == "run_id":
            return np.zeros(len(raw["t_begin_ns"]), np.int32)
        if name == "thread_name":
            return np.searchsorted(self.tids, raw["thread"].astype(np.int64)).astype(np.int32)
        return raw[name].astype(_DICTIONARIES[name][0])

    def __call__(self, raw: Mapping[str, np.ndarray]) -> pa.RecordBatch:
        import pyarrow as pa

        schema = file_schema()
        cols = [pa.DictionaryArray.from_arrays(pa.array(self._indices(f.name, raw)), self.values[f.name])
                if f.name in _DICTIONARIES else pa.array(raw[f.name]) for f in schema]
        return pa.RecordBatch.from_arrays(cols, schema=schema)


def _compression() -> str | None:
    import pyarrow as pa

    for codec in ("zstd", "lz4"):
        if pa.Codec.is_available(codec):
            return codec
    return None


def write_trace_file(path: str | os.PathLike, batches: Iterable[pa.RecordBatch], metadata: Mapping[str, str],
                     schema: pa.Schema | None = None) -> str:
    """Write record batches as an Arrow IPC file (Feather v2, zstd-compressed buffers)
    atomically: temp file in the same directory, fsync, rename, fsync the directory."""
    import pyarrow as pa

    schema = file_schema() if schema is None else schema
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    full_schema = schema.with_metadata(dict(metadata))
    options = pa.ipc.IpcWriteOptions(compression=_compression())

    def write(tmp: str) -> None:
        wrote = False
        with pa.OSFile(tmp, "wb") as sink:
            with pa.ipc.new_file(sink, full_schema, options=options) as writer:
                for batch in batches:
                    writer.write_batch(batch)
                    wrote = True
                if not wrote:
                    writer.write_batch(pa.RecordBatch.from_pylist([], schema=schema))

    atomic_replace(path, write)
    return path


def read_trace(path: str | os.PathLike) -> pa.Table:
    """A trace file as a pyarrow Table (memory-mapped); ``trace_metadata(t)`` decodes its metadata."""
    import pyarrow as pa

    with pa.memory_map(os.fspath(path), "r") as source:
        return pa.ipc.open_file(source).read_all()


def trace_metadata(table_or_schema: pa.Table | pa.Schema) -> dict[str, Any]:
    """The ``ckptlab.*`` schema metadata with JSON values decoded (keys without the prefix)."""
    import pyarrow as pa

    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    out: dict[str, Any] = {}
    for k, v in (schema.metadata or {}).items():
        key, value = k.decode(), v.decode()
        if not key.startswith("ckptlab."):
            continue
        out[key.removeprefix("ckptlab.")] = json.loads(value) if key in JSON_KEYS else value
    return out
