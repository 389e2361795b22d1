"""A trace session: collects one run's timing records and writes them to an Arrow trace file.

A ``TraceSession`` collects, for one run:

* the records of attached ``RecordSource``s (pccheck checkpointers), drained by a background
  thread every ``drain_interval_s`` so a ring never fills; sources that announce themselves
  while the session records (an engine opening at its first save) are adopted;
* records handed over by producers (recovery's verified reads) and Python-side records from
  ``ckptlab.profiling.phase`` (training and checkpointer stages).

Rows are kept as compact numpy columns (~100 bytes a row); past ``spill_rows`` they are
appended to a hidden Arrow stream file next to the output, so memory stays bounded on long
runs. ``flush()``/``close()`` write the whole trace atomically (``schema.write_trace_file``).

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
from collections.abc import Iterable, Iterator, Mapping
from time import monotonic_ns
from typing import Any

import numpy as np
import pyarrow as pa

from ckptlab.profiling import sources
from ckptlab.profiling.metadata import cpu_steal_metadata, cpu_steal_snapshot, new_run_id, run_metadata
from ckptlab.profiling.nvtx_ranges import mark
from ckptlab.profiling.phases import PHASES
from ckptlab.profiling.schema import (RAW_COLUMNS, Finaliser, Record, file_schema, normalise_raw, raw_schema,
                                      records_to_raw, write_trace_file)
from ckptlab.profiling.sources import RecordSource


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
        self._sources: list[RecordSource] = []
        self._batches: list[dict[str, np.ndarray]] = []
        self._rows_in_memory = 0
        self._rows_spilled = 0
        self._py: list[Record] = []
        self._py_lock = threading.Lock()
        self._threads: dict[int, list[str]] = {}  # tid -> names, for every thread we heard of
        self._record_tids: set[int] = set()       # threads that have records
        self._dropped: dict[int, int] = {}        # id(source) -> its running total
        self._spill_path: str | None = None
        self._spill_writer: Any = None
        self._spill_sink: Any = None
        self._stop = threading.Event()
        self._drainer: threading.Thread | None = None
        self._started = False
        self._closed = False
        self._steal_start: dict[str, Any] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> TraceSession:
        if self._closed:
            raise RuntimeError("trace session is closed")
        if self._started:
            return self
        self._started = True
        self._steal_start = cpu_steal_snapshot()
        sources.add_sink(self)
        # Anchor for joining with nsys: an NVTX mark whose payload is our clock right now.
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
        sources.remove_sink(self)
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

    def __enter__(self) -> TraceSession:
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
    def attach(self, source: object) -> bool:
        """Record the timing records of ``source``, a ``RecordSource`` (a pccheck
        checkpointer). Other checkpointer kinds are none: returns False and records nothing
        for them (their Python phases still count).

        A pccheck checkpointer whose engine opens (at its first save) while this session
        records is adopted automatically, with records on. One whose engine was already open
        records only if it was opened with ``CheckpointConfig(trace=True)`` (else a warning)."""
        if not isinstance(source, RecordSource):
            return False
        if source.describe().get("records") is False:
            warnings.warn("ckptlab trace: the attached checkpointer was opened with CheckpointConfig(trace=False); "
                          "its engine keeps no timing records (only NVTX ranges)", RuntimeWarning, stacklevel=2)
        self.adopt(source)
        return True

    def adopt(self, source: RecordSource) -> None:
        """Drain ``source`` from now on (``sources.announce`` calls this; no checks, no warning)."""
        with self._lock:
            if not any(s is source for s in self._sources):
                self._sources.append(source)

    def collect(self) -> int:
        """Drain attached sources and pending Python records into the session; new row count."""
        with self._lock:
            n = 0
            for src in self._sources:
                drained = src.drain_records()
                self._note_threads(drained.thread_names)
                self._dropped[id(src)] = int(drained.dropped)
                if drained.columns:
                    n += self._add_raw(drained.columns)
            with self._py_lock:
                py, self._py = self._py, []
            if py:
                n += self._add_raw(records_to_raw(py))
            if self._rows_in_memory >= self.spill_rows:
                self._spill()
            return n

    def add_records(self, columns: Mapping[str, Any], thread_names: Iterable[tuple[int, str]] = ()) -> int:
        """Add engine-format record columns (e.g. ``_engine.read_verified(..., trace=True)["records"]``)."""
        with self._lock:
            self._note_threads(thread_names)
            return self._add_raw(columns)

    def add_python_record(self, rec: Record, thread_name: str) -> None:
        """One record of ``phase``/``record`` from the thread named ``thread_name``."""
        with self._py_lock:
            self._py.append(rec)
        tid = rec.thread
        self._record_tids.add(tid)
        names = self._threads.get(tid)
        if names is None or thread_name not in names:
            with self._lock:
                self._note_threads([(tid, thread_name)], first=True)

    def _note_threads(self, pairs: Iterable[tuple[int, str]], first: bool = False) -> None:
        for tid, name in pairs:
            names = self._threads.setdefault(int(tid), [])
            if name not in names:
                names.insert(0, name) if first else names.append(name)

    def _add_raw(self, columns: Mapping[str, Any]) -> int:
        raw = normalise_raw(columns)
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
            self._spill_writer = pa.ipc.new_stream(self._spill_sink, raw_schema())
        for raw in self._batches:
            self._spill_writer.write_batch(pa.RecordBatch.from_pydict(raw, schema=raw_schema()))
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
        return sum(self._dropped.values())

    def thread_names(self) -> dict[int, str]:
        """tid -> display name for every thread with records (names joined with " / " when a
        thread has several, e.g. a Python name and an engine role)."""
        return {tid: " / ".join(names) or f"thread-{tid}" for tid, names in self._threads.items()
                if tid in self._record_tids}

    def metadata(self) -> dict[str, str]:
        threads = self.thread_names()
        described = [dict(s.describe()) for s in self._sources]
        config = {"run": self.config, "checkpointers": described}
        meta = run_metadata(run_id=self.run_id, config=config, affinity_policy=self._affinity_policy(described),
                            extra=self.extra_metadata)
        meta.update({
            "ckptlab.threads": json.dumps({str(t): n for t, n in sorted(threads.items())}),
            "ckptlab.thread_count": str(len(threads)),
            "ckptlab.phases": json.dumps(list(PHASES)),
            "ckptlab.dropped_records": str(self.dropped),
            "ckptlab.rows": str(self.rows),
        })
        steal = cpu_steal_metadata(self._steal_start, cpu_steal_snapshot())  # end: this write
        if steal is not None:
            meta["ckptlab.cpu_steal"] = json.dumps(steal, sort_keys=True)
        return meta

    def _affinity_policy(self, described: list[dict[str, Any]]) -> str:
        """The caller's words, else what the attached sources say they did: "unpinned", or
        "writers pinned to 6-7" (several sources: joined with "; ")."""
        if self.affinity_policy != "unpinned":
            return self.affinity_policy
        return "; ".join(d["affinity"] for d in described if d.get("affinity")) or "unpinned"

    def _file_batches(self) -> Iterator[pa.RecordBatch]:
        finalise = Finaliser(self.run_id, list(PHASES), self.thread_names())
        for raw in self._raw_batches():
            yield finalise(raw)

    def table(self) -> pa.Table:
        """Everything recorded so far (after a collect) as one Table with the file schema."""
        with self._lock:
            self.collect()
            return pa.Table.from_batches(list(self._file_batches()), schema=file_schema()).replace_schema_metadata(
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
    when given (a ``RecordSource``; other kinds record their Python phases only). Returns the
    started ``TraceSession`` (also a context manager)."""
    session = TraceSession(path, run_id=run_id, config=config, affinity_policy=affinity_policy,
                           drain_interval_s=drain_interval_s, metadata=metadata)
    if checkpointer is not None:
        session.attach(checkpointer)
    return session.start()
