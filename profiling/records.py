"""Timing records -> Arrow IPC (Feather v2) trace files. Schema: docs/TRACE.md.

A ``TraceSession`` collects, for one run:

* the engine's records, drained from its per-thread rings (attached checkpointers; a
  background thread drains every ``drain_interval_s`` so a ring never fills), and those of
  verified reads (recovery hands them over while a session records);
* Python-side records from ``ckptlab.profiling.phase`` (training and checkpointer stages).

Rows are kept as compact numpy columns (~100 bytes a row); past ``spill_rows`` they are
appended to a hidden Arrow stream file next to the output, so memory stays bounded on long
runs. ``flush()``/``close()`` write the whole trace atomically: temp file, fsync, rename,
fsync of the directory. A reader never sees a half-written trace file.

    from ckptlab.profiling import start_trace

    with start_trace("runs/a/trace.arrow", checkpointer=ck, config=cfg) as session:
        ...   # train; ck must be opened with CheckpointConfig(trace=True)
"""
from __future__ import annotations

import json
import os
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from ckptlab.profiling import phases as _phases
from ckptlab.profiling.metadata import cpu_list_string, new_run_id, run_metadata
from ckptlab.profiling.nvtx_ranges import mark

# Raw columns as the engine hands them over (bindings.cpp records_to_columns), in file order.
RAW_COLUMNS: dict[str, np.dtype] = {
    "ckpt_id": np.dtype(np.uint64),
    "step": np.dtype(np.int64),
    "thread": np.dtype(np.int32),
    "cpu_begin": np.dtype(np.int32),
    "cpu_end": np.dtype(np.int32),
    "phase": np.dtype(np.int16),
    "chunk": np.dtype(np.int64),
    "offset": np.dtype(np.uint64),
    "nbytes": np.dtype(np.uint64),
    "t_begin_ns": np.dtype(np.uint64),
    "t_end_ns": np.dtype(np.uint64),
    "run_ns": np.dtype(np.int64),
    "wait_ns": np.dtype(np.int64),
    "ctx_vol": np.dtype(np.int32),
    "ctx_invol": np.dtype(np.int32),
}
# Scheduler counters over each record (-1 = not measured); optional in columns handed to
# add_records and absent from schema-version-1 files.
SCHED_COLUMNS = ("run_ns", "wait_ns", "ctx_vol", "ctx_invol")
_PY_ORDER = ("phase", "ckpt_id", "step", "chunk", "offset", "nbytes", "t_begin_ns", "t_end_ns", "thread",
             "cpu_begin", "cpu_end", "run_ns", "wait_ns", "ctx_vol", "ctx_invol")  # phases.py record tuples

# The file schema (docs/TRACE.md documents each column; a test keeps them in sync).
SCHEMA = pa.schema([
    pa.field("run_id", pa.dictionary(pa.int32(), pa.string()), nullable=False),
    pa.field("ckpt_id", pa.uint64(), nullable=False),
    pa.field("step", pa.int64(), nullable=False),
    pa.field("thread", pa.int32(), nullable=False),
    pa.field("thread_name", pa.dictionary(pa.int32(), pa.string()), nullable=False),
    pa.field("cpu_begin", pa.int32(), nullable=False),
    pa.field("cpu_end", pa.int32(), nullable=False),
    pa.field("phase", pa.dictionary(pa.int16(), pa.string()), nullable=False),
    pa.field("chunk", pa.int64(), nullable=False),
    pa.field("offset", pa.uint64(), nullable=False),
    pa.field("nbytes", pa.uint64(), nullable=False),
    pa.field("t_begin_ns", pa.uint64(), nullable=False),
    pa.field("t_end_ns", pa.uint64(), nullable=False),
    pa.field("run_ns", pa.int64(), nullable=False),
    pa.field("wait_ns", pa.int64(), nullable=False),
    pa.field("ctx_vol", pa.int32(), nullable=False),
    pa.field("ctx_invol", pa.int32(), nullable=False),
])
_RAW_SCHEMA = pa.schema([pa.field(n, pa.from_numpy_dtype(t), nullable=False) for n, t in RAW_COLUMNS.items()])

# Schema-metadata keys whose values are JSON (the others are plain strings).
JSON_KEYS = frozenset({"ckptlab.config", "ckptlab.versions", "ckptlab.threads", "ckptlab.phases",
                       "ckptlab.command"})


def _compression() -> str | None:
    for codec in ("zstd", "lz4"):
        if pa.Codec.is_available(codec):
            return codec
    return None


def _empty_raw() -> dict[str, np.ndarray]:
    return {n: np.empty(0, dtype=t) for n, t in RAW_COLUMNS.items()}


