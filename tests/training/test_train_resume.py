"""THE acceptance test: SIGKILL, resume, and the loss file is identical to the last bit.

Each case is uninterrupted (shared reference) vs killed at step k (real SIGKILL, its own
process) then resumed with --load-checkpoint; 12 steps, a checkpoint every 4.
"""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from training_helpers import loss_lines, skip_without_core, train

# dcp is synchronous: killed right after save() returns is killed after a durable checkpoint,
# which test_kill_after_durable_checkpoint_resumes_bit_exact covers
# pccheck: test_train_kill_during_write.py's large-state kill right after issuing covers it
ISSUE_KINDS = ["torchsave", pytest.param("pccheck", marks=pytest.mark.slow), pytest.param("dcp", marks=pytest.mark.slow),
               "dcp-async"]
STEPS, FREQ = 12, 4


def _kill_and_resume(tmp_path: Path, kind: str, *flags: str,
                     model_flags: tuple[str, ...] = ()) -> tuple[Path, dict]:
    common = ["--checkpointer", kind, "--training-steps", STEPS, "--checkpoint-freq", FREQ,
              "--ckpt-dir", tmp_path / "ckpt", "--loss-file", tmp_path / "loss.txt", *model_flags]
    killed = train(*common, *flags)
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr}"
    resumed = train(*common, "--load-checkpoint", summary=tmp_path / "summary.json")
    assert resumed.returncode == 0, resumed.stderr
    return tmp_path / "loss.txt", resumed.summary


# dcp under -m slow: test_bf16_resume_is_bit_exact_too kills and resumes dcp (synchronous, so
# durable when save() returns); torchsave and pccheck: test_kill_right_after_issuing_a_checkpoint
# and test_train_kill_during_write.py
@pytest.mark.parametrize("kind", [pytest.param("dcp", marks=pytest.mark.slow), "dcp-async"])
def test_kill_after_durable_checkpoint_resumes_bit_exact(tmp_path: Path, kind: str,
                                                         reference_losses) -> None:
    """The seeds' validation: killed after step 10, checkpoint 8 durable, resume from 8."""
    skip_without_core(kind)
    loss, summary = _kill_and_resume(tmp_path, kind, "--fail-at-step", "10",
                                     "--fail-after-durable")
    assert summary["resumed_from"] == 8 and summary["first_step"] == 9
    assert filecmp.cmp(reference_losses(STEPS), loss, shallow=False), \
        f"{loss} differs from the uninterrupted run"


@pytest.mark.parametrize("kind", ISSUE_KINDS)
def test_kill_right_after_issuing_a_checkpoint(tmp_path: Path, kind: str,
                                               reference_losses) -> None:
    """Killed the moment save(8) returns: async kinds may lose 8 and resume from 4."""
    skip_without_core(kind)
    loss, summary = _kill_and_resume(tmp_path, kind, "--fail-at-step", "8")
    assert summary["resumed_from"] in (4, 8)
    if kind in ("torchsave", "dcp"):  # synchronous: durable when save() returns
        assert summary["resumed_from"] == 8
    assert loss_lines(loss) == loss_lines(reference_losses(STEPS))


def test_bf16_resume_is_bit_exact_too(tmp_path: Path, reference_losses) -> None:
    loss, summary = _kill_and_resume(tmp_path, "dcp", "--fail-at-step", "6",
                                     model_flags=("--model-dtype", "bf16"))
    reference = reference_losses(STEPS, "--model-dtype", "bf16")
    assert summary["resumed_from"] == 4
    assert filecmp.cmp(reference, loss, shallow=False)


# torchsave loads as pccheck does; dcp under -m slow: its refusal of another model shape is
# tests/core/test_dcp.py's, of another optimizer or scheduler tests/core/test_load_all_or_nothing.py's
@pytest.mark.parametrize("kind", ["pccheck", pytest.param("dcp", marks=pytest.mark.slow)])
def test_checkpoint_of_another_model_shape_is_refused(tmp_path: Path, kind: str) -> None:
    skip_without_core(kind)
    common = ["--checkpointer", kind, "--training-steps", "4", "--checkpoint-freq", "4",
              "--ckpt-dir", tmp_path / "ckpt"]
    assert train(*common).returncode == 0
    run = train(*common, "--load-checkpoint", "--dim", "96")
    assert run.returncode == 2
    assert "tok_embeddings.weight" in run.stderr, run.stderr
