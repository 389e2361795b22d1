"""ckptlab.profiling: NVTX ranges (Python side), Arrow timing records, nsys / py-spy helpers.

Public API (docs/TRACE.md, docs/PROFILING.md)::

    from ckptlab.profiling import phase, nvtx_range, start_trace, read_trace, trace_metadata

    session = start_trace("runs/a/trace.arrow", checkpointer=ck, config=cfg)  # ck: trace=True
    with phase("forward", step=k): ...
    session.close()                      # drains and writes the file atomically

    ckptlab trace export runs/a/trace.arrow --chrome trace.json   # Perfetto UI
    ckptlab trace plot runs/a/trace.arrow -o timeline.png --step 20   # a PNG (plot_timeline)
    ckptlab trace threads runs/a/trace.arrow       # writer stragglers, migrations (writer_stragglers)
    ckptlab profile nsys -- python -m training.train_pccheck ...
    ckptlab profile py-spy -- python -m training.train_pccheck ...

Importing this package is cheap: pyarrow is imported only when a trace is started, written
or read (``phase`` and ``nvtx_range`` never need it).
"""
from __future__ import annotations

from typing import Any

from ckptlab.profiling.nvtx_ranges import mark, nvtx_enabled, nvtx_range
from ckptlab.profiling.phases import add_engine_records, phase, record, recording

_LAZY = {
    "TraceSession": "ckptlab.profiling.records",
    "start_trace": "ckptlab.profiling.records",
    "read_trace": "ckptlab.profiling.records",
    "trace_metadata": "ckptlab.profiling.records",
    "write_trace_file": "ckptlab.profiling.records",
    "SCHEMA": "ckptlab.profiling.records",
    "run_metadata": "ckptlab.profiling.metadata",
    "new_run_id": "ckptlab.profiling.metadata",
    "to_chrome_trace": "ckptlab.profiling.chrome",
    "export_chrome": "ckptlab.profiling.chrome",
    "summarize": "ckptlab.profiling.summary",
    "overlap": "ckptlab.profiling.summary",
    "plot_timeline": "ckptlab.profiling.timeline",
    "writer_stragglers": "ckptlab.profiling.stragglers",
    "thread_totals": "ckptlab.profiling.stragglers",
}

__all__ = ["phase", "record", "recording", "add_engine_records", "nvtx_range", "nvtx_enabled", "mark", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ckptlab.profiling' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