def _normalise_raw(columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    missing = [n for n in RAW_COLUMNS if n not in columns and n not in SCHED_COLUMNS]
    if missing:
        raise ValueError(f"record columns lack {missing}")
    n = len(columns["t_begin_ns"])
    return {c: np.ascontiguousarray(columns[c], dtype=t) if c in columns else np.full(n, -1, dtype=t)
            for c, t in RAW_COLUMNS.items()}


def _dict_array(indices: np.ndarray, values: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices), values)


class _Finaliser:
    """Turns raw batches into file batches with one shared set of dictionaries."""

    def __init__(self, run_id: str, phases: list[str], threads: Mapping[int, str]) -> None:
        self.run_ids = pa.array([run_id], pa.string())
        self.phases = pa.array(phases, pa.string())
        self.tids = np.array(sorted(threads), dtype=np.int64)
        self.names = pa.array([threads[t] for t in sorted(threads)], pa.string())

    def __call__(self, raw: Mapping[str, np.ndarray]) -> pa.RecordBatch:
        n = len(raw["t_begin_ns"])
        tid_index = np.searchsorted(self.tids, raw["thread"].astype(np.int64)).astype(np.int32)
        cols = [
            _dict_array(np.zeros(n, np.int32), self.run_ids),
            pa.array(raw["ckpt_id"]), pa.array(raw["step"]), pa.array(raw["thread"]),
            _dict_array(tid_index, self.names),
            pa.array(raw["cpu_begin"]), pa.array(raw["cpu_end"]),
            _dict_array(raw["phase"].astype(np.int16), self.phases),
            pa.array(raw["chunk"]), pa.array(raw["offset"]), pa.array(raw["nbytes"]),
            pa.array(raw["t_begin_ns"]), pa.array(raw["t_end_ns"]),
            pa.array(raw["run_ns"]), pa.array(raw["wait_ns"]), pa.array(raw["ctx_vol"]),
            pa.array(raw["ctx_invol"]),
        ]
        return pa.RecordBatch.from_arrays(cols, schema=SCHEMA)


def write_trace_file(path: str | os.PathLike, batches: Iterator[pa.RecordBatch] | list[pa.RecordBatch],
                     metadata: Mapping[str, str], schema: pa.Schema = SCHEMA) -> str:
    """Write record batches as an Arrow IPC file (Feather v2, zstd-compressed buffers)
    atomically: temp file in the same directory, fsync, rename, fsync the directory."""
    from ckptlab.core.durable import atomic_replace

    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    full_schema = schema.with_metadata({k: v for k, v in metadata.items()})
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
    with pa.memory_map(os.fspath(path), "r") as source:
        return pa.ipc.open_file(source).read_all()


def trace_metadata(table_or_schema: pa.Table | pa.Schema) -> dict[str, Any]:
    """The ``ckptlab.*`` schema metadata with JSON values decoded (keys without the prefix)."""
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    out: dict[str, Any] = {}
    for k, v in (schema.metadata or {}).items():
        key, value = k.decode(), v.decode()
        if not key.startswith("ckptlab."):
            continue
        out[key.removeprefix("ckptlab.")] = json.loads(value) if key in JSON_KEYS else value
    return out


