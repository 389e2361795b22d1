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


# -- the exit status is the command's own, whatever py-spy does ------------------------------

def stand_in_py_spy(tmp_path, name: str, body: str) -> str:
    """An executable that takes py-spy's place ($PY_SPY): `body` runs as its Python code."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport os, sys, time\n{body}\n")
    path.chmod(0o755)
    return str(path)


# fails at once, as py-spy does when the command is gone before it could attach
FAILS_TO_ATTACH = """
if sys.argv[1:] == ["--version"]:
    print("py-spy 0.0-stand-in"); sys.exit(0)
print("Error: Failed to find python version from target process", file=sys.stderr)
sys.exit(1)
"""

# samples until its target (--pid) is gone, then writes the profile, as py-spy record does
SAMPLES = """
if sys.argv[1:] == ["--version"]:
    print("py-spy 0.0-stand-in"); sys.exit(0)
args = sys.argv[1:]
pid = int(args[args.index("--pid") + 1])


def alive(pid):
    try:  # the target may be reaped between any two reads
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


while alive(pid):
    time.sleep(0.005)
open(args[args.index("--output") + 1], "w").write('{"$schema": "stand-in speedscope"}')
"""


def env_with(py_spy: str) -> dict:
    return {**os.environ, "PY_SPY": py_spy}


@pytest.mark.parametrize("code, expected", [("pass", 0), ("raise SystemExit(3)", 3)])
@pytest.mark.parametrize("profiler", ["fails-to-attach", "samples"])
def test_py_spy_exit_status_is_the_commands(profiler, code, expected, tmp_path, capsys, monkeypatch):
    body = FAILS_TO_ATTACH if profiler == "fails-to-attach" else SAMPLES
    monkeypatch.setenv("PY_SPY", stand_in_py_spy(tmp_path, profiler, body))
    out = tmp_path / "p.json"
    r = run_cli(capsys, "profile", "py-spy", "-o", out, "--", sys.executable, "-c", code)
    assert r.returncode == expected, r.stderr
    if profiler == "fails-to-attach":
        assert not out.exists()
        assert "warning" in r.stderr and "Failed to find python version" in r.stderr, r.stderr
        assert f"the command exited {expected}" in r.stderr, r.stderr
    else:
        assert out.exists() and "warning" not in r.stderr, r.stderr


def test_py_spy_missing_or_unusable_is_a_clear_error(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "ran"
    cmd = ["--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    monkeypatch.setenv("PY_SPY", str(tmp_path / "absent"))
    r = run_cli(capsys, "profile", "py-spy", *cmd)
    assert r.returncode == 127 and "PY_SPY" in r.stderr and "absent" in r.stderr, r.stderr
    broken = stand_in_py_spy(tmp_path, "broken", "print('cannot run here', file=sys.stderr); sys.exit(1)")
    monkeypatch.setenv("PY_SPY", broken)
    r = run_cli(capsys, "profile", "py-spy", *cmd)
    assert r.returncode == 127 and "does not run" in r.stderr and "cannot run here" in r.stderr, r.stderr
    assert not marker.exists(), "the command is not run without a working profiler"
    monkeypatch.setenv("PY_SPY", stand_in_py_spy(tmp_path, "samples", SAMPLES))
    r = run_cli(capsys, "profile", "py-spy", "--", str(tmp_path / "no-such-command"))
    assert r.returncode == 127 and "cannot run" in r.stderr and "no-such-command" in r.stderr, r.stderr


@pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed (the test extras install it)")
def test_real_py_spy_on_a_short_command_exits_with_its_status(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PY_SPY", raising=False)
    for code, expected in (("pass", 0), ("raise SystemExit(3)", 3)):
        out = tmp_path / f"p{expected}.json"
        r = run_cli(capsys, "profile", "py-spy", "-o", out, "--", sys.executable, "-c", code)
        if "ermission" in r.stderr:
            pytest.skip(f"py-spy may not trace processes here: {r.stderr[-300:]}")
        assert r.returncode == expected, r.stderr
        # py-spy often cannot attach before such a command ends: a warning then, never a failure
        assert out.exists() or "warning: no profile written" in r.stderr, r.stderr
