"""benchmarks/bench_distributed.py runs end to end at a tiny size (worlds of 1 and 2 ranks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_bench_distributed_splits_the_bytes_and_writes_its_results(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_distributed.py"), "--size-mb", "4",
           "--ranks", "1,2", "--repeats", "1", "--dir", str(tmp_path), "--out", str(tmp_path / "results")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "raw disk" in proc.stdout and "vs 1 rank" in proc.stdout
    result = json.load(open(tmp_path / "results" / "bench_distributed_4mb.json"))
    one, two = result["worlds"]
    assert one["ranks"] == 1 and two["ranks"] == 2
    total = result["size_bytes"]
    assert total <= one["part_bytes"][0] < 1.05 * total
    for share in two["share_of_total"]:
        assert 0.45 < share < 0.55, two["share_of_total"]
    assert all(s > 0 for s in two["durable_s"]) and result["raw_disk"]["durable_s"]
    assert [n for n in os.listdir(tmp_path) if n.startswith("bench_dist_")] == [], "checkpoints left behind"
