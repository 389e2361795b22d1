"""Writer-thread stragglers and CPU migrations, per checkpoint (docs/TRACE.md, research/tracing.md §6).

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
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ckptlab.profiling.tables import column, track_sort_key

WRITER_PHASES = ("write", "checksum", "fsync")
OUTLIER_Z = 3.5


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
            rows.append({
                "ckpt_id": c, "step": int(step[m[0]]), "thread": t, "thread_name": str(tname[m[0]]),
                "chunks": int(len(writes)), "bytes": int(nbytes[writes].sum()),
                "busy_s": float((te[m] - tb[m]).sum()) / 1e9,
                "start_s": float(tb[m].min() - t0) / 1e9, "finish_s": float(te[m].max() - t0) / 1e9,
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
            "migrations": sum(r["migrations"] for r in rows),
        })
        threads += rows
    return checkpoints, threads


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
            "times_last": last.get(name, 0), "migrations": sum(r["migrations"] for r in rows),
            "cpus": sorted({c for r in rows for c in r["cpus"]}),
        })
    return out
