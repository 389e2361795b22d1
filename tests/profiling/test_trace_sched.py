"""Scheduler counters in timing records (run_ns, wait_ns, ctx_vol, ctx_invol): measured on every
engine and Python record, within its duration (the blocked-time split built on them is
tests/analysis/test_trace_time_split.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from profiling_helpers import traced_state
from ckptlab.analysis.stragglers import writer_stragglers
from ckptlab.core import CheckpointConfig, open_checkpointer
from ckptlab.profiling import phase, read_trace, record, start_trace
from ckptlab.profiling.schema import SCHED_COLUMNS

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
    # SPREAD_FAULT sleeps 100 ms inside the first chunk's write record (before its pwrite): that
    # writer is blocked, off CPU and not runnable, as behind a slow device; nobody idles that long.
    _, threads = writer_stragglers(traced_run.table)
    assert sorted(r["blocked_s"] >= 0.09 for r in threads) == [False, True]
    assert not any(r["idle_s"] >= 0.09 for r in threads)


def stolen_ticks(cpu: int) -> int:
    """The hypervisor's steal counter of one CPU (/proc/stat, in USER_HZ ticks)."""
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name == f"cpu{cpu}":
                return int(values[7]) if len(values) > 7 else 0
    raise AssertionError(f"cpu{cpu} not in /proc/stat")


@pytest.fixture
def one_cpu():
    """Pins this thread to one CPU for the test, so that CPU's steal counter covers the spin."""
    saved = os.sched_getaffinity(0)
    cpu = min(saved)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, saved)


def test_phase_counters_tell_running_from_sleeping(one_cpu, tmp_path):
    # On a VM the hypervisor may take the CPU away mid-spin: with paravirt steal accounting that
    # time is in neither the task's run_ns nor its wait_ns, only in the CPU's steal counter
    # (whole ticks, so up to one tick more than it shows).
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    with start_trace(tmp_path / "t.arrow") as s:
        steal_before = stolen_ticks(one_cpu)
        with phase("spin"):
            end = time.monotonic() + 0.2
            while time.monotonic() < end:
                pass
        stolen_ns = (stolen_ticks(one_cpu) - steal_before + 1) * tick_ns
        with phase("sleep"):
            time.sleep(0.03)
        record("timed_elsewhere", 1, 2)
    df = frame(s.table()).set_index("phase")
    spin, sleep = df.loc["spin"], df.loc["sleep"]
    assert spin.cpu_begin == spin.cpu_end == one_cpu
    assert spin.run_ns + spin.wait_ns + stolen_ns >= 0.9 * spin.dur, (spin.run_ns, spin.wait_ns, stolen_ns)
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
