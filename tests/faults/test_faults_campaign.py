"""The short campaign (every tier but training) passes; trials are reproducible by id."""
import argparse
import io
import os
import shutil

import pyarrow.parquet as pq
import pytest
from ckptlab.faults import campaign, tiers
from ckptlab.faults.cli import add_parser, run


@pytest.fixture(scope="module")
def short_result(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("campaign"))
    # realfs (root, loop mounts) and multirank (gloo worlds) have their own tests
    # (test_faults_realfs.py, test_faults_multirank.py)
    opts = campaign.Options(tiers=tuple(t for t in tiers.TIERS if t not in ("training", "realfs", "multirank")),
                            short=True, seed=3, jobs=2,
                            out=out, progress=False)
    return campaign.run(opts), opts


def test_short_campaign_has_no_violations(short_result):
    result, opts = short_result
    buf = io.StringIO()
    campaign.print_summary(result, opts, file=buf)
    assert result.violations == 0 and result.errors == 0, buf.getvalue()
    assert result.exit_code == 0
    by = result.by_tier()
    for tier in ("points", "ioerr", "powerloss", "bitrot", "random"):
        assert by[tier]["trials"] > 0
    # The deterministic tiers always reach their fault; the replay checked many states.
    assert by["points"]["not_fired"] == 0 and by["ioerr"]["not_fired"] == 0
    assert by["powerloss"]["checks"] > 100
    assert by["random"]["fired"] > 0
    if "enospc" not in result.skipped:
        assert by["enospc"]["fired"] == by["enospc"]["trials"]
    # A few torchsave trials in each process-crash and replay tier, all reaching their fault.
    ts = result.by_tier("torchsave")
    assert set(ts) == {"points", "random", "ioerr", "powerloss"}
    assert ts["points"]["fired"] == ts["points"]["trials"] >= 2 and ts["ioerr"]["not_fired"] == 0
    assert ts["powerloss"]["checks"] > 30
    for tier in by:
        assert tier in buf.getvalue()


def test_results_are_written(short_result):
    result, opts = short_result
    table = pq.read_table(os.path.join(opts.out, "results.parquet"))
    assert table.num_rows == len(result.rows)
    rows = table.to_pylist()
    assert {"tier", "trial", "writer", "seed", "outcome", "violations", "repro"} <= set(rows[0])
    assert {r["writer"] for r in rows} == {"pccheck", "torchsave"}
    assert all(r["repro"].startswith("ckptlab campaign --seed 3") for r in rows)
    assert os.path.exists(os.path.join(opts.out, "summary.json"))


def test_trials_are_deterministic_and_selectable():
    opts = campaign.Options(tiers=("points", "random", "bitrot", "powerloss", "ioerr"), short=True, seed=9)
    a, _ = campaign.generate(opts)
    b, _ = campaign.generate(opts)
    assert a == b
    assert campaign.generate(campaign.Options(tiers=opts.tiers, short=True, seed=10))[0] != a
    pick = a[5]["id"]
    only, _ = campaign.generate(campaign.Options(tiers=opts.tiers, short=True, seed=9, trial=(pick,)))
    assert only == [a[5]]
    with pytest.raises(ValueError, match="no such trial"):
        campaign.generate(campaign.Options(tiers=("points",), short=True, seed=9, trial=("points:9999",)))


def test_one_trial_reruns_from_its_id(tmp_path):
    opts = campaign.Options(tiers=("points",), short=True, seed=3, jobs=1, out=str(tmp_path), trial=("points:4",),
                            progress=False)
    r = campaign.run(opts)
    assert [row["trial"] for row in r.rows] == ["points:4"] and r.exit_code == 0


def test_cli_registration(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="ckptlab")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["campaign", "--tiers", "bitrot", "--short", "--list", "--seed", "2"])
    assert args.func is run
    assert run(args) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 60 and listed[0].startswith("bitrot:0 ")
    with pytest.raises(SystemExit):
        parser.parse_args(["campaign", "--tiers", "nosuchtier"])


def test_enospc_skips_with_a_reason(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    trials, skipped = campaign.generate(campaign.Options(tiers=("enospc",), short=True))
    assert trials == [] and "unshare" in skipped["enospc"]


@pytest.mark.slow
def test_training_tier(tmp_path):
    ok, why = tiers.REGISTRY["training"].available()
    if not ok:
        pytest.skip(why)
    opts = campaign.Options(tiers=("training",), seed=1, jobs=2, out=str(tmp_path), progress=False, trials=150)
    r = campaign.run(opts)
    assert r.rows and r.violations == 0 and r.errors == 0, [x["detail"] for x in r.rows]
