"""core/tuning.py: the PCcheck §3.4 rule on synthetic bandwidths, with outputs computed by hand
(docs/PERFORMANCE.md, "The tuning rule")."""
import pytest

from ckptlab.core.storage_probe import StorageProfile, WriteMeasurement
from ckptlab.core.tuning import TuningInputs, recommend

GiB, MiB = 1 << 30, 1 << 20
INSTANT = 1e21  # a host copy so fast that the stall is nothing: the storage alone sets K


def profile(writes: dict[tuple[str, int], float], copy_bps: float = INSTANT, d2h_bps: float | None = None):
    """A profile whose probe wrote 1 GiB at the given bytes/s per (io_mode, threads)."""
    return StorageProfile(directory="/x", probe_bytes=GiB, chunk_bytes=16 * MiB,
                          writes=tuple(WriteMeasurement(m, n, GiB, GiB / bps) for (m, n), bps in writes.items()),
                          read_s=1.0, read_resident=0.0, copy_s=GiB / copy_bps,
                          d2h_s=None if d2h_bps is None else GiB / d2h_bps, direct_note="")


def test_a_disk_slower_than_state_per_iteration_gives_a_longer_interval():
    # m / t = 1 GiB / 0.1 s = 10 GiB/s. A 1 GiB/s disk: K >= m / (W q t) = 10 / 1.01 = 9.9 -> 10.
    slow = recommend(TuningInputs(state_bytes=GiB, iteration_s=0.1, budget=0.01, staging_budget_bytes=4 * GiB),
                     profile({("direct", 1): 1 * GiB}))
    assert slow.interval_steps == 10 and slow.bound == "storage"
    assert slow.interval_s == pytest.approx(1.0)
    assert slow.time_to_durable_s == pytest.approx(1.0)
    # A 20 GiB/s disk keeps up with a checkpoint every step: 0.5 / 1.01 -> 1.
    fast = recommend(TuningInputs(state_bytes=GiB, iteration_s=0.1, budget=0.01, staging_budget_bytes=4 * GiB),
                     profile({("direct", 1): 20 * GiB}))
    assert fast.interval_steps == 1


def test_the_stall_sets_the_interval_when_it_costs_more_than_the_budget():
    # Host copy 20 GiB/s: stall 0.05 s per checkpoint; budget 1 % of 0.1 s -> K >= 0.05 / 0.001 = 50.
    rec = recommend(TuningInputs(state_bytes=GiB, iteration_s=0.1, budget=0.01, staging_budget_bytes=4 * GiB),
                    profile({("direct", 1): 2 * GiB}, copy_bps=20 * GiB))
    assert rec.stall_s == pytest.approx(0.05)
    assert rec.interval_steps == 50 and rec.bound == "stall"
    # A 5 % budget allows K = 10, still above the storage's ceil(0.5 / 1.01 / 0.1) = 5.
    rec = recommend(TuningInputs(state_bytes=GiB, iteration_s=0.1, budget=0.05, staging_budget_bytes=4 * GiB),
                    profile({("direct", 1): 2 * GiB}, copy_bps=20 * GiB))
    assert rec.interval_steps == 10
    # On a GPU the D2H copy adds to the stall: 0.05 + 1/10 = 0.15 s -> K = 150 at 1 %.
    rec = recommend(TuningInputs(state_bytes=GiB, iteration_s=0.1, budget=0.01, staging_budget_bytes=4 * GiB),
                    profile({("direct", 1): 2 * GiB}, copy_bps=20 * GiB, d2h_bps=10 * GiB))
    assert rec.stall_s == pytest.approx(0.15) and rec.interval_steps == 150


