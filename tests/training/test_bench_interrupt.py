"""SIGTERM or Ctrl-C to a running `ckptlab bench` (a real process): the measured run's child
stops, the work dir with its checkpoints is removed, and the exit is 128 + the signal with a
message saying what was cleaned up."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckptlab.training.bench.spec import BenchSpec, schedule

psutil = pytest.importorskip("psutil")

STEPS = 100_000  # never reached: the bench is stopped by the signal


def _seed_running_torchsave_first() -> int:
    """A seed whose round starts with the checkpointing run, so the work dir holds files."""
    for seed in range(50):
        plan = schedule(BenchSpec(out=Path("unused"), kinds=("torchsave",), steps=STEPS, every=(1,),
                                  repeats=1, seed=seed))
        if plan[0].kind == "torchsave":
            return seed
    raise AssertionError("no seed in 0..49 runs torchsave first")


def _wait_for(what: str, check, proc: subprocess.Popen, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := check()):
            return found
        if proc.poll() is not None:
            raise AssertionError(f"bench exited ({proc.returncode}) before {what}:\n{proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout:g} s")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_child_and_removes_the_work_dir(tmp_path: Path, signum: int) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ckptlab.core.cli", "bench", "--preset", "tiny", "--kinds", "torchsave",
           "--steps", str(STEPS), "--every", "1", "--repeats", "1", "--seed", str(_seed_running_torchsave_first()),
           "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: list = []
    try:
        bench = psutil.Process(proc.pid)
        children = _wait_for("measured run's child", bench.children, proc)
        _wait_for("checkpoint in the work dir",
                  lambda: any(p.is_file() for p in out.glob("ckptlab-bench-*/ckpt-*/**/*")), proc)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"the bench's child outlived it: {alive}"
        assert proc.returncode == 128 + signum, (proc.returncode, stderr)
        name = signal.Signals(signum).name
        assert f"interrupted by {name}" in stderr and "removed the work dir" in stderr, stderr
        assert not list(out.glob("ckptlab-bench-*")), "the work dir (with its checkpoints) was left behind"
        assert not (out / "bench.json").exists()  # an interrupted bench reports nothing
    finally:  # on today's code the child is an orphan that would train for hours
        for p in [*children, psutil.Process(proc.pid) if proc.poll() is None else None]:
            if p is not None and p.is_running():
                p.kill()
        proc.wait(timeout=30)
