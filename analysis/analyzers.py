"""Writer-thread analyzers returning pandas DataFrames (HTA style): what ``ckptlab analyze``
and the notebooks call, one question each (docs/TRACE.md, "Straggler causes").

    from ckptlab.analysis import read_trace, detect_stragglers
    detect_stragglers(read_trace("trace.arrow"))   # one row per checkpoint: straggler, cause, gap

- ``time_split``: per checkpoint and writer thread, busy time and its split on CPU / waiting
  for a CPU / blocked / idle (``stragglers.writer_stragglers``' thread rows);
- ``chunk_latency``: per writer thread and chunk phase (checksum, write), latency quantiles;
- ``critical_path``: per checkpoint, the last thread's time from the checkpoint's first record
  to its finish, segment by segment: before its first chunk, then per operation on CPU,
  waiting for a CPU, blocked (or "not split" without the counters), idle between operations;
- ``migration_table``: per checkpoint and thread, CPU migrations and the CPUs used;
- ``detect_stragglers``: per checkpoint, the straggler (or None), its gap, cause class and why
  (``causes``), and the hypervisor steal estimated in the last thread's window (``steal``:
  ``steal_s``, None without the trace's steal counters; ``steal_caveat`` when it is a material
  share of the blocked time a ``blocked`` verdict rests on);
- ``what_if_median_speed``: per checkpoint, the makespan re-simulated with the straggler at the
  median thread's speed (``whatif``).

All take a trace table (``read_trace``); times are seconds from the checkpoint's first engine
record, as in ``writer_stragglers``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ckptlab.analysis import causes, steal, whatif
from ckptlab.analysis.stragglers import WRITER_PHASES, writer_stragglers
from ckptlab.analysis.tables import column

CHUNK_PHASES = ("checksum", "write")
SPLIT_KEYS = ("ckpt_id", "step", "thread_name", "thread", "chunks", "bytes", "busy_s", "start_s", "finish_s",
              "on_cpu_s", "runq_wait_s", "blocked_s", "idle_s", "ctx_vol", "ctx_invol")


def time_split(table: pa.Table) -> pd.DataFrame:
    _, threads = writer_stragglers(table)
    return pd.DataFrame([{k: r[k] for k in SPLIT_KEYS} for r in threads], columns=list(SPLIT_KEYS))


def chunk_latency(table: pa.Table) -> pd.DataFrame:
    cols = ["thread_name", "phase", "count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"]
    phase = column(table, "phase") if table.num_rows else np.array([])
    keep = np.flatnonzero(np.isin(phase, CHUNK_PHASES) & (column(table, "ckpt_id").astype(np.int64) > 0)) \
        if table.num_rows else np.array([], dtype=np.int64)
    if len(keep) == 0:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame({"thread_name": column(table, "thread_name")[keep], "phase": phase[keep],
                       "ms": (column(table, "t_end_ns").astype(np.int64)[keep]
                              - column(table, "t_begin_ns").astype(np.int64)[keep]) / 1e6})
    g = df.groupby(["thread_name", "phase"])["ms"]
    out = pd.DataFrame({"count": g.count(), "mean_ms": g.mean(), "p50_ms": g.median(), "p90_ms": g.quantile(0.9),
                        "p99_ms": g.quantile(0.99), "max_ms": g.max()}).reset_index()
    return out[cols]


def migration_table(table: pa.Table) -> pd.DataFrame:
    _, threads = writer_stragglers(table)
    keys = ["ckpt_id", "step", "thread_name", "migrations", "cpus"]
    return pd.DataFrame([{k: r[k] for k in keys} for r in threads], columns=keys)


def _checkpoint_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Per checkpoint: its t0, its thread rows and the straggler verdict (``causes``)."""
    ckpts, threads = writer_stragglers(table)
    if not ckpts:
        return []
    ckpt_id = column(table, "ckpt_id").astype(np.int64)
    tb = column(table, "t_begin_ns").astype(np.int64)
    stolen = steal.steal_window(table)
    out = []
    for c in ckpts:
        rows = [r for r in threads if r["ckpt_id"] == c["ckpt_id"]]
        finish = [r["finish_s"] for r in rows]
        last = int(np.argmax(finish))
        slow = rows[last]
        median = float(np.median(finish))
        ref = causes.reference_finish(finish, last)
        verdict: dict[str, Any] = {"straggler": None, "cause": None, "cause_why": None, "cause_share": None,
                                   **{f"excess_{k.replace('-', '_')}_s": None for k in (*causes.CAUSES, "idle")}}
        if causes.is_straggler(finish, last, slow["finish_z"]):
            peers = [r for i, r in enumerate(rows) if i != last]
            excess = causes.excess_parts(slow, peers)
            cause, why, share = causes.classify(slow["finish_s"] - ref, excess)
            verdict = {"straggler": slow["thread_name"], "cause": cause, "cause_why": why,
                       "cause_share": share, **{f"excess_{k.replace('-', '_')}_s": v for k, v in excess.items()}}
        steal_s = None if stolen is None else stolen.estimate_s(slow["cpus"], slow["finish_s"] - slow["start_s"])
        blocked = verdict["excess_blocked_s"]
        verdict["steal_s"] = steal_s
        verdict["steal_caveat"] = bool(verdict["cause"] == "blocked" and steal_s is not None and blocked
                                       and steal_s >= steal.MATERIAL_SHARE * blocked)
        out.append({"ckpt_id": c["ckpt_id"], "step": c["step"], "threads": c["threads"],
                    "makespan_s": c["makespan_s"], "last_thread": slow["thread_name"], "finish_s": slow["finish_s"],
                    "median_finish_s": median, "reference_finish_s": ref, "gap_s": slow["finish_s"] - ref,
                    "straggler_ratio": slow["finish_s"] / ref if ref > 0 else 1.0, "finish_z": slow["finish_z"], **verdict,
                    "_t0": int(tb[ckpt_id == c["ckpt_id"]].min()), "_rows": rows, "_last": slow})
    return out


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame whose text columns stay Python objects, so "no straggler" stays None
    (pandas >= 3 would infer a string dtype and turn None into NaN)."""
    df = pd.DataFrame(rows)
    for name in df.columns:
        values = [r[name] for r in rows]
        if any(isinstance(v, str) for v in values):
            df[name] = pd.Series(values, dtype=object, index=df.index)
    return df


def detect_stragglers(table: pa.Table) -> pd.DataFrame:
    return _frame([_public(r) for r in _checkpoint_rows(table)])


def what_if_median_speed(table: pa.Table) -> pd.DataFrame:
    out = []
    for r in _checkpoint_rows(table):
        resim, faster = whatif.what_if(table, r["ckpt_id"], r["_t0"], r["straggler"])
        what_if_s = r["makespan_s"] if r["straggler"] is None else faster
        out.append({"ckpt_id": r["ckpt_id"], "step": r["step"], "straggler": r["straggler"],
                    "makespan_s": r["makespan_s"], "resim_makespan_s": resim, "what_if_makespan_s": what_if_s,
                    "saved_s": r["makespan_s"] - what_if_s})
    return _frame(out)


def critical_path(table: pa.Table) -> pd.DataFrame:
    cols = ["ckpt_id", "step", "thread_name", "segment", "phase", "begin_s", "seconds"]
    if table.num_rows == 0:
        return pd.DataFrame(columns=cols)
    ckpt_id = column(table, "ckpt_id").astype(np.int64)
    phase, names = column(table, "phase"), column(table, "thread_name")
    tb, te = column(table, "t_begin_ns").astype(np.int64), column(table, "t_end_ns").astype(np.int64)
    run = column(table, "run_ns").astype(np.int64) if "run_ns" in table.column_names else np.full(len(tb), -1)
    wait = column(table, "wait_ns").astype(np.int64) if "wait_ns" in table.column_names else np.full(len(tb), -1)
    segs = []
    for r in _checkpoint_rows(table):
        name, t0 = r["last_thread"], r["_t0"]
        m = np.flatnonzero((ckpt_id == r["ckpt_id"]) & (names == name) & np.isin(phase, WRITER_PHASES))
        m = m[np.argsort(tb[m], kind="stable")]

        def seg(kind: str, ph: str | None, begin: int, ns: int) -> None:
            if ns > 0:
                segs.append({"ckpt_id": r["ckpt_id"], "step": r["step"], "thread_name": name, "segment": kind,
                             "phase": ph, "begin_s": (begin - t0) / 1e9, "seconds": ns / 1e9})

        clock = t0
        seg("before its first chunk", None, t0, int(tb[m[0]] - t0))
        for i in m:
            if tb[i] > clock and clock > t0:
                seg("idle", None, clock, int(tb[i] - clock))
            dur = int(te[i] - tb[i])
            if run[i] < 0 or wait[i] < 0:
                seg("in operation (not split)", phase[i], int(tb[i]), dur)
            else:
                seg("on CPU", phase[i], int(tb[i]), int(min(run[i], dur)))
                seg("waiting for a CPU", phase[i], int(tb[i]), int(min(wait[i], max(0, dur - run[i]))))
                seg("blocked", phase[i], int(tb[i]), int(max(0, dur - run[i] - wait[i])))
            clock = max(clock, int(te[i]))
    return pd.DataFrame(segs, columns=cols)
