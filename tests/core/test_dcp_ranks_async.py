"""``dcp-async`` across the ranks of a gloo world (core/dcp_ranks_async.py, docs/DISTRIBUTED.md
"DCP across ranks"): DCP's staging in save(), its collective write and ckptlab's commit on one
background thread per rank, acknowledged on every rank only after rank 0 published."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dcp_async_worker  # noqa: E402  (the ranks' code; spawn re-imports it from sys.path)

STEPS = [f"step_{s:012d}" for s in range(8)]


@pytest.mark.slow
def test_dcp_async_across_two_ranks_saves_commits_fails_and_loads(tmp_path):
    directory, out = str(tmp_path / "ckpt"), str(tmp_path / "out")
    os.makedirs(out)
    mp.spawn(dcp_async_worker.main, args=(2, str(tmp_path / "init"), directory, out), nprocs=2, join=True)
    ranks = [json.load(open(os.path.join(out, f"dcp_async_rank{r}.json"))) for r in range(2)]
    for rank, r in enumerate(ranks):
        assert r["kind"] == "dcp-async"
        assert max(r["inflight"]) <= 2  # max_inflight
        assert r["wait"] is True and r["after_wait"] == STEPS[1:5]
        # one rank's failure fails step 5 on every rank, named, and keeps step 4
        assert "step 5" in r["step5_error"] and "rank 1" in r["step5_error"], r["step5_error"]
        assert "No space left on device" in r["step5_error"]
        assert r["after_failure"] == STEPS[1:5]
        # rank 0's publish held: save() returned, wait() did not acknowledge on either rank
        assert r["held_wait"] is False and r["held_published"] == STEPS[1:5]
        assert r["released_wait"] is True and r["released_published"] == STEPS[1:5] + STEPS[6:8]
        assert {"trainer_state.pt", "trainer_state.rank1.pt", ".metadata"} <= set(r["side_files"])
        assert r["loaded_step"] == 7 and r["loaded_data"] == {"rank": rank, "position": 7}
        assert r["bit_exact"] is True and r["bit_exact_4"] == [4, True]
        assert r["committed"] == 6