def test_more_threads_only_when_they_measured_faster():
    inputs = TuningInputs(state_bytes=GiB, iteration_s=0.1, staging_budget_bytes=4 * GiB)
    # 4 threads are 2.5 % faster than 2: within the 5 % noise margin, so 2 threads.
    rec = recommend(inputs, profile({("direct", 1): 1 * GiB, ("direct", 2): 2.0 * GiB, ("direct", 4): 2.05 * GiB,
                                     ("buffered", 1): 0.5 * GiB}))
    assert (rec.io_mode, rec.writer_threads) == ("direct", 2)
    assert rec.write_bps == pytest.approx(2.0 * GiB)
    # Threads that measured no faster are never chosen, whichever mode.
    rec = recommend(inputs, profile({("buffered", 1): 1.5 * GiB, ("buffered", 8): 1.4 * GiB,
                                     ("direct", 8): 1.0 * GiB}))
    assert (rec.io_mode, rec.writer_threads) == ("buffered", 1)
    # 8 threads clearly faster: 8 threads.
    rec = recommend(inputs, profile({("direct", 1): 1 * GiB, ("direct", 8): 3 * GiB}))
    assert rec.writer_threads == 8
    # Chunks: at most 16 MiB, and at least 4 per writer: 1 GiB / (4 * 8) = 32 MiB -> 16 MiB;
    # a 64 MiB state over 8 writers -> 2 MiB chunks.
    assert rec.chunk_bytes == 16 * MiB
    small = recommend(TuningInputs(state_bytes=64 * MiB, iteration_s=0.1, staging_budget_bytes=GiB),
                      profile({("direct", 1): 1 * GiB, ("direct", 8): 3 * GiB}))
    assert small.chunk_bytes == 2 * MiB


def test_max_inflight_is_bounded_by_the_staging_budget():
    writes = {("direct", 1): 1 * GiB}

    def rec(budget_bytes):
        return recommend(TuningInputs(state_bytes=GiB, iteration_s=0.1, staging_budget_bytes=budget_bytes),
                         profile(writes))

    assert (rec(4 * GiB).max_inflight, rec(4 * GiB).staging_bytes) == (2, 2 * GiB)
    assert (rec(GiB + GiB // 2).max_inflight, rec(GiB + GiB // 2).staging_bytes) == (1, GiB)
    # Less than one checkpoint: one in flight, staging the budget, and save() waits for the
    # writers to free half the state: stall (1 - 0.5) GiB / 1 GiB/s = 0.5 s -> K = 0.5 / 0.001 = 500.
    short = rec(GiB // 2)
    assert (short.max_inflight, short.staging_bytes) == (1, GiB // 2)
    assert short.stall_s == pytest.approx(0.5)
    assert short.interval_steps == 500
    assert any("staging" in r for r in short.reasons)


def test_measured_lost_time_replaces_the_estimated_stall():
    rec = recommend(TuningInputs(state_bytes=GiB, iteration_s=0.1, staging_budget_bytes=4 * GiB,
                                 lost_per_ckpt_s=0.02), profile({("direct", 1): 20 * GiB}))
    assert rec.stall_s == pytest.approx(0.02) and rec.interval_steps == 20


def test_reasons_are_sentences_and_the_config_fields_validate():
    rec = recommend(TuningInputs(state_bytes=GiB, iteration_s=0.1, staging_budget_bytes=4 * GiB),
                    profile({("direct", 2): 2 * GiB}))
    assert rec.reasons and all(r.endswith(".") for r in rec.reasons)
    from ckptlab.core.config import CheckpointConfig

    cfg = CheckpointConfig(**rec.config_fields())
    assert (cfg.writer_threads, cfg.io_mode, cfg.max_inflight, cfg.staging_bytes) == (2, "direct", 2, 2 * GiB)


@pytest.mark.parametrize("bad", [dict(state_bytes=0), dict(iteration_s=0.0), dict(budget=0.0), dict(budget=1.5),
                                 dict(staging_budget_bytes=0)])
def test_bad_inputs_are_refused(bad):
    args = dict(state_bytes=GiB, iteration_s=0.1, budget=0.01, staging_budget_bytes=GiB) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        TuningInputs(**args)


def test_a_profile_without_writes_is_refused():
    with pytest.raises(ValueError, match="no write"):
        recommend(TuningInputs(state_bytes=GiB, iteration_s=0.1, staging_budget_bytes=GiB), profile({}))
