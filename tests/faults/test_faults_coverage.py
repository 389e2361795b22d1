"""Campaign coverage: the full campaign's trial list (generated, not run) fills every cell of
tier x writer x fault point x action it should; the summary prints the coverage table."""
import io

from ckptlab.faults import campaign, coverage, loopfs
from ckptlab.faults import tiers as T
from ckptlab.faults.tiers import realfs


def test_full_campaign_covers_every_cell(monkeypatch):
    monkeypatch.setattr(loopfs, "why_not", lambda fs: None)  # every file system mounts (generation only)
    opts = campaign.Options(full=True)
    trials, skipped = campaign.generate(opts)
    assert skipped == {} and len(trials) >= 10_000
    counts = coverage.count(trials)
    grid = campaign.expected_cells(opts, trials)
    assert {coverage.tier_label(t) for t in trials if t["tier"] == "realfs"} == {
        "realfs " + realfs.variant_name(fs, o) for fs, o in realfs.VARIANTS}
    empty = [c for c, why in grid.items() if why is None and not counts[c]]
    assert empty == []
    assert [c for c, why in grid.items() if why and counts[c]] == []  # nothing runs where nothing can fire
    assert set(counts) <= set(grid)
    assert {c[0].split()[0] for c in grid} == set(T.TIERS)


def test_default_campaign_stays_small():
    trials, _ = campaign.generate(campaign.Options())
    assert len(trials) < 2_000


def test_summary_prints_the_coverage_table(tmp_path):
    opts = campaign.Options(tiers=("points",), out=str(tmp_path))
    trials, _ = campaign.generate(campaign.Options(tiers=("points",)))
    result = campaign.Result(coverage=dict(coverage.count(trials[:3])), expected=campaign.expected_cells(opts, trials))
    buf = io.StringIO()
    campaign.print_summary(result, opts, file=buf)
    text = buf.getvalue()
    assert "coverage" in text and "missing" in text and "delay" in text
