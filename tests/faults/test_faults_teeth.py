"""A campaign that cannot fail proves nothing: with one durability step removed from the
engine, the campaign must report violations (and it reports none without the mutation:
test_faults_campaign.py)."""
import pytest
from ckptlab.faults import campaign

# mutation -> the tiers (and trials) that must catch it. A process crash keeps the page
# cache, so only the power-loss replay can see a missing fsync.
CASES = {
    "skip_data_fsync": (("powerloss",), ()),
    "skip_dir_fsync": (("powerloss",), ()),
    "corrupt_manifest_checksum": (("points", "powerloss"), ()),
    "unordered_commit": (("points",), "order"),  # the slow-checkpoint-2 scenario
}


def _order_trials() -> tuple[str, ...]:
    trials, _ = campaign.generate(campaign.Options(tiers=("points",), short=True, seed=1))
    return tuple(t["id"] for t in trials if t["p"]["kind"] == "order")


@pytest.mark.parametrize("mutation", list(CASES))
def test_campaign_catches_each_missing_durability_step(mutation, tmp_path):
    tiers, trial = CASES[mutation]
    trial = _order_trials() if trial == "order" else trial
    opts = campaign.Options(tiers=tiers, short=True, seed=1, jobs=1, out=str(tmp_path), unsafe=(mutation,),
                            trial=trial, max_violations=1, progress=False)
    result = campaign.run(opts)
    assert result.violations > 0, f"the campaign did not notice {mutation}"
    assert result.exit_code == 1


def test_unordered_commit_is_caught_by_the_replay_too(tmp_path):
    opts = campaign.Options(tiers=("powerloss",), short=True, seed=1, jobs=1, out=str(tmp_path),
                            unsafe=("unordered_commit",), max_violations=1, progress=False)
    result = campaign.run(opts)
    assert result.violations > 0
    assert "step order" in result.rows[0]["detail"]


@pytest.mark.parametrize("mutation", ["skip_data_fsync", "skip_dir_fsync"])
def test_process_crash_tiers_alone_cannot_see_a_missing_fsync(mutation, tmp_path):
    """Why the replay tier exists: SIGKILL keeps the page cache, so these pass."""
    opts = campaign.Options(tiers=("points",), short=True, seed=1, jobs=1, out=str(tmp_path), unsafe=(mutation,),
                            trial=("points:0", "points:9", "points:10"), progress=False)
    assert campaign.run(opts).violations == 0
