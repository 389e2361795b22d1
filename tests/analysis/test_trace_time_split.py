"""The blocked-time split of writer threads (on CPU, waiting for a CPU, blocked, idle) and its
what-if estimates, built on the records' scheduler counters (analysis/stragglers.py,
`ckptlab trace threads`); traces without the counters (schema version 1) still read."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from ckptlab.analysis.stragglers import thread_totals, writer_stragglers
from ckptlab.profiling import read_trace
from ckptlab.profiling.schema import SCHED_COLUMNS, write_trace_file

MS = 1_000_000

def _table(rows: list[tuple]) -> pa.Table:
    """rows: (ckpt, tid, phase, begin_ms, end_ms, run_ms, wait_ms, invol)"""
    cols = list(zip(*rows, strict=True))
    n = len(rows)
    return pa.table({
        "ckpt_id": pa.array(cols[0], pa.uint64()), "step": pa.array([c * 10 for c in cols[0]], pa.int64()),
        "thread": pa.array(cols[1], pa.int32()), "thread_name": pa.array([f"ckptlab-writer-{t}" for t in cols[1]]),
        "phase": pa.array(cols[2]), "t_begin_ns": pa.array([b * MS for b in cols[3]], pa.uint64()),
        "t_end_ns": pa.array([e * MS for e in cols[4]], pa.uint64()), "nbytes": pa.array([100] * n, pa.uint64()),
        "cpu_begin": pa.array([0] * n, pa.int32()), "cpu_end": pa.array([0] * n, pa.int32()),
        "run_ns": pa.array([r * MS for r in cols[5]], pa.int64()),
        "wait_ns": pa.array([w * MS for w in cols[6]], pa.int64()),
        "ctx_vol": pa.array([1] * n, pa.int32()), "ctx_invol": pa.array(cols[7], pa.int32()),
    })


def test_time_split_and_what_if_on_known_records():
    rows = [
        # thread 1: write 0-10 (4 on CPU, 1 queued), idle 10-15, write 15-25 (4, 1), fsync 25-27 (0, 0)
        (1, 1, "write", 0, 10, 4, 1, 0), (1, 1, "write", 15, 25, 4, 1, 1), (1, 1, "fsync", 25, 27, 0, 0, 0),
        # thread 2: write 0-30 with 20 ms waiting for a CPU (it shared a core), fsync 30-31
        (1, 2, "write", 0, 30, 6, 20, 5), (1, 2, "fsync", 30, 31, 0, 0, 0),
    ]
    (c,), threads = writer_stragglers(_table(rows))
    t1, t2 = sorted(threads, key=lambda r: r["thread"])
    assert t1["on_cpu_s"] == pytest.approx(0.008) and t1["runq_wait_s"] == pytest.approx(0.002)
    assert t1["blocked_s"] == pytest.approx(0.012) and t1["idle_s"] == pytest.approx(0.005)
    assert t2["on_cpu_s"] == pytest.approx(0.006) and t2["runq_wait_s"] == pytest.approx(0.020)
    assert t2["blocked_s"] == pytest.approx(0.005) and t2["idle_s"] == pytest.approx(0.0)
    assert c["makespan_s"] == pytest.approx(0.031) and c["slowest"] == "ckptlab-writer-2"
    assert c["slowest_time_went"] == "waiting for a CPU"
    assert c["runq_wait_s"] == pytest.approx(0.022) and c["ctx_invol"] == 6
    # without CPU wait thread 2 ends at 11 ms and thread 1 at 25 ms; never blocked: 15 and 26 ms
    assert c["if_no_runq_wait_s"] == pytest.approx(0.025)
    assert c["if_no_blocked_s"] == pytest.approx(0.026)
    totals = {r["thread_name"]: r for r in thread_totals(threads)}
    assert totals["ckptlab-writer-2"]["runq_wait_s"] == pytest.approx(0.020)
    assert totals["ckptlab-writer-1"]["ctx_invol"] == 1


def test_partly_unmeasured_records_give_none_not_a_wrong_number():
    t = _table([(1, 1, "write", 0, 10, 4, 1, 0), (1, 1, "write", 10, 20, 4, 1, 0)])
    t = t.set_column(t.schema.get_field_index("wait_ns"), "wait_ns", pa.array([MS, -1], pa.int64()))
    (c,), (row,) = writer_stragglers(t)
    assert row["on_cpu_s"] == pytest.approx(0.008)
    assert row["runq_wait_s"] is None and row["blocked_s"] is None and c["if_no_runq_wait_s"] is None
    assert c["slowest_time_went"] is None


@pytest.fixture(scope="module")
def old_trace(traced_run, tmp_path_factory) -> str:
    """traced_run's file as schema version 1 wrote it: no scheduler columns."""
    t = traced_run.table.drop_columns(list(SCHED_COLUMNS))
    meta = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    meta["ckptlab.schema_version"] = "1"
    path = str(tmp_path_factory.mktemp("v1") / "v1.arrow")
    return write_trace_file(path, t.to_batches(), meta, schema=t.schema.remove_metadata())


def test_a_version_1_trace_still_reads(old_trace, tmp_path, capsys):
    from ckptlab.analysis.chrome import to_chrome_trace
    from ckptlab.analysis.cli import main

    table = read_trace(old_trace)
    (c,), threads = writer_stragglers(table)
    assert c["blocked_s"] is None and all(r["on_cpu_s"] is None for r in threads)
    assert main(["trace", "threads", old_trace, "--plot", str(tmp_path / "w.png")]) == 0
    out = capsys.readouterr().out
    assert "where the writers' time went" not in out and "writer threads per checkpoint" in out
    writer_row = next(line for line in out.splitlines() if "ckptlab-writer-0" in line and "│" in line)
    assert " 100 " not in writer_row, "no percentages from a partial split"
    assert (tmp_path / "w.png").stat().st_size > 10_000
    assert main(["trace", "threads", old_trace, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoints"][0]["if_no_blocked_s"] is None
    events = [e for e in to_chrome_trace(table)["traceEvents"] if e["ph"] == "X"]
    assert events and not any("run_ns" in e["args"] for e in events)


def test_cli_shows_the_split(traced_run, capsys):
    from ckptlab.analysis.cli import main

    assert main(["trace", "threads", traced_run.path]) == 0
    out = capsys.readouterr().out
    assert "where the writers' time went" in out and "CPU wait %" in out
