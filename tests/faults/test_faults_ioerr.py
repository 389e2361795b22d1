"""The ioerr tier's persistent trials (a dying disk, ``mode=persist``): generated for both
writers after the one-off ones, run clean, and their oracle check catches each way a
checkpointer could get a dying disk wrong."""
import json

from ckptlab.faults import campaign
from ckptlab.faults.oracle import DiskCheck, History
from ckptlab.faults.tiers import ioerr


def _persist(trials):
    return [t for t in trials if t["p"].get("persist")]


def test_persistent_trials_follow_the_one_off_ones_of_each_writer():
    for short in (True, False):
        trials = ioerr.generate(1, 0, short)
        kinds = [(t["p"].get("writer", "pccheck"), bool(t["p"].get("persist"))) for t in trials]
        engine = [k for k in kinds if k[0] == "pccheck"]
        assert kinds[:len(engine)] == engine  # every engine trial before torchsave's
        assert engine.index((("pccheck", True))) == len([k for k in engine if not k[1]])
        assert all(ioerr.rule_of(t["p"]).endswith(",mode=persist") for t in _persist(trials))
    full = _persist(ioerr.generate(1, 0, False))
    assert {t["p"]["point"] for t in full if "writer" not in t["p"]} == set(ioerr.ERROR_POINTS)
    assert any(t["p"].get("writer") == "torchsave" for t in full)


def _hist(acked, failed, done=True, err=5):
    h = History(sessions=[[10, 20, 30, 40]], done=done)
    h.commits = [(s, True) for s in acked] + [(s, False) for s in failed]
    h.failures = [(s, err, "write") for s in failed]
    return h


def test_dead_disk_checks_catch_every_way_to_get_it_wrong():
    good = _hist([10], [20, 30, 40])
    disk = DiskCheck(loaded_step=10, valid=[10], corrupt={}, violations=[])
    assert ioerr.dead_disk_checks(20, 5, good, disk) == []
    bad = {
        "acknowledged": (_hist([10, 30], [20, 40]), DiskCheck(30, [10, 30], {}, [])),
        "never reported": (_hist([10], [20, 30]), disk),
        "not the dead disk's": (_hist([10], [20, 30, 40], err=28), disk),
        "loader returns": (good, DiskCheck(None, [10], {}, [])),
        "never finished": (_hist([10], [20, 30, 40], done=False), disk),
    }
    for needle, (hist, d) in bad.items():
        v = ioerr.dead_disk_checks(20, 5, hist, d)
        assert any(needle in m for m in v), (needle, v)


def test_the_short_persistent_trial_fails_every_later_checkpoint(tmp_path):
    trial = _persist(ioerr.generate(3, 0, True))[0]
    opts = campaign.Options(tiers=("ioerr",), short=True, seed=3, jobs=1, out=str(tmp_path), trial=(trial["id"],),
                            progress=False)
    r = campaign.run(opts)
    assert r.exit_code == 0 and [row["outcome"] for row in r.rows] == ["ok"], r.rows
    row = r.rows[0]
    injected = sorted({int(i["step"]) for i in json.loads(row["params"])["injected"]})
    # checkpoint 3 (step 30) dies; checkpoint 2 dies too if it was still in flight
    assert row["acked_step"] == row["loaded_step"] and row["acked_step"] in (10, 20)
    assert [s for s in injected if s >= 30] == [30, 40, 41] and min(injected) > row["acked_step"]
