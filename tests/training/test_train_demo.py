"""`make demo` (ckptlab.training.demo), shortened: killed mid-checkpoint, resumed bit-exact, and
the outputs it names exist (loss plot, traces, the timeline PNG of the lost checkpoint)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ckptlab.training.demo import main
from training_helpers import skip_without_core


def test_demo_tells_the_whole_story(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    skip_without_core("pccheck")
    code = main(["--out", str(tmp_path), "--steps", "16", "--freq", "4", "--kill-at", "8"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "run C killed inside the engine while persisting step 8, resumed from step 4" in out
    assert re.search(r"held: .*\.step_0+8\.tmp-", out), "the interrupted checkpoint's temp dir is on disk"
    timeline = tmp_path / "timeline-a-step8.png"
    assert f"timeline of run A's checkpoint at step 8: {timeline}" in out
    assert timeline.read_bytes()[:4] == b"\x89PNG"
    assert out.rstrip().endswith("PASS: the three loss files are identical to the last bit")
