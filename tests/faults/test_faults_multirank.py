"""The multirank campaign tier (faults/tiers/multirank.py): gloo worlds of saver children,
one rank killed at each coordinator fault point, every rank's I/O log replayed into power-loss
states; zero violations, and teeth: a coordinator that acknowledges before the global record is
durable, or writes the record without its fsync, is caught."""
import errno
import json
import os

import pytest
from ckptlab import _engine
from ckptlab.core import fault_spec
from ckptlab.core import global_commit as gc
from ckptlab.core.writer_io import WriterIO
from ckptlab.faults import campaign, coverage
from ckptlab.faults.iolog import read_io_log
from ckptlab.faults.tiers import multirank

RECORD = gc.GlobalRecord(7, 2, (gc.PartIdentity(0, 1, 2), gc.PartIdentity(1, 3, 4)), (0, 1))


def _ids(kind: str, point: str | None = None) -> tuple[str, ...]:
    trials = multirank.generate(1, 1, True)
    return tuple(t["id"] for t in trials if t["p"]["kind"] == kind and point in (None, t["p"].get("point")))


def _run(tmp_path, trial=(), unsafe=(), **changes) -> campaign.Result:
    opts = campaign.Options(tiers=("multirank",), short=True, seed=1, jobs=1, out=str(tmp_path / "out"),
                            trial=tuple(trial), unsafe=tuple(unsafe), progress=False, **changes)
    return campaign.run(opts)


# --- the coordinator's fault points (in-process, no world) ---------------------------------

def test_coordinator_points_are_named_by_the_engine_apart_from_the_writers():
    points = fault_spec.coordinator_points()
    assert points == list(_engine.coordinator_fault_points())
    assert points[0] == "after_part_durable" and points[-1] == "during_global_gc" and len(points) == 8
    assert not set(points) & set(fault_spec.fault_points())  # the writer tiers never wait for them
    assert set(fault_spec.COORDINATOR_ERROR_POINTS) <= set(points)
    for p in points:
        fault_spec.validate(f"point={p},ckpt=2,action=kill")


@pytest.mark.parametrize("point", list(fault_spec.COORDINATOR_ERROR_POINTS))
def test_an_error_inside_the_record_write_fails_it_and_leaves_no_record(point, tmp_path):
    io = WriterIO(faults=f"point={point},action=eio")
    with pytest.raises(OSError) as e:
        gc.write_record(str(tmp_path), RECORD, io.checkpoint(RECORD.step))
    assert e.value.errno == errno.EIO
    names = os.listdir(tmp_path / gc.GLOBAL_DIR)
    if point == "before_record_dir_fsync":  # renamed already: durable only after the dir fsync
        assert names == [gc.record_name(7)]
    else:
        assert names == []  # the temp file is removed, nothing committed


def test_the_record_write_is_in_the_io_log_with_its_points(tmp_path):
    log = str(tmp_path / "io.log")
    io = WriterIO(io_log=log)
    gc.write_record(str(tmp_path / "ck"), RECORD, io.checkpoint(RECORD.step))
    gc.delete_record(str(tmp_path / "ck"), RECORD.step, io.checkpoint(8))
    io.close()
    recs = read_io_log(log)
    ops = [(r.op, os.path.basename(r.path)) for r in recs if not r.is_mark and "/global" in r.path]
    final = gc.record_name(7)
    assert [o for o, _ in ops] == ["mkdir", "create", "write", "fsync", "rename", "fsync_dir", "unlink", "fsync_dir"]
    assert ops[4][1].startswith(f".{final}.tmp-") and [r for r in recs if r.op == "rename"][0].path2.endswith(final)
    assert ("fsync_dir", "ck") in [(r.op, os.path.basename(r.path)) for r in recs]  # the new global/ entry
    points = [r.detail()["point"] for r in recs if r.is_mark and r.path == "point"]
    assert points == ["before_record_fsync", "before_record_rename", "before_record_dir_fsync"]


# --- the tier ------------------------------------------------------------------------------

