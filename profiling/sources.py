"""Who produces timing records and who collects them, without either knowing the other's type.

- A ``RecordSource`` produces engine-format records on threads of its own (a pccheck
  checkpointer's writer and commit threads). A session drains it in the background, so its
  per-thread rings never fill, and asks it to ``describe()`` itself for the trace metadata.
- A ``RecordSink`` collects records: a ``TraceSession`` while it records. Sinks register here
  (``add_sink``/``remove_sink``); producers hand records to every registered sink.

A source whose records start while sessions record (a checkpointer whose engine opens at its
first save) calls ``announce(self)``, and every recording session adopts it. This module
imports nothing heavy: ``ckptlab.core`` uses it on every save.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ckptlab.profiling.schema import Record


@dataclass(frozen=True)
class DrainedRecords:
    """What one ``drain_records()`` returns.

    ``columns``: engine-format columns (``schema.RAW_COLUMNS``; the scheduler counters may be
    missing), the records since the previous drain. ``thread_names``: (OS thread id, name) of
    the source's threads. ``dropped``: records lost so far because a ring was full (a running
    total, not a difference)."""

    columns: Mapping[str, Any] = field(default_factory=dict)
    thread_names: Sequence[tuple[int, str]] = ()
    dropped: int = 0


@runtime_checkable
class RecordSource(Protocol):
    """Something that produces timing records a session drains (implemented by
    ``ckptlab.core.pccheck.PCcheckCheckpointer``)."""

    def drain_records(self) -> DrainedRecords:
        """The records since the last drain (empty columns when there are none yet)."""
        ...

    def describe(self) -> Mapping[str, Any]:
        """JSON-able facts for the trace metadata: ``kind``, ``directory``, ``config``; and,
        when known, ``records`` (False: this source keeps no timing records) and ``affinity``
        (e.g. "writers pinned to 6-7"; None or absent when unpinned)."""
        ...


class RecordSink(Protocol):
    """What producers hand records to (``TraceSession``)."""

    def add_python_record(self, rec: Record, thread_name: str) -> None: ...

    def add_records(self, columns: Mapping[str, Any], thread_names: Sequence[tuple[int, str]] = ()) -> int: ...

    def adopt(self, source: RecordSource) -> None: ...


# Sinks currently recording; replaced (copy on write) under the lock, so readers never lock.
_sinks: tuple[RecordSink, ...] = ()
_sinks_lock = threading.Lock()


def add_sink(sink: RecordSink) -> None:
    global _sinks
    with _sinks_lock:
        _sinks = _sinks + (sink,)


def remove_sink(sink: RecordSink) -> None:
    global _sinks
    with _sinks_lock:
        _sinks = tuple(s for s in _sinks if s is not sink)


def active_sinks() -> tuple[RecordSink, ...]:
    return _sinks


def recording() -> bool:
    """True while at least one TraceSession records in this process."""
    return bool(_sinks)


def announce(source: RecordSource) -> None:
    """Called by a source whose records start now (its engine opened with records on because
    ``recording()`` was true): every recording session adopts it."""
    for s in _sinks:
        s.adopt(source)


def add_engine_records(columns: Mapping[str, Any], thread_names: Sequence[tuple[int, str]] = ()) -> None:
    """Hand engine-format record columns (e.g. ``_engine.read_verified(...)["records"]``) to
    every active session."""
    for s in _sinks:
        s.add_records(columns, list(thread_names))
