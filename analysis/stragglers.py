"""Writer-thread stragglers and CPU migrations, per checkpoint (docs/TRACE.md, docs/BACKGROUND.md §3.2).

A checkpoint is durable only after its last chunk is written and fsynced, so the writer thread
that finishes last sets its persist time. For each checkpoint this computes, from the engine's
``write``/``checksum``/``fsync`` records:

- per writer thread: chunks, bytes, busy time (sum of its operations), when it started and
  finished (from the checkpoint's first record), CPU migrations;
- per checkpoint: makespan (last finish), straggler ratio (last / median finish), imbalance
  ((max / mean busy - 1) * 100, the HPC load-imbalance metric), the slowest thread and whether
  it *started late* (waited for its first chunk) or *worked slowly* (more busy time), and the
  outlier threads (robust z-score of finish > 3.5, Iglewicz-Hoaglin).

A migration is a record whose CPU at the end differs from its CPU at the start, or a record
starting on another CPU than the thread's previous record ended on.

Where the records carry scheduler counters (schema version 2: ``run_ns``, ``wait_ns``,
``ctx_vol``, ``ctx_invol``), each thread's active window (its first record's begin to its last
record's end) is split the way Ousterhout et al. (NSDI'15) split a task's time: **on CPU**,
**waiting for a CPU** (run queue: another thread had its core), **blocked** (in the kernel
waiting for the device, writeback or a lock: busy time neither on a CPU nor queued) and
**idle** (between its operations: waiting for the next chunk). Per checkpoint, a what-if
bounds what removing one component would buy: the makespan if every thread finished that
much earlier (``max(finish - component)``); an estimate, since a thread freed earlier may also
take chunks from the others. Values are None where the counters were not measured.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ckptlab.analysis.tables import column, track_sort_key

WRITER_PHASES = ("write", "checksum", "fsync")
OUTLIER_Z = 3.5
# Parts of a writer's active window, in the order reports show them.
TIME_PARTS = (("on_cpu_s", "on CPU"), ("runq_wait_s", "waiting for a CPU"), ("blocked_s", "blocked"),
              ("idle_s", "idle"))


def _counter(table: pa.Table, name: str) -> np.ndarray:
    """A scheduler-counter column as int64, all -1 (not measured) in schema-version-1 files."""
    if name in table.column_names:
        return column(table, name).astype(np.int64)
    return np.full(table.num_rows, -1, dtype=np.int64)


def _measured_sum(values: np.ndarray, scale: float = 1.0) -> float | int | None:
    """Sum of counter values, None if any of them was not measured (-1)."""
    if len(values) == 0 or (values < 0).any():
        return None
    total = values.sum()
    return float(total) / scale if scale != 1.0 else int(total)


def _sum_or_none(values: list) -> Any:
    return None if any(v is None for v in values) else sum(values)


def _time_parts(busy_s: float, active_s: float, on_cpu_s: float | None, runq_s: float | None) -> dict:
    blocked = None if on_cpu_s is None or runq_s is None else max(0.0, busy_s - on_cpu_s - runq_s)
    return {"on_cpu_s": on_cpu_s, "runq_wait_s": runq_s, "blocked_s": blocked,
            "idle_s": max(0.0, active_s - busy_s)}


def dominant_part(row: dict[str, Any]) -> str | None:
    """The largest of a row's time parts, in words; None without scheduler counters."""
    parts = [(row[key], label) for key, label in TIME_PARTS]
    if any(v is None for v, _ in parts):
        return None
    return max(parts, key=lambda p: p[0])[1]


def migrations(cpu_begin: np.ndarray, cpu_end: np.ndarray) -> int:
    """CPU changes within and between a thread's records (in time order); -1 CPUs are unknown."""
    b, e = cpu_begin.astype(np.int64), cpu_end.astype(np.int64)
    known = (b >= 0) & (e >= 0)
    b, e = b[known], e[known]
    return int((b != e).sum() + (b[1:] != e[:-1]).sum())


def robust_z(x: np.ndarray) -> np.ndarray:
    """Modified z-score 0.6745 (x - median) / MAD (Iglewicz-Hoaglin). When most values are equal
    the MAD is 0; then the mean absolute deviation stands in, (x - median) / (1.2533 meanAD);
    zeros when every value is the same."""
    x = np.asarray(x, dtype=np.float64)
    med = np.median(x)
    mad = np.median(np.abs(x - med))
    if mad > 0:
        return 0.6745 * (x - med) / mad
    mean_ad = np.mean(np.abs(x - med))
    return np.zeros_like(x) if mean_ad == 0 else (x - med) / (1.253314 * mean_ad)


