"""The analyzers on a real trace: the committed seed-1024 run on an H100 box (pccheck, 4 writer
threads, checkpoints at steps 10-40; trace schema version 1, so no scheduler counters)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ckptlab.analysis import plot_timeline, read_trace, summarize, thread_totals, to_chrome_trace, writer_stragglers
from ckptlab.analysis.cli import main


def test_trace_threads_names_the_straggler(h100_trace, capsys):
    assert main(["trace", "threads", h100_trace, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ckpts = doc["checkpoints"]
    assert [c["step"] for c in ckpts] == [10, 20, 30, 40] and {c["threads"] for c in ckpts} == {4}
    assert [c["slowest"] for c in ckpts] == ["ckptlab-writer-1"] + ["ckptlab-writer-3"] * 3
    last = {r["thread_name"]: r["times_last"] for r in doc["totals"]}
    assert last == {"ckptlab-writer-0": 0, "ckptlab-writer-1": 1, "ckptlab-writer-2": 0, "ckptlab-writer-3": 3}
    # balanced writers: the last finishes within 0.1 % of the median, so no cause is named
    assert all(1 <= c["straggler_ratio"] < 1.001 for c in ckpts)
    assert all(c["blocked_s"] is None for c in ckpts), "schema version 1: no time split"
    assert main(["trace", "threads", h100_trace]) == 0
    out = capsys.readouterr().out
    assert "writer threads per checkpoint" in out and "where the writers' time went" not in out


def test_makespans_agree_with_the_runs_own_time_to_durable(h100_trace):
    """The trace and the run's summary.json were written independently by the same run."""
    summary = json.loads((Path(h100_trace).parent / "summary.json").read_text())
    ckpts, _ = writer_stragglers(read_trace(h100_trace))
    assert [c["step"] for c in ckpts] == summary["ckpt_steps"]
    for c, durable in zip(ckpts, summary["time_to_durable_s"], strict=True):
        # the makespan ends at the last fsync; durable also counts the manifest and commit
        assert 0.98 * durable < c["makespan_s"] <= durable


def test_every_chunk_is_written_once_per_checkpoint(h100_trace):
    table = read_trace(h100_trace)
    ckpts, threads = writer_stragglers(table)
    totals = thread_totals(threads)
    assert sum(r["chunks"] for r in totals) == sum(c["chunks"] for c in ckpts) == 860
    assert len({c["bytes"] for c in ckpts}) == 1, "the same model state each time"
    write = next(r for r in summarize(table) if r["phase"] == "write")
    assert write["records"] == 860 and write["bytes"] == sum(c["bytes"] for c in ckpts)


def test_timeline_and_chrome_export(h100_trace, tmp_path):
    table = read_trace(h100_trace)
    drawn = plot_timeline(table, tmp_path / "step20.png", step=20)
    assert drawn.records > 0 and (tmp_path / "step20.png").read_bytes()[:4] == b"\x89PNG"
    assert {"ckptlab-writer-0", "ckptlab-commit"} <= set(drawn.tracks)
    spans = [e for e in to_chrome_trace(table, {"write", "fsync"})["traceEvents"] if e["ph"] == "X"]
    assert {e["name"] for e in spans} == {"write", "fsync"}


def test_trace_info_through_the_console_script(h100_trace):
    r = subprocess.run([sys.executable, "-m", "ckptlab.core.cli", "trace", "info", h100_trace, "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["rows"] == 6316 and info["metadata"]["schema_version"] == "1"
    assert {p["phase"] for p in info["phases"]} >= {"write", "fsync", "commit", "save", "forward"}


@pytest.mark.parametrize("argv, needle", [
    (["trace", "threads", "no/such.arrow"], "no such trace file"),
    (["trace", "plot", "no/such.arrow", "-o", "x.png"], "no such trace file"),
])
def test_missing_traces_are_named(argv, needle, capsys):
    assert main(argv) == 2 and needle in capsys.readouterr().err


def test_analysis_needs_no_torch(h100_trace, affinity_results):
    """Analysis reads files: `trace threads` and `analyze` never import torch (or core)."""
    code = ("import contextlib, io, sys\nfrom ckptlab.analysis.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['trace', 'threads', {h100_trace!r}, '--json']) == 0\n"
            f"    assert main(['analyze', {str(affinity_results)!r}, '--json']) == 0\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('ckptlab.core', 'ckptlab.training'))))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_analyze_finds_no_straggler_and_the_committed_report_is_current(h100_trace):
    from ckptlab.analysis import detect_stragglers, trace_findings

    table = read_trace(h100_trace)
    found = detect_stragglers(table)
    assert found["straggler"].isna().all() and (found["gap_s"] < 0.001).all(), "balanced writers: no straggler"
    doc = trace_findings(table, Path(h100_trace).name)
    report = (Path(h100_trace).parent / "report" / "report.md").read_text()
    assert doc["findings"] and all(f"- {f}" in report for f in doc["findings"]), \
        "regenerate: ckptlab analyze benchmarks/results/h100_seed1024_trace/trace.arrow --out .../report"
