"""Per-phase summary of a trace (what ``ckptlab trace info`` prints)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


def summarize(table: pa.Table) -> list[dict[str, Any]]:
    """One row per phase: records, threads, bytes, busy seconds (sum of durations), mean /
    p50 / p99 / max duration in ms, and throughput (bytes / busy time) in GB/s."""
    if table.num_rows == 0:
        return []
    phase = np.asarray(table.column("phase").cast(pa.string()).to_pylist(), dtype=object)
    dur = (table.column("t_end_ns").to_numpy().astype(np.int64)
           - table.column("t_begin_ns").to_numpy().astype(np.int64)) / 1e6
    nbytes = table.column("nbytes").to_numpy().astype(np.float64)
    thread = table.column("thread").to_numpy()
    names = table.schema.field("phase").type
    order = table.column("phase").chunk(0).dictionary.to_pylist() if pa.types.is_dictionary(names) else []
    out = []
    for name in sorted(set(phase.tolist()), key=lambda p: order.index(p) if p in order else len(order)):
        m = phase == name
        d = dur[m]
        busy_s = float(d.sum()) / 1e3
        total = float(nbytes[m].sum())
        out.append({
            "phase": name, "records": int(m.sum()), "threads": int(len(np.unique(thread[m]))),
            "bytes": int(total), "busy_s": busy_s, "mean_ms": float(d.mean()),
            "p50_ms": float(np.percentile(d, 50)), "p99_ms": float(np.percentile(d, 99)), "max_ms": float(d.max()),
            "gb_per_s": (total / busy_s / 1e9) if busy_s > 0 and total > 0 else None,
        })
    return out


def _intervals(table: pa.Table, phases: set[str], thread: int | None = None) -> np.ndarray:
    phase = np.asarray(table.column("phase").cast(pa.string()).to_pylist(), dtype=object)
    mask = np.isin(phase, list(phases))
    if thread is not None:
        mask &= table.column("thread").to_numpy() == thread
    b = table.column("t_begin_ns").to_numpy().astype(np.int64)[mask]
    e = table.column("t_end_ns").to_numpy().astype(np.int64)[mask]
    order = np.argsort(b)
    return np.stack([b[order], e[order]], axis=1) if len(b) else np.empty((0, 2), np.int64)


def _union(iv: np.ndarray) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for b, e in iv.tolist():
        if out and b <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((b, e))
    return out


def overlap(table: pa.Table, phases: set[str] | str, with_phases: set[str] | str) -> dict[str, float]:
    """How much of the time spent in ``phases`` (any thread) overlaps time in which some
    thread was in ``with_phases``: e.g. ``overlap(t, "d2h", {"forward", "backward"})`` or
    ``overlap(t, "write", "train_step")``. Returns busy seconds of each side (union over
    threads), the overlapped seconds and their fraction of the first side."""
    a = _union(_intervals(table, {phases} if isinstance(phases, str) else set(phases)))
    b = _union(_intervals(table, {with_phases} if isinstance(with_phases, str) else set(with_phases)))
    total_a = sum(e - s for s, e in a)
    both, j = 0, 0
    for s, e in a:
        while j < len(b) and b[j][1] <= s:
            j += 1
        k = j
        while k < len(b) and b[k][0] < e:
            both += min(e, b[k][1]) - max(s, b[k][0])
            k += 1
    return {"busy_s": total_a / 1e9, "with_busy_s": sum(e - s for s, e in b) / 1e9, "overlap_s": both / 1e9,
            "fraction": (both / total_a) if total_a else 0.0}
