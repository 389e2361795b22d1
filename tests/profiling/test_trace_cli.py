"""`ckptlab trace export|info` and `ckptlab profile nsys|py-spy` through the console entry."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest

from ckptlab.profiling.tools import find_nsys, find_py_spy


def ckptlab(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real console entry (core/cli.py dispatching to profiling/cli.py), in a subprocess."""
    return subprocess.run([sys.executable, "-m", "ckptlab.core.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def run_cli(capsys, *args) -> subprocess.CompletedProcess:
    """profiling/cli.py in this process (no interpreter start-up); same result shape."""
    from ckptlab.profiling.cli import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


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


def env_without_nsys() -> dict:
    env = dict(os.environ)
    env.pop("NSYS", None)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not os.path.exists(os.path.join(p, "nsys")))
    return env


@pytest.mark.skipif(find_nsys() is not None, reason="nsys is installed here; the missing-tool path is not reachable")
def test_profile_nsys_names_what_is_missing():
    r = ckptlab("profile", "nsys", "--", sys.executable, "-c", "print(1)", env=env_without_nsys())
    assert r.returncode == 127
    assert "Nsight Systems" in r.stderr and "not installed" in r.stderr and "NSYS=" in r.stderr
    assert "1\n" not in r.stdout, "the command is not run without the profiler"


def test_profile_nsys_dry_run_shows_the_commands(capsys):
    r = run_cli(capsys, "profile", "nsys", "--dry-run", "-o", "myrun", "--", "python", "train.py", "--x", "1")
    assert r.returncode == 0, r.stderr
    profile, stats = r.stdout.strip().splitlines()
    assert "nsys profile --trace=cuda,nvtx,osrt --sample=cpu --cpuctxsw=process-tree --output=myrun" in profile
    assert profile.endswith("python train.py --x 1") and "CKPTLAB_RUN_ID=" in profile
    assert stats.endswith("stats --report=nvtx_sum --format=table myrun.nsys-rep")


def test_profile_needs_a_command(capsys):
    r = run_cli(capsys, "profile", "py-spy")
    assert r.returncode == 2 and "after `--`" in r.stderr


SPIN = """
import time
def busy_checkpoint_loop():
    t = time.time()
    while time.time() - t < 1.0:
        sum(range(10000))
busy_checkpoint_loop()
"""


def test_profile_py_spy_writes_a_speedscope_profile(tmp_path):
    out = tmp_path / "prof.speedscope.json"
    script = tmp_path / "spin.py"
    script.write_text(SPIN)
    r = ckptlab("profile", "py-spy", "-o", out, "--rate", "200", "--", sys.executable, script)
    if find_py_spy() is None:
        assert r.returncode == 127 and "pip install py-spy" in r.stderr
        return
    if r.returncode != 0 and ("ermission" in r.stderr or "ptrace" in r.stderr):
        pytest.skip(f"py-spy may not trace processes here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert "speedscope" in doc["$schema"]
    frames = {f["name"] for f in doc["shared"]["frames"]}
    assert "busy_checkpoint_loop" in frames
