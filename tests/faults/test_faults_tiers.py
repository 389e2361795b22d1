"""faults/tiers/: the registry the campaign runs, and the shared plumbing of common.py."""
import os

import pytest
from ckptlab.faults import tiers
from ckptlab.faults.coverage import is_stream
from ckptlab.faults.tiers import random_time
from ckptlab.faults.tiers.common import made_once, trial_seed


def test_registry_names_every_tier_in_campaign_order():
    # The names and their order are the CLI's (--tiers, tables, result order).
    assert tiers.TIERS == ("points", "random", "ioerr", "powerloss", "bitrot", "enospc", "realfs", "training",
                           "multirank")
    for name, tier in tiers.REGISTRY.items():
        trials = tier.generate(4, 3, True)
        assert trials == tier.generate(4, 3, True), f"{name} is not deterministic"
        assert [t["id"] for t in trials] == [f"{name}:{i}" for i in range(len(trials))]
        assert all(t["tier"] == name and t["seed"] == trial_seed(4, name, i) for i, t in enumerate(trials))
        ok, why = tier.available()
        assert ok or why, f"{name} unavailable without a reason"
    assert len(tiers.REGISTRY["random"].generate(4, 3, True)) == 3 + random_time.torchsave_count(3)


def test_torchsave_trials_follow_the_engines():
    """Torchsave trials are numbered after the engine's, whose ids and parameters they leave
    alone; the engine-stream trials (added later) come last, leaving both alone."""
    for name in ("points", "random", "ioerr", "powerloss"):
        for short in (True, False):
            trials = tiers.REGISTRY[name].generate(4, 16, short)
            kinds = [("stream" if is_stream(t["p"]) else t["p"].get("writer", "pccheck")) for t in trials]
            assert "torchsave" in kinds, name
            first = kinds.index("torchsave")
            last = kinds.index("stream") if "stream" in kinds else len(kinds)
            assert set(kinds[:first]) == {"pccheck"} and set(kinds[first:last]) == {"torchsave"}, name
            assert set(kinds[last:]) <= {"stream"}, name
    assert any(is_stream(t["p"]) for t in tiers.REGISTRY["points"].generate(4, 0, True))
    assert any(is_stream(t["p"]) for t in tiers.REGISTRY["powerloss"].generate(4, 16, True))
    assert len(tiers.REGISTRY["points"].generate(4, 0, True)) < len(tiers.REGISTRY["points"].generate(4, 0, False))


def test_made_once_builds_once(tmp_path):
    path = str(tmp_path / "cache" / "x.json")
    calls = []

    def make(tmp):
        calls.append(tmp)
        with open(tmp, "w") as f:
            f.write("1")

    assert made_once(path, make) == path and made_once(path, make) == path
    assert len(calls) == 1 and open(path).read() == "1"
    assert os.listdir(tmp_path / "cache") == ["x.json"]


def test_made_once_leaves_nothing_when_making_fails(tmp_path):
    path = str(tmp_path / "base")

    def make(tmp):
        os.makedirs(tmp)
        raise RuntimeError("base run failed")

    with pytest.raises(RuntimeError, match="base run failed"):
        made_once(path, make)
    assert os.listdir(tmp_path) == []


def test_made_once_loses_a_race_to_another_worker(tmp_path):
    path = str(tmp_path / "base")

    def make(tmp):  # another worker publishes its directory while this one builds
        os.makedirs(os.path.join(path, "theirs"))
        os.makedirs(os.path.join(tmp, "ours"))

    assert made_once(path, make) == path
    assert os.listdir(tmp_path) == ["base"] and os.listdir(path) == ["theirs"]
