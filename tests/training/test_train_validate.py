"""The seeds' validation driver: two uninterrupted runs + one killed and resumed, compared.

CI runs it shortened on the tiny preset; ``-m slow`` runs the full 150 steps (make validate).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptlab.training.validate import (ValidationPlan, ValidationReport, _compare, main,
                                      run_validation)
from training_helpers import skip_without_core


# All under -m slow: make test runs this driver through test_train_demo.py (pccheck, killed
# mid-write); each kind's SIGKILL-and-resume is test_train_resume.py's.
@pytest.mark.parametrize("kind, extra", [pytest.param("torchsave", [], marks=pytest.mark.slow),
                                         pytest.param("pccheck", [], marks=pytest.mark.slow),
                                         # deferred: also killed mid-write in test_train_kill_during_write
                                         pytest.param("pccheck", ["--", "--snapshot", "deferred"],
                                                      marks=pytest.mark.slow)])
def test_validation_in_ci(tmp_path: Path, kind: str, extra: list[str]) -> None:
    skip_without_core(kind)
    code = main(["--checkpointer", kind, "--steps", "12", "--freq", "4", "--kill-after", "8",
                 "--out", str(tmp_path), *extra])
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert code == 0, verdict
    assert verdict["passed"] and verdict["resumed_from"] == 8
    assert (tmp_path / "losses.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # the same run as test_train_demo.py's (demo = validate --kill-during-write + figures)
def test_validation_kill_during_write(tmp_path: Path) -> None:
    skip_without_core("pccheck")
    code = main(["--checkpointer", "pccheck", "--steps", "12", "--freq", "4", "--kill-after",
                 "8", "--kill-during-write", "--out", str(tmp_path)])
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert code == 0, verdict
    assert verdict["resumed_from"] == 4


@pytest.mark.slow  # dcp's SIGKILL-and-resume in make test: test_train_resume.py
def test_validation_with_dcp(tmp_path: Path) -> None:
    plan = ValidationPlan("dcp", tmp_path, steps=6, freq=2, kill_after=4)
    report = run_validation(plan)
    assert report.passed, report
    assert report.after_crash == ["step_000000000002", "step_000000000004"]


def _write_losses(out: Path, lines: list[str]) -> None:
    for run in "abc":
        (out / f"loss-{run}.txt").write_text("\n".join(lines) + "\n")


LOSSES = [f"{step} {5.5 - step / 7:.15f}" for step in range(1, 7)]


def test_identical_loss_files_pass_the_comparison(tmp_path: Path) -> None:
    plan = ValidationPlan("dcp", tmp_path, steps=6, freq=2, kill_after=4)
    _write_losses(tmp_path, LOSSES)
    report = ValidationReport(plan={})
    _compare(plan, report)
    assert report.passed and not report.mismatches and not report.problems, report
    assert (tmp_path / "losses.png").read_bytes()[:4] == b"\x89PNG"


def test_one_flipped_last_digit_fails_the_comparison_naming_its_line(tmp_path: Path) -> None:
    plan = ValidationPlan("dcp", tmp_path, steps=6, freq=2, kill_after=4)
    _write_losses(tmp_path, LOSSES)
    tampered = list(LOSSES)
    step, value = tampered[4].split()
    tampered[4] = f"{step} {value[:-1]}{(int(value[-1]) + 1) % 10}"
    (tmp_path / "loss-c.txt").write_text("\n".join(tampered) + "\n")
    report = ValidationReport(plan={})
    _compare(plan, report)
    assert not report.passed and "line 5" in report.mismatches["a-vs-c"]
    assert "a-vs-b" not in report.mismatches


def test_a_missing_or_short_loss_file_fails_the_comparison(tmp_path: Path) -> None:
    plan = ValidationPlan("dcp", tmp_path, steps=6, freq=2, kill_after=4)
    _write_losses(tmp_path, LOSSES[:5])
    short = ValidationReport(plan={})
    _compare(plan, short)
    assert not short.passed and any("has 5 lines, expected 6" in p for p in short.problems), short
    (tmp_path / "loss-b.txt").unlink()
    missing = ValidationReport(plan={})
    _compare(plan, missing)
    assert not missing.passed and "missing loss files" in missing.problems[0]


@pytest.mark.parametrize("bad", [dict(kill_after=150), dict(checkpointer="none"),
                                 dict(kill_during_write=True, checkpointer="dcp"),
                                 dict(kill_during_write=True, kill_after=55), dict(preset="bogus")])
def test_bad_plans_are_refused(tmp_path: Path, bad: dict) -> None:
    kwargs = dict(checkpointer="pccheck", out=tmp_path) | bad
    with pytest.raises(ValueError):
        ValidationPlan(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torchsave", "pccheck", "dcp", "dcp-async"])
def test_full_seed_validation(tmp_path: Path, kind: str) -> None:
    """make validate: 150 steps, checkpoint every 50, SIGKILL after step 50."""
    skip_without_core(kind)
    assert main(["--checkpointer", kind, "--steps", "150", "--freq", "50", "--kill-after", "50",
                 "--out", str(tmp_path)]) == 0


def test_a_new_validation_removes_only_the_previous_ones_results(tmp_path: Path) -> None:
    from ckptlab.training.validate import _remove_previous_results

    for d in ("ckpt-a", "ckpt-c"):
        (tmp_path / d / "step_000000000050").mkdir(parents=True)
    for f in ("loss-a.txt", "summary-b.json", "trace-a.arrow", "run-c-killed.log", "timeline-a-step30.png",
              "losses.png", "verdict.json", "notes.md", "loss-a.txt.bak"):
        (tmp_path / f).write_text("x")
    (tmp_path / "mine").mkdir()
    _remove_previous_results(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss-a.txt.bak", "mine", "notes.md"]
