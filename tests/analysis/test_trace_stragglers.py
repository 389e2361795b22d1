"""Writer-thread stragglers and migrations per checkpoint (analysis/stragglers.py, `ckptlab trace threads`)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest

from ckptlab.analysis.stragglers import migrations, robust_z, thread_totals, writer_stragglers

MS = 1_000_000


def _table(rows: list[tuple]) -> pa.Table:
    """rows: (ckpt_id, step, thread, name, phase, begin_ms, end_ms, nbytes, cpu_begin, cpu_end)"""
    cols = list(zip(*rows, strict=True))
    return pa.table({
        "ckpt_id": pa.array(cols[0], pa.uint64()), "step": pa.array(cols[1], pa.int64()),
        "thread": pa.array(cols[2], pa.int32()), "thread_name": pa.array(cols[3]), "phase": pa.array(cols[4]),
        "t_begin_ns": pa.array([b * MS for b in cols[5]], pa.uint64()),
        "t_end_ns": pa.array([e * MS for e in cols[6]], pa.uint64()),
        "nbytes": pa.array(cols[7], pa.uint64()),
        "cpu_begin": pa.array(cols[8], pa.int32()), "cpu_end": pa.array(cols[9], pa.int32()),
    })


def _writer(ckpt, tid, begin, busy, cpu=0, chunks=1, nbytes=100):
    """`chunks` back-to-back writes of `busy` ms each, then an fsync of 1 ms."""
    rows, t = [], begin
    for _ in range(chunks):
        rows.append((ckpt, ckpt * 10, tid, f"ckptlab-writer-{tid}", "write", t, t + busy, nbytes, cpu, cpu))
        t += busy
    rows.append((ckpt, ckpt * 10, tid, f"ckptlab-writer-{tid}", "fsync", t, t + 1, nbytes * chunks, cpu, cpu))
    return rows


def test_migrations_count_changes_within_and_between_records():
    assert migrations(np.array([0, 0, 0]), np.array([0, 0, 0])) == 0
    assert migrations(np.array([0, 1]), np.array([1, 1])) == 1        # moved during the first record
    assert migrations(np.array([0, 3]), np.array([0, 3])) == 1        # moved between records
    assert migrations(np.array([0, -1, 2]), np.array([0, -1, 2])) == 1  # unknown CPUs are skipped


def test_robust_z_flags_only_a_real_outlier():
    assert robust_z(np.array([5.0, 5.0, 5.0])).tolist() == [0.0, 0.0, 0.0]
    z = robust_z(np.array([10.0, 10.5, 11.0, 10.2, 40.0]))
    assert z[-1] > 3.5 and (np.abs(z[:-1]) < 3.5).all()
    z = robust_z(np.array([11.0, 11.0, 12.0, 11.0, 11.0, 41.0]))  # MAD 0: mean absolute deviation instead
    assert z[-1] > 3.5 and (np.abs(z[:-1]) < 3.5).all()


def test_late_starter_and_slow_worker_are_told_apart():
    caller = [(1, 10, 9, "MainThread / ckptlab-save", "stage", 0, 2, 300, 0, 0),
              (2, 20, 9, "MainThread / ckptlab-save", "stage", 100, 102, 300, 0, 0)]
    rows = caller + _writer(1, 1, 2, 10) + _writer(1, 2, 2, 10) + _writer(1, 3, 30, 10, cpu=1)  # 3 starts late
    rows += _writer(2, 1, 102, 10) + _writer(2, 2, 102, 30, chunks=1) + _writer(2, 3, 102, 10, cpu=1)  # 2 slow
    ckpts, threads = writer_stragglers(_table(rows))
    assert [c["step"] for c in ckpts] == [10, 20] and all(c["threads"] == 3 for c in ckpts)
    first, second = ckpts
    assert first["slowest"] == "ckptlab-writer-3" and first["slowest_cause"] == "started late"
    assert first["makespan_s"] == pytest.approx(0.041)                   # 30 + 10 + 1 ms after the stage began
    assert first["straggler_ratio"] == pytest.approx(41 / 13)
    assert first["imbalance_pct"] == pytest.approx(0.0)                   # same work, started late
    assert second["slowest"] == "ckptlab-writer-2" and second["slowest_cause"] == "worked slowly"
    assert second["imbalance_pct"] == pytest.approx((31 / (53 / 3) - 1) * 100)
    assert second["bytes"] == 300 and second["chunks"] == 3
    by = {(r["ckpt_id"], r["thread_name"]): r for r in threads}
    assert by[(1, "ckptlab-writer-3")]["start_s"] == pytest.approx(0.030)
    assert by[(1, "ckptlab-writer-3")]["cpus"] == [1]
    totals = {r["thread_name"]: r for r in thread_totals(threads)}
    assert totals["ckptlab-writer-3"]["times_last"] == 1 and totals["ckptlab-writer-2"]["times_last"] == 1
    assert totals["ckptlab-writer-1"]["times_last"] == 0 and totals["ckptlab-writer-1"]["chunks"] == 2


def test_an_outlier_among_many_writers_is_named():
    rows = []
    for tid, busy in enumerate([10, 10, 11, 10, 10, 40], start=1):
        rows += _writer(1, tid, 0, busy)
    (ckpt,), _ = writer_stragglers(_table(rows))
    assert ckpt["outliers"] == ["ckptlab-writer-6"]


def test_a_real_save_accounts_for_every_chunk(traced_run):
    ckpts, threads = writer_stragglers(traced_run.table)
    assert len(ckpts) == 1
    c = ckpts[0]
    assert c["step"] == 3 and c["threads"] == 2, "both writer threads took chunks"
    assert c["chunks"] == traced_run.nchunks and c["bytes"] == traced_run.stream_bytes
    assert c["makespan_s"] == max(r["finish_s"] for r in threads) > 0
    assert all(0 <= r["start_s"] < r["finish_s"] for r in threads)


def test_writer_report_figure(traced_run, tmp_path):
    from ckptlab.analysis.straggler_plot import plot_writer_report

    assert plot_writer_report(traced_run.table, tmp_path / "w.png") == 1
    assert (tmp_path / "w.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    caller_only = traced_run.table.filter(pa.compute.invert(pa.compute.is_in(
        traced_run.table.column("phase").cast(pa.string()), pa.array(["write", "checksum", "fsync"]))))
    with pytest.raises(ValueError, match="no engine writes"):
        plot_writer_report(caller_only, tmp_path / "x.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.png"]


def test_cli(traced_run, tmp_path, capsys):
    from ckptlab.analysis.cli import main

    assert main(["trace", "threads", traced_run.path, "--plot", str(tmp_path / "w.png")]) == 0
    out = capsys.readouterr().out
    assert "writer threads per checkpoint" in out and "ckptlab-writer-1" in out
    assert f"figure: {tmp_path / 'w.png'}" in out and (tmp_path / "w.png").stat().st_size > 10_000
    assert main(["trace", "threads", traced_run.path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"checkpoints", "threads", "totals"} and len(doc["threads"]) == 2
    assert main(["trace", "threads", str(tmp_path / "none.arrow")]) == 2
    assert "no such trace file" in capsys.readouterr().err


def test_a_trace_without_engine_writes(tmp_path, capsys):
    from ckptlab.analysis.cli import main
    from ckptlab.profiling import phase, start_trace

    with start_trace(tmp_path / "py.arrow"):
        with phase("forward", step=1):
            pass
    assert writer_stragglers(pa.table({"ckpt_id": pa.array([], pa.uint64())})) == ([], [])
    assert main(["trace", "threads", str(tmp_path / "py.arrow")]) == 0
    assert "no engine writes" in capsys.readouterr().out
