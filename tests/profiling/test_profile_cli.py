"""`ckptlab profile nsys|py-spy` through the console entry and in-process (profiling/cli.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ckptlab.profiling.tools import find_nsys, find_py_spy

from cli_helpers import ckptlab, run_in_process


def run_cli(capsys, *args) -> subprocess.CompletedProcess:
    """profiling/cli.py in this process."""
    from ckptlab.profiling.cli import main

    return run_in_process(main, capsys, *args)


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


def test_the_old_affinity_spelling_names_the_new_command(capsys):
    r = run_cli(capsys, "profile", "affinity", "--dir", "/tmp/x", "--out", "runs/a b", "--threads", "1,2")
    assert r.returncode == 2 and "`ckptlab experiment affinity` (same flags)" in r.stderr
    assert "ckptlab experiment affinity --dir /tmp/x --out 'runs/a b' --threads 1,2" in r.stderr
    assert "ckptlab analyze OUT" in r.stderr and not r.stdout
