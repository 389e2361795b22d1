"""Multi-rank checkpoints over torch.distributed (core/distributed.py, docs/DISTRIBUTED.md):
real worlds of CPU processes on gloo, started with torch.multiprocessing and torchrun."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from ckptlab.core import CheckpointError, load_global

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dist_worker  # noqa: E402  (the ranks' code; spawn re-imports it from sys.path)


def results(out, name: str, world: int) -> list[dict]:
    return [json.load(open(os.path.join(out, f"{name}_rank{r}.json"))) for r in range(world)]


@pytest.fixture(scope="module")
def main_world(tmp_path_factory):
    """One 2-rank world runs every in-world scenario (a world costs seconds to start)."""
    base = tmp_path_factory.mktemp("dist")
    directory, out = str(base / "ckpt"), str(base / "out")
    os.makedirs(out)
    mp.spawn(dist_worker.main_world_main, args=(2, str(base / "init"), directory, out), nprocs=2, join=True)
    return directory, results(out, "main", 2)


def test_world_round_trip_on_two_ranks(main_world):
    _, ranks = main_world
    for rank, r in enumerate(ranks):
        assert r["type"] == "DistributedCheckpointer"
        assert r["loaded_step"] == 3 and r["latest"] == 3
        assert r["loaded_params_equal"] and r["loaded_optim_equal"]
        assert r["loaded_rng_prefix"] == r["rng3"], "per-rank RNG comes back from the rank's own part"
        assert r["loaded_data"] == {"rank": rank, "position": 30 + rank}
    assert ranks[0]["rng3"] != ranks[1]["rng3"]


def test_a_collective_load_reads_every_chunk_of_every_part_once(main_world):
    """The read is the verification: no separate verify pass over a rank's share of the parts
    (each rank used to read (1 + 1/world) x the checkpoint)."""
    _, ranks = main_world
    for r in ranks:
        assert sorted(r["load_chunk_reads"]) == sorted(r["part_chunks"]) and r["part_chunks"]
        assert set(r["load_chunk_reads"].values()) == {1}, r["load_chunk_reads"]


def test_load_global_reads_every_chunk_of_every_part_once(main_world):
    directory, _ = main_world
    (step, _), reads = dist_worker.chunk_reads(lambda: load_global(directory, per_rank_of=0))
    assert sorted(reads) == sorted(dist_worker.part_chunks(directory, step, 2))
    assert set(reads.values()) == {1}, reads


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_load_global_onto_cuda_without_a_gpu_is_a_clear_error(main_world):
    directory, _ = main_world
    with pytest.raises(CheckpointError, match="no usable CUDA device"):
        load_global(directory, per_rank_of=0, map_location="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_global_onto_cuda_reads_through_pinned_batches(main_world, monkeypatch):
    """Onto the GPU every part goes through the pinned batched path (H2D overlapped with the
    next batch's read), not to the host and then over: same values, on the device."""
    from ckptlab.core import recovery

    directory, _ = main_world
    staged = []
    real = recovery.read_into

    def recording(path, m, targets, threads, buffer_bytes):
        stats = real(path, m, targets, threads, buffer_bytes)
        staged.append((path, stats.staged_bytes, stats.copied_bytes))
        return stats

    monkeypatch.setattr(recovery, "read_into", recording)
    step, on_gpu = load_global(directory, per_rank_of=0, map_location="cuda", load_buffer_bytes=1 << 20)
    monkeypatch.undo()
    _, on_cpu = load_global(directory, per_rank_of=0)
    assert len(staged) == 2 and all(s > 0 and c > 0 for _, s, c in staged), staged
    assert all(s <= 1 << 20 for _, s, _ in staged)  # two slots of half the buffer
    for k, v in on_cpu["model"].items():
        assert on_gpu["model"][k].is_cuda and torch.equal(on_gpu["model"][k].cpu(), v), k


def test_replicated_bytes_are_split_across_ranks(main_world):
    _, ranks = main_world
    replicated = ranks[0]["replicated_bytes"]
    parts = [r["part_bytes"] for r in ranks]
    assert sum(parts) == replicated, f"parts {parts} do not hold exactly one copy of {replicated} bytes"
    for p in parts:
        assert 0.4 * replicated < p < 0.6 * replicated, f"parts {parts} of {replicated}: not ~1/2 each"


def test_mismatched_steps_fail_on_every_rank(main_world):
    _, ranks = main_world
    for r in ranks:
        assert r["mismatch_error"] and "different steps" in r["mismatch_error"]
        assert "rank 0 step 4" in r["mismatch_error"] and "rank 1 step 5" in r["mismatch_error"]
    assert ranks[0]["records_after_mismatch"] == [f"step_{s:012d}.json" for s in (1, 2, 3)]


def test_corrupt_part_on_one_rank_makes_all_fall_back(main_world):
    _, ranks = main_world
    for r in ranks:
        assert r["latest_after_corruption"] == 2 and r["load_after_corruption"] == 2
        assert any("rank 1's part" in w and "step_000000000003" in w for w in r["corruption_warnings"]), \
            r["corruption_warnings"]
    assert [r["loaded_data_after_corruption"]["position"] for r in ranks] == [20, 21]


def test_resaving_a_step_commits_the_new_parts_not_the_old_ones(main_world):
    _, ranks = main_world
    for r in ranks:
        assert r["resaved_step"] == 3 and r["resave_warnings"] == [], r["resave_warnings"]


def test_retention_keeps_the_newest_globally_committed_steps(main_world):
    _, ranks = main_world
    for r in ranks:
        assert r["records_after_retention"] == ["step_000000000030.json", "step_000000000031.json"]
        assert r["parts_after_retention"] == [".ckptlab.lock", "step_000000000030", "step_000000000031"]
    assert not ranks[0]["leftover_after_open"], "a crashed record write's temp file survived the open"


def test_retention_cleans_the_parts_of_a_larger_earlier_world(main_world):
    """Ranks 2 and 3 of an earlier world of 4 belong to no rank of this world of 2: rank q % 2
    deletes their parts once no kept record names them, their leftovers, and the directory
    once it is empty; a part newer than every committed step stays."""
    _, ranks = main_world
    lock, s = ".ckptlab.lock", lambda n: f"step_{n:012d}"
    for r in ranks:  # each rank listed after both had retained
        after3, after4 = r["shrunk_after_3"], r["shrunk_after_4"]
        assert after3["0"] == [lock, s(2), s(3)]
        assert after3["2"] == [lock, s(2), s(3), s(9)], "kept: 2 (the 4-rank record), 3 (not older), 9"
        assert after3["3"] == [lock, s(2)], "the 4-rank record of step 2 names part 3; step 1 and the temp dir go"
        assert after4["0"] == [lock, s(3), s(4)]
        assert after4["2"] == [lock, s(9)], "step 3's record is of 2 ranks: part 2 of step 3 was no one's"
        assert after4["3"] is None, "the emptied directory of rank 3 is removed"


def test_per_rank_entries_inside_a_stateful_objects_state_dict_are_each_ranks_own(main_world):
    _, ranks = main_world
    for rank, r in enumerate(ranks):
        assert r["stateful_per_rank_loaded"] == {"position": 100 + rank, "order": [3, 1, 2]}


def test_rank_that_never_saves_is_a_clear_error_not_a_hang(main_world):
    _, ranks = main_world
    error = ranks[0]["absent_error"]
    assert error and "step 20" in error and "coordination_timeout_s" in error, error
    assert "1" in error.split("did not all arrive")[1], f"the missing rank is not named: {error}"
    assert ranks[0]["absent_s"] < 3.0 + 5.0


def test_one_process_loads_a_two_rank_checkpoint(main_world):
    directory, ranks = main_world
    with pytest.raises(CheckpointError, match="saved by 2 ranks.*runs on 1.*per_rank_of"):
        load_global(directory)
    step, loaded = load_global(directory, per_rank_of=1)
    assert step == 31 and loaded["data"] == {"rank": 1, "position": 311}
    assert [p.tolist() for p in loaded["model"].values()] == [p for p in ranks[1]["params31"]]


def test_world_of_one_keeps_the_plain_kind(tmp_path):
    from ckptlab.core import open_checkpointer
    from ckptlab.core.pccheck import PCcheckCheckpointer

    with open_checkpointer("pccheck", tmp_path / "c") as ck:
        assert isinstance(ck, PCcheckCheckpointer)
        ck.save(1, {"t": torch.ones(3)})
    assert sorted(os.listdir(tmp_path / "c")) == [".ckptlab.lock", "step_000000000001"]


@pytest.mark.slow
def test_three_ranks_under_torchrun_load_a_two_rank_checkpoint(main_world, tmp_path):
    directory, _ = main_world
    out = str(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
           os.path.join(HERE, "dist_worker.py"), "load", directory, out]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = results(out, "torchrun", 3)
    for r in ranks:
        assert r["world"] == 3 and r["step"] == 31
        assert "saved by 2 ranks" in r["without_per_rank_of"] and "runs on 3" in r["without_per_rank_of"]
        assert r["data"] == {"rank": 0, "position": 310}
    assert ranks[0]["params"] == ranks[1]["params"] == ranks[2]["params"]


@pytest.mark.slow
def test_sigkill_of_one_rank_mid_checkpoint_then_relaunch(tmp_path):
    directory, out = str(tmp_path / "ckpt"), str(tmp_path / "out")
    os.makedirs(out)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=dist_worker.kill_main, args=(r, 2, str(tmp_path / "init1"), directory, out))
             for r in range(2)]
    for p in procs:
        p.start()
    rank1 = os.path.join(directory, "rank_00001")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the test waits for rank 1 to be inside step 2's write
        if os.path.isdir(rank1) and any(n.startswith(".step_000000000002.tmp-") for n in os.listdir(rank1)):
            break
        time.sleep(0.05)
    else:
        pytest.fail("rank 1 never started writing step 2")
    os.kill(procs[1].pid, signal.SIGKILL)
    procs[0].join(60)
    procs[1].join(10)
    assert procs[0].exitcode == 0 and procs[1].exitcode == -signal.SIGKILL
    (r0,) = results(out, "kill", 1)
    assert r0["error"] and "step 2" in r0["error"] and "last globally committed step (1)" in r0["error"], r0
    assert r0["error_after_s"] < 8.0 + 10.0
    assert sorted(os.listdir(os.path.join(directory, "global"))) == ["step_000000000001.json"]

    mp.spawn(dist_worker.relaunch_main, args=(2, str(tmp_path / "init2"), directory, out), nprocs=2, join=True)
    for rank, r in enumerate(results(out, "relaunch", 2)):
        assert r["latest"] == 1 and r["loaded_step"] == 1 and r["data"] == {"rank": rank, "position": 10 + rank}
