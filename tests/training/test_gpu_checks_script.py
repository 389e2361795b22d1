"""benchmarks/gpu_checks.sh runs on the CPU in its smoke mode (GPU_CHECKS_SMOKE=1: the same
command lines, tiny preset, --device cpu), so a wrong flag, module path or stage fails here
and not in the few minutes a GPU machine is lent."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_checks.sh")
STAGES = ("tests", "validate-torchsave", "validate-pccheck", "validate-deferred", "trace", "modes", "seed2048",
          "seedfull", "affinity", "affinity-matrix")


def _smoke(tmp_path, *stages: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    out = tmp_path / "out"
    env = dict(os.environ, GPU_CHECKS_SMOKE="1", OUT=str(out), PYTHON=sys.executable, TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", SCRIPT, *stages], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    names: set[str] = set()
    if (out / "gpu-checks.tgz").exists():
        with tarfile.open(out / "gpu-checks.tgz") as tar:
            names = {n.removeprefix("./") for n in tar.getnames()}
    return proc, names


def test_every_stage_in_the_header_is_a_stage():
    text = open(SCRIPT).read()
    for stage in STAGES:
        assert f"#   {stage} " in text, f"{stage} is not described in the header"
        assert f"    {stage})" in text, f"{stage} has no case"


def test_an_unknown_stage_fails_before_running_anything(tmp_path):
    proc, names = _smoke(tmp_path, "seedful")
    assert proc.returncode == 2 and "unknown stage seedful" in proc.stderr
    assert not names


def test_trace_runs_on_the_cpu(tmp_path):
    """The trace stage's overlap figures and plots come back in the archive."""
    proc, names = _smoke(tmp_path, "trace")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {"trace-deferred.arrow", "trace-overlap.txt", "timeline-deferred.png", "timeline-deferred-step20.png",
            "trace-threads.txt"} <= names, sorted(names)


@pytest.mark.slow  # the bench CLI itself in make test: test_bench_cli.py
def test_seedfull_runs_on_the_cpu(tmp_path):
    """seedfull takes one checkpoint (the bench accepts it: its stall is a first stall)."""
    proc, names = _smoke(tmp_path, "seedfull")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {"bench_smoke_seed-full/bench.json", "bench_smoke_seed-full/bench.md"} <= names, sorted(names)
    assert "| pccheck-auto | 6 |" in proc.stdout  # the one checkpoint's row


@pytest.mark.slow
def test_every_stage_runs_on_the_cpu(tmp_path):
    proc, names = _smoke(tmp_path, *STAGES)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("PASS: the three loss files are identical to the last bit") == 5
    for bench in ("bench_smoke_seed-1024", "bench_smoke_seed-2048_fp32", "bench_smoke_seed-2048_bf16",
                  "bench_smoke_seed-full"):
        assert f"{bench}/bench.json" in names, sorted(names)
    assert "affinity-matrix-smoke/summary.json" in names and "tests.log" in names


def test_a_failed_stage_does_not_stop_the_next_and_is_reported(tmp_path):
    """Device time is rare: a stage that fails is logged, the next one runs, the archive holds
    both, and the script exits 1."""
    wrapper = tmp_path / "python"
    # the second stage's pytest is answered by the wrapper too: the script's handling of stages
    # is under test here (the -m gpu tests themselves skip in this suite's own run)
    wrapper.write_text(f"#!/bin/sh\ncase \"$*\" in *ckptlab.training.validate*) echo 'validate broke' >&2; exit 3;;\n"
                       f"*'-m pytest -m gpu'*) echo '4 passed, 9 skipped'; exit 0;; esac\n"
                       f"exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, GPU_CHECKS_SMOKE="1", OUT=str(out), PYTHON=str(wrapper), TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", SCRIPT, "validate-deferred", "tests"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stage validate-deferred FAILED" in proc.stdout and "FAILED: validate-deferred" in proc.stdout
    with tarfile.open(out / "gpu-checks.tgz") as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
        stages = tar.extractfile("./stages.txt").read().decode().split("\n")
    assert "tests.log" in names and "stage-validate-deferred.log" in names
    assert "4 passed, 9 skipped" in proc.stdout
    assert stages[0].startswith("validate-deferred rc=3 ") and stages[1].startswith("tests rc=0 "), stages
