"""`ckptlab trace export|info` through the console entry and in-process (analysis/cli.py)."""
from __future__ import annotations

import json
import subprocess
from collections import defaultdict

from cli_helpers import ckptlab, run_in_process


def run_cli(capsys, *args) -> subprocess.CompletedProcess:
    """analysis/cli.py in this process."""
    from ckptlab.analysis.cli import main

    return run_in_process(main, capsys, *args)


def test_chrome_export_has_one_track_per_thread(traced_run, tmp_path):
    out = tmp_path / "trace.json"
    r = ckptlab("trace", "export", traced_run.path, "--chrome", out)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    events = doc["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert len(spans) == traced_run.table.num_rows
    names = defaultdict(list)
    for e in events:
        if e["ph"] == "M" and e["name"] == "thread_name":
            names[e["tid"]].append(e["args"]["name"])
    assert all(len(v) == 1 for v in names.values()), "one track (one thread_name) per thread"
    assert set(names) == {e["tid"] for e in spans} == set(traced_run.table.column("thread").to_pylist())
    assert {"ckptlab-writer-0", "ckptlab-writer-1", "ckptlab-commit"} <= {v[0] for v in names.values()}
    assert len({e["pid"] for e in events}) == 1
    for e in spans:
        assert e["ts"] >= 0 and e["dur"] >= 0 and e["cat"] == "ckptlab"
        ids = {"ckpt_id", "step", "chunk", "offset", "nbytes", "cpu_begin", "cpu_end"}
        assert set(e["args"]) in (ids, ids | {"run_ns", "wait_ns", "ctx_vol", "ctx_invol"})
    assert all(e["args"]["run_ns"] >= 0 for e in spans if e["name"] == "write"), "engine ops carry counters"
    assert min(e["ts"] for e in spans) == 0
    # complete events on one track nest properly (what Perfetto requires of a thread track)
    by_tid = defaultdict(list)
    for e in spans:
        by_tid[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
    for tid, iv in by_tid.items():
        stack: list[float] = []
        for b, end in sorted(iv, key=lambda x: (x[0], -x[1])):
            while stack and stack[-1] <= b:
                stack.pop()
            assert not stack or end <= stack[-1] + 1e-3, f"overlapping, not nested, ranges on thread {tid}"
            stack.append(end)
    assert doc["otherData"]["run_id"] == traced_run.run_id


def test_chrome_export_phase_filter_and_errors(traced_run, tmp_path, capsys):
    out = tmp_path / "w.json"
    r = run_cli(capsys, "trace", "export", traced_run.path, "--chrome", out, "--phases", "write,fsync")
    assert r.returncode == 0, r.stderr
    spans = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X"]
    assert {e["name"] for e in spans} == {"write", "fsync"}
    before = out.read_bytes()
    r = run_cli(capsys, "trace", "export", traced_run.path, "--chrome", out, "--phases", "wrtie,fsync")
    assert r.returncode == 2 and "unknown phase(s) wrtie" in r.stderr and "write" in r.stderr
    assert out.read_bytes() == before, "a refused export leaves the previous file alone"
    r = run_cli(capsys, "trace", "export", tmp_path / "missing.arrow", "--chrome", out)
    assert r.returncode == 2 and "no such trace file" in r.stderr
    bogus = tmp_path / "bogus.arrow"
    bogus.write_text("not arrow")
    r = run_cli(capsys, "trace", "export", bogus, "--chrome", out)
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_trace_info_summarises_phases(traced_run, capsys):
    r = run_cli(capsys, "trace", "info", traced_run.path, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    rows = {p["phase"]: p for p in info["phases"]}
    assert rows["write"]["records"] == traced_run.nchunks
    assert rows["write"]["bytes"] == traced_run.stream_bytes
    assert rows["write"]["threads"] == 2
    assert info["metadata"]["run_id"] == traced_run.run_id
    r = run_cli(capsys, "trace", "info", traced_run.path)
    assert r.returncode == 0 and "write" in r.stdout and "ckptlab-writer-0" in r.stdout