def test_short_multirank_tier_has_no_violations(tmp_path):
    """Kills at coordinator points on either rank and at an engine point inside a part, an
    I/O error inside the record's write, a power-loss replay of both ranks' logs."""
    result = _run(tmp_path)
    rows = result.rows
    assert result.violations == 0 and result.errors == 0, [r["detail"] for r in rows if r["detail"]]
    assert {r["outcome"] for r in rows} == {"ok"} and all(r["fired"] for r in rows)
    kills = [r for r in rows if json.loads(r["params"])["kind"] == "kill"]
    assert len(kills) == 4 and all(r["loaded_step"] is not None and r["loaded_step"] >= r["acked_step"] for r in kills)
    [replay] = [r for r in rows if json.loads(r["params"])["kind"] == "powerloss"]
    assert replay["checks"] == multirank.STATE_CAP["short"]
    with open(tmp_path / "out" / "summary.json") as f:
        cells = {(c["point"], c["action"]) for c in json.load(f)["coverage"] if c["trials"]}
    assert ("before_record_rename", "kill") in cells and (coverage.CRASH_STATES, "power cut") in cells


def test_acknowledging_before_the_record_is_durable_is_caught_by_a_kill(tmp_path):
    """early_ack: rank 0 broadcasts success and writes the record later; killed inside that
    write, rank 1 has acknowledged a step the relaunched world cannot load."""
    result = _run(tmp_path, _ids("kill", "before_record_rename"), ("early_ack",))
    assert result.violations > 0 and result.exit_code == 1
    assert "acknowledged" in result.rows[0]["detail"]


def test_a_record_without_its_fsync_is_caught_by_the_replay_only(tmp_path):
    """skip_record_fsync: SIGKILL keeps the page cache, so the kills pass; a power cut after
    the record's rename leaves an empty record for an acknowledged step."""
    caught = _run(tmp_path / "a", _ids("powerloss"), ("skip_record_fsync",), max_violations=1)
    assert caught.violations > 0 and "global record of step" in caught.rows[0]["detail"]
    passed = _run(tmp_path / "b", _ids("kill", "before_record_rename"), ("skip_record_fsync",))
    assert passed.violations == 0 and passed.rows[0]["outcome"] == "ok"


def test_other_tiers_skip_coordinator_mutations_and_multirank_skips_the_engines(tmp_path):
    opts = campaign.Options(tiers=("points", "multirank"), short=True, seed=1, jobs=1, out=str(tmp_path),
                            trial=("points:0", _ids("kill")[0]), unsafe=("early_ack",), progress=False)
    rows = campaign.run(opts).rows
    assert [r["outcome"] for r in rows if r["tier"] == "points"] == ["skipped"]
    opts = campaign.Options(tiers=("multirank",), short=True, seed=1, jobs=1, out=str(tmp_path),
                            trial=_ids("kill")[:1], unsafe=("skip_dir_fsync",), progress=False)
    [r] = campaign.run(opts).rows
    assert r["outcome"] == "skipped" and "skip_dir_fsync" in r["detail"]


def test_sizes_and_coverage_of_the_tier():
    short = multirank.generate(1, campaign.SCALE["multirank"][0], True)
    default = multirank.generate(1, campaign.SCALE["multirank"][1], False)
    full = multirank.generate(1, campaign.SCALE["multirank"][2], False)
    assert len(short) < len(default) < len(full)
    assert {t["p"]["world"] for t in default} == {2} and {t["p"]["world"] for t in full} == {2, 3}
    grid = coverage.expected(["multirank"])
    for trials in (default, full):
        counts = coverage.count(trials)
        assert [c for c, why in grid.items() if why is None and not counts[c]] == []
        assert [c for c, why in grid.items() if why and counts[c]] == []


@pytest.mark.slow
def test_default_multirank_tier_has_no_violations(tmp_path):
    opts = campaign.Options(tiers=("multirank",), seed=1, jobs=2, out=str(tmp_path), progress=False)
    result = campaign.run(opts)
    assert result.violations == 0 and result.errors == 0, [r["detail"] for r in result.rows if r["detail"]]
    assert all(r["fired"] for r in result.rows)


@pytest.mark.slow
def test_three_rank_kills_have_no_violations(tmp_path):
    trials = multirank.generate(1, campaign.SCALE["multirank"][2], False)
    picked = tuple(t["id"] for t in trials if t["p"]["world"] == 3 and t["p"]["kind"] in ("kill", "powerloss")
                   and t["p"].get("rank", 0) in (0, 1) and t["p"].get("point") in (None, "after_gather",
                                                                                   "before_record_fsync",
                                                                                   "before_global_ack", "after_commit"))
    opts = campaign.Options(tiers=("multirank",), full=True, seed=1, jobs=2, out=str(tmp_path), trial=picked,
                            progress=False)
    result = campaign.run(opts)
    assert len(result.rows) == len(picked) >= 6
    assert result.violations == 0 and result.errors == 0, [r["detail"] for r in result.rows if r["detail"]]
