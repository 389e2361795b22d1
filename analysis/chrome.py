"""Chrome trace-event JSON from a ckptlab trace, for Perfetto UI / chrome://tracing.

One complete event (``"ph": "X"``) per record, one track per OS thread (``thread_name``
metadata events), timestamps in microseconds since the first record of the trace. Perfetto
opens the file directly (ui.perfetto.dev, "Open trace file"); fine up to ~10^6 records.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pyarrow as pa

from ckptlab.analysis.tables import column, track_sort_key
from ckptlab.profiling.schema import SCHED_COLUMNS, read_trace, trace_metadata

_OTHER_DATA_KEYS = ("run_id", "host", "arch", "kernel", "cpu_model", "cpu_count", "cpus_allowed",
                    "affinity_policy", "clock", "dropped_records", "versions", "config")


class UnknownPhases(ValueError):
    """``phases`` names phases the trace does not know (a typo would silently drop them)."""


def to_chrome_trace(table: pa.Table, phases: set[str] | None = None) -> dict[str, Any]:
    """The trace-event JSON object for ``table`` (optionally only some phases)."""
    meta = trace_metadata(table)
    pid = int(meta.get("pid") or 1)
    n = table.num_rows
    phase = column(table, "phase")
    if phases:
        known = set(meta.get("phases") or []) | set(phase.tolist())
        unknown = sorted(set(phases) - known)
        if unknown:
            raise UnknownPhases(f"unknown phase(s) {', '.join(unknown)} (this trace knows: {', '.join(sorted(known))})")
    keep = np.ones(n, dtype=bool) if not phases else np.isin(phase, list(phases))
    tb = column(table, "t_begin_ns").astype(np.int64)
    te = column(table, "t_end_ns").astype(np.int64)
    t0 = int(tb.min()) if n else 0
    tid = column(table, "thread").astype(np.int64)
    tname = column(table, "thread_name")
    cols = {c: column(table, c) for c in ("ckpt_id", "step", "chunk", "offset", "nbytes", "cpu_begin", "cpu_end")}
    # Scheduler counters (schema version 2) where measured; -1 (not measured) is left out.
    sched = {c: column(table, c).tolist() for c in SCHED_COLUMNS if c in table.column_names}

    names: dict[int, str] = {}
    for t, nm in zip(tid.tolist(), tname.tolist(), strict=True):
        names.setdefault(t, nm)
    host = meta.get("host", "")
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
         "args": {"name": f"ckptlab {meta.get('run_id', '')} on {host}".strip()}},
    ]
    for rank, t in enumerate(sorted(names, key=lambda t: track_sort_key(names[t]))):
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": t, "args": {"name": names[t]}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": t, "args": {"sort_index": rank}})

    idx = np.flatnonzero(keep)
    order = idx[np.lexsort((-(te[idx] - tb[idx]), tb[idx], tid[idx]))]
    lists = {c: v.tolist() for c, v in cols.items()}
    phase_l, tid_l, tb_l, te_l = phase.tolist(), tid.tolist(), tb.tolist(), te.tolist()
    for i in order.tolist():
        args = {c: lists[c][i] for c in cols}
        args.update((c, v[i]) for c, v in sched.items() if v[i] >= 0)
        events.append({
            "name": phase_l[i], "cat": "ckptlab", "ph": "X", "pid": pid, "tid": tid_l[i],
            "ts": (tb_l[i] - t0) / 1000.0, "dur": (te_l[i] - tb_l[i]) / 1000.0, "args": args,
        })
    other = {k: meta[k] for k in _OTHER_DATA_KEYS if k in meta}
    other["t0_monotonic_ns"] = t0
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def export_chrome(trace_path: str | os.PathLike, out_path: str | os.PathLike,
                  phases: set[str] | None = None) -> int:
    """Write ``trace_path`` as Chrome trace-event JSON to ``out_path``; returns the event count.
    The JSON is written atomically (temp + rename)."""
    from ckptlab.profiling.files import atomic_write_bytes

    doc = to_chrome_trace(read_trace(trace_path), phases)
    atomic_write_bytes(out_path, json.dumps(doc, separators=(",", ":"), default=str).encode())
    return sum(1 for e in doc["traceEvents"] if e["ph"] == "X")
