"""ckptlab.profiling: the record path. NVTX ranges (Python side), phases, the trace schema and
session, atomic trace files, run metadata, the loss file, nsys / py-spy helpers.

Public API (docs/TRACE.md, docs/PROFILING.md)::

    from ckptlab.profiling import phase, nvtx_range, start_trace, read_trace, trace_metadata

    session = start_trace("runs/a/trace.arrow", checkpointer=ck, config=cfg)  # ck: trace=True
    with phase("forward", step=k): ...
    session.close()                      # drains and writes the file atomically

    ckptlab profile nsys -- python -m training.train_pccheck ...
    ckptlab profile py-spy -- python -m training.train_pccheck ...

The analyzers of these files (stragglers, timeline, summary, Chrome export) are
``ckptlab.analysis``. Importing this package is cheap: pyarrow is imported only when a trace is
started, written or read (``phase`` and ``nvtx_range`` never need it).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ckptlab.profiling.nvtx_ranges import mark, nvtx_enabled, nvtx_range
from ckptlab.profiling.phases import add_engine_records, phase, record, recording
from ckptlab.profiling.sources import DrainedRecords, RecordSource

_LAZY = {
    "TraceSession": "ckptlab.profiling.session",
    "start_trace": "ckptlab.profiling.session",
    "read_trace": "ckptlab.profiling.schema",
    "trace_metadata": "ckptlab.profiling.schema",
    "write_trace_file": "ckptlab.profiling.schema",
    "SCHEMA": "ckptlab.profiling.schema",
    "RAW_COLUMNS": "ckptlab.profiling.schema",
    "run_metadata": "ckptlab.profiling.metadata",
    "new_run_id": "ckptlab.profiling.metadata",
}

__all__ = ["phase", "record", "recording", "add_engine_records", "nvtx_range", "nvtx_enabled", "mark",
           "RecordSource", "DrainedRecords", *_LAZY]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from ckptlab.profiling.metadata import new_run_id, run_metadata
    from ckptlab.profiling.schema import RAW_COLUMNS, SCHEMA, read_trace, trace_metadata, write_trace_file
    from ckptlab.profiling.session import TraceSession, start_trace


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ckptlab.profiling' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
