"""The bench's figures from synthetic per-iteration records (training/bench/metrics.py): which
iterations ran while a checkpoint persisted, their inflation, training time lost per checkpoint
against the `none` run of the same round, medians with spread, and the issue's target verdicts."""
from __future__ import annotations

import pytest

from ckptlab.training.bench.metrics import (aggregate, durable_from_save, lost_per_checkpoint, persisting_steps, run_figures,
                                            spread, targets)


def _record(kind="pccheck-deferred", every=4, round_=0, iters=None, ckpt_steps=(4, 8), stalls=(0.01, 0.01),
            durable=(0.25, 0.25), nbytes=1_000_000_000, cold=0.5):
    iters = iters or [1.0] + [0.1] * 11  # steps 1..12; step 1 pays the warm-up
    return {"kind": kind, "every": every, "round": round_, "first_step": 1, "iter_s": list(iters),
            "ckpt_steps": list(ckpt_steps), "stall_s": list(stalls), "time_to_durable_s": list(durable),
            "checkpoint_bytes": nbytes, "cold_load_s": cold, "peak_rss_bytes": 5 << 20, "peak_pinned_bytes": 0}


def test_persisting_steps_follow_the_checkpoint_until_durable():
    # save at step 4 blocks 0.01 s, durable 0.25 s after save(): steps 5, 6, 7 start before that
    assert persisting_steps([1.0] + [0.1] * 11, 1, [4], [0.01], [0.25]) == {5, 6, 7}
    assert persisting_steps([1.0] + [0.1] * 11, 1, [4], [0.3], [0.3]) == set()  # synchronous: none


def test_inflation_is_persisting_iterations_over_the_others():
    iters = [1.0, 0.1, 0.1, 0.1, 0.15, 0.15, 0.15, 0.1, 0.1, 0.1, 0.1, 0.1]
    f = run_figures(_record(iters=iters, ckpt_steps=[4], stalls=[0.01], durable=[0.25]))
    assert f["inflation"] == pytest.approx(0.5)
    assert f["stall_s"] == pytest.approx(0.01)
    assert f["train_s"] == pytest.approx(sum(iters[1:]) + 0.01)  # without the warm-up step
    assert f["durable_s"] == pytest.approx(0.25)
    assert f["durable_gbps"] == pytest.approx(4.0)
    assert f["checkpoints"] == 1
    assert f["lost_in_run_s"] == pytest.approx(0.01 + 3 * 0.05)  # the stall and three slower steps


def test_a_synchronous_kind_is_durable_when_save_returns():
    f = run_figures(_record(kind="torchsave", durable=()))  # torchsave reports no time_to_durable
    assert f["durable_s"] == pytest.approx(0.01) and f["inflation"] is None


def test_stall_leaves_out_the_first_checkpoint_which_allocates_staging():
    f = run_figures(_record(ckpt_steps=(4, 8, 12), stalls=(0.2, 0.001, 0.003), durable=(0.3, 0.1, 0.1)))
    assert f["stall_s"] == pytest.approx(0.002) and f["first_stall_s"] == pytest.approx(0.2)
    assert f["stall_max_s"] == pytest.approx(0.2)


def test_durable_counts_from_the_save_call_not_the_engine_submit():
    rec = _record(ckpt_steps=(4, 8), durable=(0.05, 0.05))  # engine: submit -> durable
    rec["save_called_ns"] = [1_000_000_000, 2_000_000_000]
    rec["commit_done_ns"] = [[8, 2_300_000_000], [4, 1_250_000_000]]  # by step, any order
    assert durable_from_save(rec) == pytest.approx([0.25, 0.3])
    assert run_figures(rec)["durable_s"] == pytest.approx(0.275)
    rec["commit_done_ns"] = [[4, 1_250_000_000]]  # a commit missing: the engine's own figure
    assert durable_from_save(rec) == pytest.approx([0.05, 0.05])


def test_lost_per_checkpoint_is_wall_minus_none_over_checkpoints():
    assert lost_per_checkpoint(12.0, 10.0, 4) == pytest.approx(0.5)
    assert lost_per_checkpoint(9.5, 10.0, 5) == pytest.approx(-0.1)  # noise may make it negative; kept
    with pytest.raises(ValueError, match="no checkpoints"):
        lost_per_checkpoint(12.0, 10.0, 0)


def test_spread_is_median_min_max():
    assert spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    assert spread([]) == {"median": None, "min": None, "max": None, "n": 0}
    assert spread([None, 1.0]) == {"median": 1.0, "min": 1.0, "max": 1.0, "n": 1}


def test_aggregate_pairs_each_run_with_none_of_its_round():
    runs = [_record(kind="none", every=None, ckpt_steps=(), stalls=(), durable=(), round_=r,
                    iters=[1.0] + [0.1] * 11) for r in (0, 1)]
    runs += [_record(kind="torchsave", every=4, round_=r, stalls=(0.5, 0.5), durable=()) for r in (0, 1)]
    results = {(r["kind"], r["every"]): r for r in aggregate(runs)}
    ts = results[("torchsave", 4)]
    assert ts["lost_per_ckpt_s"]["median"] == pytest.approx(0.5)  # 2 x 0.5 s stall over 2 checkpoints
    assert ts["overhead"]["median"] == pytest.approx(1.0 / 1.1)
    assert ts["lost_per_ckpt_s"]["n"] == 2
    assert results[("none", None)]["train_s"]["median"] == pytest.approx(1.1)