class _Source:
    """An attached engine (through its checkpointer, whose engine may appear at first save)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def engine(self) -> Any:
        if hasattr(self.obj, "drain_trace") and hasattr(self.obj, "thread_names"):
            return self.obj  # a raw _engine.Engine
        return getattr(self.obj, "engine", None)

    def describe(self) -> dict[str, Any]:
        return {"kind": getattr(self.obj, "kind", type(self.obj).__name__),
                "directory": getattr(self.obj, "directory", None),
                "config": getattr(self.obj, "config", None)}


class TraceSession:
    """Collects timing records of one run and writes them to ``path`` (see module doc)."""

    def __init__(self, path: str | os.PathLike, *, run_id: str | None = None, config: Any = None,
                 affinity_policy: str = "unpinned", drain_interval_s: float | None = 1.0,
                 spill_rows: int = 1 << 20, metadata: Mapping[str, Any] | None = None) -> None:
        if spill_rows < 1:
            raise ValueError("spill_rows must be >= 1")
        self.path = os.path.abspath(os.fspath(path))
        self.run_id = run_id or new_run_id()
        self.config = config
        self.affinity_policy = affinity_policy
        self.drain_interval_s = drain_interval_s
        self.spill_rows = spill_rows
        self.extra_metadata = dict(metadata or {})
        self._lock = threading.RLock()
        self._sources: list[_Source] = []
        self._batches: list[dict[str, np.ndarray]] = []
        self._rows_in_memory = 0
        self._rows_spilled = 0
        self._py: list[tuple] = []
        self._py_lock = threading.Lock()
        self._threads: dict[int, list[str]] = {}  # tid -> names, for every thread we heard of
        self._record_tids: set[int] = set()       # threads that have records
        self._engine_dropped: dict[int, int] = {}
        self._spill_path: str | None = None
        self._spill_writer: Any = None
        self._spill_sink: Any = None
        self._stop = threading.Event()
        self._drainer: threading.Thread | None = None
        self._started = False
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "TraceSession":
        if self._closed:
            raise RuntimeError("trace session is closed")
        if self._started:
            return self
        self._started = True
        _phases._add_sink(self)
        # Anchor for joining with nsys: an NVTX mark whose payload is our clock right now.
        from time import monotonic_ns

        mark("clock_anchor", payload=monotonic_ns())
        if self.drain_interval_s:
            self._drainer = threading.Thread(target=self._drain_loop, name="ckptlab-trace-drain", daemon=True)
            self._drainer.start()
        return self

    def close(self) -> str:
        """Stop recording, drain everything, write the file; returns its path. Idempotent."""
        if self._closed:
            return self.path
        self._closed = True
        _phases._remove_sink(self)
        self._stop.set()
        if self._drainer is not None:
            self._drainer.join()
        try:
            self.flush()
        finally:
            self._discard_spill()
        dropped = self.dropped
        if dropped:
            warnings.warn(f"ckptlab trace {self.path}: {dropped} engine records were dropped because a "
                          f"thread's ring was full (raise CheckpointConfig.trace_capacity)", RuntimeWarning,
                          stacklevel=2)
        return self.path

    def __enter__(self) -> "TraceSession":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain_loop(self) -> None:
        while not self._stop.wait(self.drain_interval_s):
            try:
                self.collect()
            except Exception as e:  # never kill the run for a trace; report once at the end
                warnings.warn(f"ckptlab trace: drain failed: {e}", RuntimeWarning, stacklevel=1)
                return

    # -- inputs -------------------------------------------------------------------------------
    def attach(self, checkpointer: Any, _auto: bool = False) -> bool:
        """Record the engine records of ``checkpointer`` (a pccheck checkpointer or a raw
        ``_engine.Engine``). Other kinds have no engine: returns False and records nothing for
        them (their Python phases still count).

        A pccheck checkpointer whose engine opens (at its first save) while this session
        records is attached automatically, with records on. One whose engine was already open
        records only if it was opened with ``CheckpointConfig(trace=True)``."""
        src = _Source(checkpointer)
        if src.engine() is None and not hasattr(checkpointer, "drain_trace"):
            return False
        config = getattr(checkpointer, "config", None)
        opened = getattr(checkpointer, "engine", None) is not None
        if not _auto and opened and config is not None and getattr(config, "trace", True) is False:
            warnings.warn("ckptlab trace: the attached checkpointer was opened with CheckpointConfig(trace=False); "
                          "its engine keeps no timing records (only NVTX ranges)", RuntimeWarning, stacklevel=2)
        with self._lock:
            if not any(s.obj is checkpointer for s in self._sources):
                self._sources.append(src)
        return True

    def collect(self) -> int:
        """Drain attached engines and pending Python records into the session; new row count."""
        with self._lock:
            n = 0
            for src in self._sources:
                engine = src.engine()
                if engine is None:
                    continue
                cols = engine.drain_trace()
                self._note_threads(engine.thread_names())
                self._engine_dropped[id(engine)] = int(engine.trace_dropped)
                n += self._add_raw(cols)
            with self._py_lock:
                py, self._py = self._py, []
            if py:
                fields = list(zip(*py, strict=True))
                raw = {name: np.asarray(fields[i], dtype=RAW_COLUMNS[name]) for i, name in enumerate(_PY_ORDER)}
                n += self._add_raw(raw)
            if self._rows_in_memory >= self.spill_rows:
                self._spill()
            return n

    def add_records(self, columns: Mapping[str, Any], thread_names: list | tuple = ()) -> int:
        """Add engine-format record columns (e.g. ``_engine.read_verified(..., trace=True)["records"]``)."""
        with self._lock:
            self._note_threads(thread_names)
            return self._add_raw(columns)

    def _append_python(self, rec: tuple, thread_name: str) -> None:  # phases.phase / record
        with self._py_lock:
            self._py.append(rec)
        tid = rec[8]
        self._record_tids.add(tid)
        names = self._threads.get(tid)
        if names is None or thread_name not in names:
            with self._lock:
                self._note_threads([(tid, thread_name)], first=True)

    def _append_engine(self, columns: dict, thread_names: list) -> None:  # phases.add_engine_records
        self.add_records(columns, thread_names)

    def _note_threads(self, pairs: Any, first: bool = False) -> None:
        for tid, name in pairs:
            names = self._threads.setdefault(int(tid), [])
            if name not in names:
                names.insert(0, name) if first else names.append(name)

    def _add_raw(self, columns: Mapping[str, Any]) -> int:
        raw = _normalise_raw(columns)
        n = len(raw["t_begin_ns"])
        if n:
            for tid in np.unique(raw["thread"]).tolist():
                self._threads.setdefault(int(tid), [])
                self._record_tids.add(int(tid))
            self._batches.append(raw)
            self._rows_in_memory += n
        return n

    # -- spill --------------------------------------------------------------------------------
    def _spill(self) -> None:
        if self._spill_writer is None:
            d, base = os.path.split(self.path)
            os.makedirs(d, exist_ok=True)
            self._spill_path = os.path.join(d, f".{base}.spill-{uuid.uuid4().hex[:8]}.arrows")
            self._spill_sink = pa.OSFile(self._spill_path, "wb")
            self._spill_writer = pa.ipc.new_stream(self._spill_sink, _RAW_SCHEMA)
        for raw in self._batches:
            self._spill_writer.write_batch(pa.RecordBatch.from_pydict(raw, schema=_RAW_SCHEMA))
        self._rows_spilled += self._rows_in_memory
        self._batches, self._rows_in_memory = [], 0

    def _discard_spill(self) -> None:
        if self._spill_writer is not None:
            self._spill_writer.close()
            self._spill_sink.close()
            self._spill_writer = self._spill_sink = None
        if self._spill_path:
            try:
                os.unlink(self._spill_path)
            except FileNotFoundError:
                pass
            self._spill_path = None

    def _raw_batches(self) -> Iterator[dict[str, np.ndarray]]:
        if self._spill_writer is not None:
            self._spill_sink.flush()
            with pa.memory_map(self._spill_path, "r") as src:
                reader = pa.ipc.open_stream(src)
                for batch in reader:
                    yield {n: batch.column(n).to_numpy() for n in RAW_COLUMNS}
        yield from self._batches

    # -- outputs ------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return self._rows_in_memory + self._rows_spilled

    @property
    def dropped(self) -> int:
        """Engine records lost because a thread's ring was full (0 in a healthy run)."""
        return sum(self._engine_dropped.values())

    def thread_names(self) -> dict[int, str]:
        """tid -> display name for every thread with records (names joined with " / " when a
        thread has several, e.g. a Python name and an engine role)."""
        return {tid: " / ".join(names) or f"thread-{tid}" for tid, names in self._threads.items()
                if tid in self._record_tids}

    def metadata(self) -> dict[str, str]:
        threads = self.thread_names()
        config = {"run": self.config, "checkpointers": [s.describe() for s in self._sources]}
        meta = run_metadata(run_id=self.run_id, config=config, affinity_policy=self._affinity_policy(),
                            extra=self.extra_metadata)
        meta.update({
            "ckptlab.threads": json.dumps({str(t): n for t, n in sorted(threads.items())}),
            "ckptlab.thread_count": str(len(threads)),
            "ckptlab.phases": json.dumps(list(_phases.PHASES)),
            "ckptlab.dropped_records": str(self.dropped),
            "ckptlab.rows": str(self.rows),
        })
        return meta

    def _affinity_policy(self) -> str:
        """The caller's words, else what the attached checkpointers did: "unpinned", or
        "writers pinned to 6-7" (several checkpointers: joined with "; ")."""
        if self.affinity_policy != "unpinned":
            return self.affinity_policy
        pinned = [cpu_list_string(cpus) for s in self._sources
                  if (cpus := getattr(getattr(s.obj, "config", None), "writer_cpus", ()))]
        return "; ".join(f"writers pinned to {p}" for p in pinned) or "unpinned"

    def _file_batches(self) -> Iterator[pa.RecordBatch]:
        finalise = _Finaliser(self.run_id, list(_phases.PHASES), self.thread_names())
        for raw in self._raw_batches():
            yield finalise(raw)

    def table(self) -> pa.Table:
        """Everything recorded so far (after a collect) as one Table with the file schema."""
        with self._lock:
            self.collect()
            return pa.Table.from_batches(list(self._file_batches()), schema=SCHEMA).replace_schema_metadata(
                self.metadata())

    def flush(self) -> str:
        """Drain and (re)write the trace file atomically with everything so far."""
        with self._lock:
            self.collect()
            return write_trace_file(self.path, self._file_batches(), self.metadata())


def start_trace(path: str | os.PathLike, checkpointer: Any = None, *, config: Any = None, run_id: str | None = None,
                affinity_policy: str = "unpinned", drain_interval_s: float | None = 1.0,
                metadata: Mapping[str, Any] | None = None) -> TraceSession:
    """Start recording a trace to ``path`` (written on ``close()``); attaches ``checkpointer``
    when given. Returns the started ``TraceSession`` (also a context manager)."""
    session = TraceSession(path, run_id=run_id, config=config, affinity_policy=affinity_policy,
                           drain_interval_s=drain_interval_s, metadata=metadata)
    if checkpointer is not None:
        session.attach(checkpointer)
    return session.start()
