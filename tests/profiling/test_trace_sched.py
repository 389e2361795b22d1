"""Scheduler counters in timing records (run_ns, wait_ns, ctx_vol, ctx_invol) and the
blocked-time split built on them (profiling/stragglers.py, `ckptlab trace threads`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from profiling_helpers import traced_state
from ckptlab.core import CheckpointConfig, open_checkpointer
from ckptlab.profiling import phase, read_trace, record, start_trace
from ckptlab.profiling.schema import SCHED_COLUMNS, write_trace_file
from ckptlab.profiling.stragglers import thread_totals, writer_stragglers

MS = 1_000_000


def frame(table: pa.Table):
    df = table.to_pandas()
    df["phase"] = df.phase.astype(str)
    df["thread_name"] = df.thread_name.astype(str)
    df["dur"] = (df.t_end_ns - df.t_begin_ns).astype(np.int64)
    return df


def test_every_engine_record_carries_counters_within_its_duration(traced_run):
    df = frame(traced_run.table)
    engine = df[df.phase.isin(["snapshot", "stage", "write", "checksum", "fsync", "manifest", "commit", "gc",
                               "read", "verify"])]
    assert set(engine.phase) >= {"snapshot", "stage", "write", "checksum", "fsync", "manifest", "commit", "read",
                                 "verify"}
    for c in SCHED_COLUMNS:
        assert (engine[c] >= 0).all(), f"{c} not measured on some engine records"
    # The counters are sampled inside [t_begin, t_end]: on-CPU + run-queue time fits in the record
    # (the scheduler's clock and CLOCK_MONOTONIC may differ by a few microseconds).
    slack = np.maximum(20_000, engine.dur // 100)
    over = engine[engine.run_ns + engine.wait_ns > engine.dur + slack]
    assert over.empty, over[["phase", "dur", "run_ns", "wait_ns"]]
    # SPREAD_FAULT sleeps 100 ms between the first chunk's checksum and write: that writer idles.
    _, threads = writer_stragglers(traced_run.table)
    assert sorted(r["idle_s"] >= 0.09 for r in threads) == [False, True]


def test_phase_counters_tell_running_from_sleeping(tmp_path):
    with start_trace(tmp_path / "t.arrow") as s:
        with phase("spin"):
            end = time.monotonic() + 0.03
            while time.monotonic() < end:
                pass
        with phase("sleep"):
            time.sleep(0.03)
        record("timed_elsewhere", 1, 2)
    df = frame(s.table()).set_index("phase")
    spin, sleep = df.loc["spin"], df.loc["sleep"]
    assert spin.run_ns + spin.wait_ns >= 0.9 * spin.dur          # running or runnable throughout
    assert sleep.run_ns + sleep.wait_ns <= 0.5 * sleep.dur and sleep.ctx_vol >= 1  # blocked in the sleep
    assert (df.loc["timed_elsewhere", list(SCHED_COLUMNS)] == -1).all()


def test_columns_without_counters_are_accepted_as_not_measured(tmp_path):
    with start_trace(tmp_path / "t.arrow") as s:
        n = s.add_records({"ckpt_id": [1], "step": [1], "thread": [os.getpid()], "cpu_begin": [0], "cpu_end": [0],
                           "phase": [3], "chunk": [0], "offset": [0], "nbytes": [10], "t_begin_ns": [5],
                           "t_end_ns": [9]})
    assert n == 1
    row = frame(read_trace(tmp_path / "t.arrow")).iloc[0]
    assert [row[c] for c in SCHED_COLUMNS] == [-1, -1, -1, -1]


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
    from ckptlab.profiling.chrome import to_chrome_trace
    from ckptlab.profiling.cli import main

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
    from ckptlab.profiling.cli import main

    assert main(["trace", "threads", traced_run.path]) == 0
    out = capsys.readouterr().out
    assert "where the writers' time went" in out and "CPU wait %" in out


@pytest.fixture
def busy_cpu():
    """A process spinning on one CPU this process may use; yields that CPU."""
    cpu = max(os.sched_getaffinity(0))
    code = (f"import os; os.sched_setaffinity(0, {{{cpu}}}); print('ready', flush=True)\n"
            "while True: pass\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield cpu
    finally:
        proc.kill()
        proc.wait()


def test_writers_sharing_a_cpu_with_a_busy_process_wait_for_it(busy_cpu, tmp_path):
    cfg = CheckpointConfig(writer_threads=2, writer_cpus=(busy_cpu,), chunk_bytes=1 << 20, trace=True)
    ck = open_checkpointer("pccheck", tmp_path / "ck", cfg)
    with start_trace(tmp_path / "t.arrow", ck) as s:
        for step in (1, 2):
            ck.save(step, traced_state(16 << 20))
            ck.wait()
        ck.close()
    table = s.table()
    df = frame(table)
    writers = df[df.thread_name.str.startswith("ckptlab-writer")]
    assert set(writers.cpu_begin) == {busy_cpu}
    assert writers.wait_ns.sum() > 0, "writers pinned beside a spinning process never waited for the CPU"
    ckpts, _ = writer_stragglers(table)
    assert sum(c["runq_wait_s"] for c in ckpts) == pytest.approx(writers.wait_ns.sum() / 1e9)
