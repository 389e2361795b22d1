"""benchmarks/bench_save_stall.py runs end to end at a tiny state and accounts for the stall."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_stall_breakdown_of_a_small_state(tmp_path):
    out = tmp_path / "stall.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_save_stall.py"), "--state-mb", "4", "--saves", "4",
           "--dir", str(tmp_path), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    m = doc["median_s"]
    assert doc["schema"] == "ckptlab.save_stall/1" and doc["saves"] == 2 and doc["tensors"] > 10
    assert 0 < m["lift_tensors"] <= m["save()"], m  # a part never exceeds the whole
    parts = ("model.state_dict()", "optimizer.state_dict()", "RNG state_dict()", "normalise tensors")
    assert all(m[p] > 0 for p in parts) and sum(m[p] for p in parts) <= m["lift_tensors"], m
    assert m["pickle skeleton"] == 0, m  # the training state is frozen: the snapshot thread pickles it
    assert m["Snapshotter.take"] > 0
    assert [n for n in os.listdir(tmp_path) if n != "stall.json"] == [], "checkpoints left behind"
