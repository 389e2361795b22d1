"""SIGTERM: the run takes a final checkpoint within its budget and exits 0; resuming from it
continues the uninterrupted trajectory bit for bit."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from training_helpers import TRAIN, loss_lines, skip_without_core, train

STEPS = 100_000  # never reached: the run is stopped by the signal


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _sigterm_after(tmp_path: Path, *args: str, lines: int = 3) -> tuple[subprocess.Popen, str, str, int]:
    """Start a run writing tmp_path/loss.txt, SIGTERM it once it has `lines` losses; returns
    (process, stdout, stderr, losses written)."""
    loss = tmp_path / "loss.txt"
    proc = subprocess.Popen([*TRAIN, "--training-steps", str(STEPS), "--loss-file", str(loss), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _lines(loss) < lines and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return proc, out, err, _lines(loss)


@pytest.mark.parametrize("kind", [pytest.param("dcp", marks=pytest.mark.slow), "pccheck"])  # a synchronous kind: below
def test_sigterm_final_checkpoint_then_bit_exact_resume(tmp_path: Path, kind: str) -> None:
    skip_without_core(kind)
    loss, ckpt = tmp_path / "loss.txt", tmp_path / "ckpt"
    common = ["--checkpointer", kind, "--training-steps", str(STEPS), "--ckpt-dir", str(ckpt),
              "--loss-file", str(loss)]
    proc, out, err, stopped = _sigterm_after(tmp_path, "--checkpointer", kind, "--ckpt-dir", str(ckpt),
                                             "--checkpoint-freq", "1000", "--summary-json", str(tmp_path / "s.json"),
                                             lines=5)
    assert proc.returncode == 0, err
    assert "final checkpoint" in err and "SIGTERM" in out
    assert stopped >= 5

    # Reference and resumed run both stop (SIGKILL) three steps later; compare the files.
    reference = tmp_path / "reference.txt"
    ref = train("--checkpointer", "none", "--training-steps", STEPS, "--loss-file", reference,
                "--fail-at-step", stopped + 3)
    assert ref.returncode == -9
    resumed = train(*common, "--load-checkpoint", "--fail-at-step", stopped + 3)
    assert resumed.returncode == -9
    assert f"resumed from step {stopped}" in resumed.stderr
    assert loss_lines(loss) == loss_lines(reference)


def test_a_synchronous_final_checkpoint_over_budget_exits_1(tmp_path: Path) -> None:
    """torch.save cannot be cut short: the checkpoint ends durable, but late, and the exit code says so."""
    ckpt = tmp_path / "ckpt"
    proc, _, err, stopped = _sigterm_after(tmp_path, "--checkpointer", "torchsave", "--ckpt-dir", str(ckpt),
                                           "--checkpoint-freq", "1000", "--sigterm-budget", "0.000001")
    assert proc.returncode == 1, err
    assert f"final checkpoint of step {stopped} is durable, but only" in err and "over the 1e-06 s budget" in err
    from ckptlab.core import list_checkpoints

    assert list_checkpoints(ckpt)[-1].step == stopped


def test_sigterm_without_checkpoints_just_exits(tmp_path: Path) -> None:
    proc, _, err, _ = _sigterm_after(tmp_path, "--checkpointer", "none")
    assert proc.returncode == 0, err
    assert "--checkpointer none keeps no checkpoints; exiting" in err and "final checkpoint of step" not in err