def test_aggregate_refuses_a_round_without_its_none_run():
    with pytest.raises(ValueError, match="round 0 has no 'none' run"):
        aggregate([_record(kind="torchsave", stalls=(0.5, 0.5), durable=())])


def _results(deferred_stall=0.0005, deferred_lost=0.01, peer_lost=0.2, deferred_durable=1.0):
    def row(kind, stall, lost, durable):
        return {"kind": kind, "every": 10, "stall_s": spread([stall]), "lost_per_ckpt_s": spread([lost]),
                "durable_s": spread([durable])}
    return [row("pccheck-deferred", deferred_stall, deferred_lost, deferred_durable),
            row("pccheck-sync", 0.2, 0.2, 1.0), row("torchsave", 3.0, peer_lost, 3.0),
            row("dcp", 2.0, 2.0, 2.0)]


def test_targets_met():
    verdicts = {t["name"]: t for t in targets(_results(), raw_write_s=0.9)}
    assert verdicts["deferred-stall"]["met"] and verdicts["deferred-stall"]["figure"] == pytest.approx(0.0005)
    assert verdicts["durable-vs-raw"]["met"] and verdicts["durable-vs-raw"]["figure"] == pytest.approx(1 / 0.9)
    assert verdicts["durable-vs-raw-sync"]["met"]  # reported too, as pccheck-sync was run
    lost = verdicts["lost-below-peers-every-10"]
    assert lost["met"] and lost["peer"] == "torchsave"


def test_targets_missed_say_by_how_much():
    verdicts = {t["name"]: t for t in targets(_results(deferred_stall=0.002, deferred_lost=0.3, deferred_durable=1.3),
                                              raw_write_s=1.0)}
    assert verdicts["deferred-stall"]["met"] is False and verdicts["deferred-stall"]["figure"] == pytest.approx(0.002)
    assert verdicts["durable-vs-raw"]["met"] is False and verdicts["durable-vs-raw"]["figure"] == pytest.approx(1.3)
    assert verdicts["lost-below-peers-every-10"]["met"] is False


def test_targets_not_measured_are_not_met():
    verdicts = {t["name"]: t for t in targets([r for r in _results() if r["kind"] != "pccheck-deferred"],
                                              raw_write_s=None)}
    assert all(t["met"] is None and "not measured" in t["why"] for t in verdicts.values())


def _gpu_results(stall=0.004, inflation=0.004, lost=0.03, durable=2.2, cold=2.0, pinned=2 << 30, every=10):
    def row(kind, **figures):
        return {"kind": kind, "every": None if kind == "none" else every,
                **{k: spread([v]) for k, v in figures.items()}}
    return [row("none", iter_s=0.258),
            row("pccheck-deferred", stall_s=stall, inflation=inflation, lost_per_ckpt_s=lost, durable_s=durable,
                cold_load_s=cold, peak_pinned_bytes=pinned, overhead=lost / (every * 0.258))]


RAW_GPU = {"direct_write_s": spread([2.0]), "read_s": spread([1.9])}


def test_gpu_targets_met_with_figures():
    from ckptlab.training.bench.metrics import gpu_targets

    v = {t["name"]: t for t in gpu_targets(_gpu_results(), RAW_GPU, pinned_budget_bytes=4 << 30)}
    assert all(t["met"] for t in v.values()), [t for t in v.values() if not t["met"]]
    assert v["pccheck-deferred-lost"]["figure"] == pytest.approx(0.03 / 0.258)
    assert v["pccheck-deferred-durable"]["figure"] == pytest.approx(2.0 / 2.2)  # share of O_DIRECT bandwidth
    assert v["pccheck-deferred-cold-load"]["figure"] == pytest.approx(2.0 / 1.9)
    # K=25 and 50 were not run: derived from lost/ckpt, and said so
    assert v["pccheck-deferred-overhead-every-25"]["figure"] == pytest.approx(0.03 / (25 * 0.258))
    assert v["pccheck-deferred-overhead-every-25"]["derived_from_every"] == 10
    assert "pccheck-gpu-stall" not in v  # only modes that ran


def test_gpu_targets_missed_and_unmeasured():
    from ckptlab.training.bench.metrics import gpu_targets
    from ckptlab.training.bench.report import _verdict

    v = {t["name"]: t for t in gpu_targets(_gpu_results(stall=0.05, durable=2.5, lost=0.2, pinned=8 << 30, cold=None),
                                           RAW_GPU, pinned_budget_bytes=4 << 30)}
    for name in ("stall", "durable", "lost", "pinned", "overhead-every-50"):
        assert v[f"pccheck-deferred-{name}"]["met"] is False, name
    assert v["pccheck-deferred-cold-load"]["met"] is None
    assert _verdict(v["pccheck-deferred-stall"]).endswith("MISSED: 50.00 ms against 10.00 ms")
    assert "80 % against 90 %" in _verdict(v["pccheck-deferred-durable"])
    assert "(derived from lost/ckpt at every 10)" in _verdict(v["pccheck-deferred-overhead-every-25"])