def writer_stragglers(table: pa.Table) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per checkpoint, per checkpoint and writer thread) rows; empty lists without engine
    writes. Times are in seconds from the checkpoint's first engine record."""
    if table.num_rows == 0:
        return [], []
    ckpt = column(table, "ckpt_id").astype(np.int64)
    phase = column(table, "phase")
    tb = column(table, "t_begin_ns").astype(np.int64)
    te = column(table, "t_end_ns").astype(np.int64)
    tid = column(table, "thread").astype(np.int64)
    tname = column(table, "thread_name")
    step = column(table, "step").astype(np.int64)
    nbytes = column(table, "nbytes").astype(np.int64)
    cpu_b, cpu_e = column(table, "cpu_begin"), column(table, "cpu_end")
    run_ns, wait_ns = _counter(table, "run_ns"), _counter(table, "wait_ns")
    ctx_vol, ctx_invol = _counter(table, "ctx_vol"), _counter(table, "ctx_invol")
    is_writer_op = np.isin(phase, WRITER_PHASES)

    checkpoints: list[dict[str, Any]] = []
    threads: list[dict[str, Any]] = []
    for c in sorted(set(ckpt[is_writer_op & (ckpt > 0)].tolist())):
        in_ckpt = ckpt == c
        t0 = int(tb[in_ckpt].min())
        rows = []
        for t in sorted(set(tid[in_ckpt & is_writer_op].tolist())):
            m = np.flatnonzero(in_ckpt & is_writer_op & (tid == t))
            m = m[np.argsort(tb[m], kind="stable")]
            writes = m[phase[m] == "write"]
            busy_s = float((te[m] - tb[m]).sum()) / 1e9
            start_s, finish_s = float(tb[m].min() - t0) / 1e9, float(te[m].max() - t0) / 1e9
            rows.append({
                "ckpt_id": c, "step": int(step[m[0]]), "thread": t, "thread_name": str(tname[m[0]]),
                "chunks": int(len(writes)), "bytes": int(nbytes[writes].sum()),
                "busy_s": busy_s, "start_s": start_s, "finish_s": finish_s,
                **_time_parts(busy_s, finish_s - start_s, _measured_sum(run_ns[m], 1e9),
                              _measured_sum(wait_ns[m], 1e9)),
                "ctx_vol": _measured_sum(ctx_vol[m]), "ctx_invol": _measured_sum(ctx_invol[m]),
                "migrations": migrations(cpu_b[m], cpu_e[m]),
                "cpus": sorted({int(x) for x in np.concatenate([cpu_b[m], cpu_e[m]]).tolist() if x >= 0}),
            })
        rows.sort(key=lambda r: track_sort_key(r["thread_name"]))
        finish = np.array([r["finish_s"] for r in rows])
        busy = np.array([r["busy_s"] for r in rows])
        start = np.array([r["start_s"] for r in rows])
        z = robust_z(finish)
        for r, zi in zip(rows, z.tolist(), strict=True):
            r["finish_z"] = zi
        slow = int(np.argmax(finish))
        late_by = start[slow] - float(np.median(start))
        extra_work = busy[slow] - float(np.median(busy))
        checkpoints.append({
            "ckpt_id": c, "step": rows[0]["step"], "threads": len(rows),
            "chunks": sum(r["chunks"] for r in rows), "bytes": sum(r["bytes"] for r in rows),
            "makespan_s": float(finish.max()),
            "straggler_ratio": float(finish.max() / np.median(finish)) if np.median(finish) > 0 else 1.0,
            "imbalance_pct": float((busy.max() / busy.mean() - 1) * 100) if busy.mean() > 0 else 0.0,
            "slowest": rows[slow]["thread_name"],
            "slowest_cause": ("only thread" if len(rows) == 1
                              else "started late" if late_by > extra_work else "worked slowly"),
            "outliers": [r["thread_name"] for r, zi in zip(rows, z.tolist(), strict=True) if zi > OUTLIER_Z],
            "slowest_time_went": dominant_part(rows[slow]),
            **{key: _sum_or_none([r[key] for r in rows]) for key, _ in TIME_PARTS},
            "ctx_invol": _sum_or_none([r["ctx_invol"] for r in rows]),
            "if_no_runq_wait_s": _what_if(rows, "runq_wait_s"),
            "if_no_blocked_s": _what_if(rows, "blocked_s"),
            "migrations": sum(r["migrations"] for r in rows),
        })
        threads += rows
    return checkpoints, threads


def _what_if(rows: list[dict[str, Any]], part: str) -> float | None:
    """Makespan estimate had no thread spent any time in ``part`` (see the module doc)."""
    if any(r[part] is None for r in rows):
        return None
    return max(r["finish_s"] - r[part] for r in rows)


def thread_totals(threads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per writer thread over all checkpoints: work done, median finish, how often it was last."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in threads:
        by.setdefault(r["thread_name"], []).append(r)
    last: dict[str, int] = {}
    for c in {r["ckpt_id"] for r in threads}:
        rows = [r for r in threads if r["ckpt_id"] == c]
        if len(rows) > 1:
            name = max(rows, key=lambda r: r["finish_s"])["thread_name"]
            last[name] = last.get(name, 0) + 1
    out = []
    for name in sorted(by, key=track_sort_key):
        rows = by[name]
        out.append({
            "thread_name": name, "checkpoints": len(rows), "chunks": sum(r["chunks"] for r in rows),
            "bytes": sum(r["bytes"] for r in rows), "busy_s": sum(r["busy_s"] for r in rows),
            "median_finish_s": float(np.median([r["finish_s"] for r in rows])),
            "times_last": last.get(name, 0),
            **{key: _sum_or_none([r[key] for r in rows]) for key, _ in TIME_PARTS},
            "ctx_vol": _sum_or_none([r["ctx_vol"] for r in rows]),
            "ctx_invol": _sum_or_none([r["ctx_invol"] for r in rows]),
            "migrations": sum(r["migrations"] for r in rows),
            "cpus": sorted({c for r in rows for c in r["cpus"]}),
        })
    return out
