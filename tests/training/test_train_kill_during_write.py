"""The kill lands *during* a checkpoint write: resume from the last committed step, and the
losses still match the uninterrupted run. Needs the engine (pccheck) and its fault points.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptlab.core.manifest import decode_manifest
from training_helpers import core_import_error, loss_lines, train

pytestmark = pytest.mark.skipif(core_import_error() is not None,
                                reason=core_import_error() or "")

STEPS, FREQ = 12, 4
# A state of ~52 MB (4.3 M params with fp32 AdamW): several 16 MiB chunks per checkpoint.
LARGE = ("--vocab-size", "16384", "--dim", "128", "--n-heads", "4", "--n-kv-heads", "2")
# The tiny model's ~1.3 MB state in 256 KiB chunks: the same multi-chunk persist at a third
# of the training time (a fault point fires mid-checkpoint whatever the state's size).
SMALL_CHUNKS = ("--chunk-mb", "0.25")


def _run_killed_then_resume(tmp_path: Path, faults: str | None, *flags: str) -> tuple[Path, dict]:
    common = ["--checkpointer", "pccheck", "--training-steps", STEPS, "--checkpoint-freq", FREQ,
              "--ckpt-dir", tmp_path / "ckpt", "--loss-file", tmp_path / "loss.txt", *flags]
    killed = train(*common, faults=faults) if faults else train(*common, "--fail-at-step", "8")
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr}"
    resumed = train(*common, "--load-checkpoint", summary=tmp_path / "summary.json")
    assert resumed.returncode == 0, resumed.stderr
    return tmp_path / "loss.txt", resumed.summary


@pytest.mark.slow  # the same kill as test_train_demo.py's (validate --kill-during-write, before_rename of step 8)
def test_kill_before_the_commit_rename_falls_back_to_the_previous_checkpoint(
        tmp_path: Path, reference_losses) -> None:
    """The second checkpoint (step 8) dies between its fsyncs and its rename."""
    loss, summary = _run_killed_then_resume(tmp_path, "point=before_rename,hit=2,action=kill")
    assert summary["resumed_from"] == 4
    assert loss_lines(loss) == loss_lines(reference_losses(STEPS))
    manifests = sorted((tmp_path / "ckpt").glob("step_*/MANIFEST"))
    assert manifests and all(len(decode_manifest(m.read_bytes()).chunks) >= 4 for m in manifests)


@pytest.mark.parametrize("point, snapshot", [
    # sync under -m slow: tests/core/test_crash.py kills the engine at every fault point
    pytest.param("after_chunk_write", "sync", marks=pytest.mark.slow), ("after_chunk_write", "deferred"),
    # the light child of tests/core/test_crash.py is killed at every point, this one too
    pytest.param("before_manifest", "sync", marks=pytest.mark.slow)])
def test_kill_while_persisting_a_multi_chunk_state(tmp_path: Path, point: str, snapshot: str,
                                             reference_losses) -> None:
    """Killed mid-persist of checkpoint 2 (step 8) of a state in several chunks (with a deferred
    snapshot the engine is fed by the snapshot thread while training goes on)."""
    loss, summary = _run_killed_then_resume(tmp_path, f"point={point},ckpt=2,action=kill", *SMALL_CHUNKS,
                                            "--snapshot", snapshot)
    assert summary["resumed_from"] == 4
    assert loss_lines(loss) == loss_lines(reference_losses(STEPS))
    manifests = sorted((tmp_path / "ckpt").glob("step_*/MANIFEST"))
    assert manifests and all(len(decode_manifest(m.read_bytes()).chunks) >= 4 for m in manifests)


def test_sigkill_right_after_issuing_a_large_checkpoint(tmp_path: Path, reference_losses) -> None:
    """No fault injection: SIGKILL as soon as save(8) returns, the engine still writing."""
    loss, summary = _run_killed_then_resume(tmp_path, None, *LARGE)
    assert summary["resumed_from"] in (4, 8)
    assert loss_lines(loss) == loss_lines(reference_losses(STEPS, *LARGE))


def test_a_failed_checkpoint_write_stops_training_with_exit_1(tmp_path: Path) -> None:
    """EIO at the first checkpoint's fsync surfaces at the next save(): exit 1, errno named."""
    run = train("--checkpointer", "pccheck", "--training-steps", STEPS, "--checkpoint-freq", FREQ,
                "--ckpt-dir", tmp_path / "ckpt", faults="point=before_data_fsync,ckpt=1,action=eio")
    assert run.returncode == 1, run.stderr
    assert "checkpoint of step 4 failed" in run.stderr, run.stderr
