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
    "ignore_seal": (("points",), "seal"),  # a stream committed before its (late) seal
}


def _trials_of_kind(kind: str) -> tuple[str, ...]:
    trials, _ = campaign.generate(campaign.Options(tiers=("points",), short=True, seed=1))
    return tuple(t["id"] for t in trials if t["p"]["kind"] == kind)


@pytest.mark.parametrize("mutation", list(CASES))
def test_campaign_catches_each_missing_durability_step(mutation, tmp_path):
    tiers, trial = CASES[mutation]
    trial = _trials_of_kind(trial) if trial in ("order", "seal") else trial
    opts = campaign.Options(tiers=tiers, short=True, seed=1, jobs=1, out=str(tmp_path), unsafe=(mutation,),
                            trial=trial, max_violations=1, progress=False)
    result = campaign.run(opts)
    assert result.violations > 0, f"the campaign did not notice {mutation}"
    assert result.exit_code == 1


def test_the_late_seal_trial_passes_without_the_mutation(tmp_path):
    """The seal trial's teeth are the mutation's, not the trial's: unmutated it is clean."""
    opts = campaign.Options(tiers=("points",), short=True, seed=1, jobs=1, out=str(tmp_path),
                            trial=_trials_of_kind("seal"), progress=False)
    result = campaign.run(opts)
    assert result.violations == 0 and [r["outcome"] for r in result.rows] == ["ok"]


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


def _torchsave_trials(tier: str) -> tuple[str, ...]:
    trials, _ = campaign.generate(campaign.Options(tiers=(tier,), short=True, seed=1))
    return tuple(t["id"] for t in trials if t["p"].get("writer") == "torchsave")


@pytest.mark.parametrize("mutation", ["skip_data_fsync", "skip_dir_fsync"])
def test_the_replay_catches_torchsave_without_an_fsync(mutation, tmp_path):
    """The torchsave child honours the two fsync mutations (faults/torchsave_saver.py): its
    power-loss replay then finds acknowledged steps that a power cut loses."""
    opts = campaign.Options(tiers=("powerloss",), short=True, seed=1, jobs=1, out=str(tmp_path), unsafe=(mutation,),
                            trial=_torchsave_trials("powerloss"), max_violations=1, progress=False)
    result = campaign.run(opts)
    assert result.violations > 0, f"the torchsave replay did not notice {mutation}"
    assert {r["writer"] for r in result.rows} == {"torchsave"}
    assert "acknowledged" in result.rows[0]["detail"]


def test_torchsave_kills_alone_cannot_see_a_missing_fsync(tmp_path):
    opts = campaign.Options(tiers=("points",), short=True, seed=1, jobs=1, out=str(tmp_path),
                            unsafe=("skip_dir_fsync",), trial=_torchsave_trials("points"), progress=False)
    result = campaign.run(opts)
    assert result.violations == 0 and {r["outcome"] for r in result.rows} == {"ok"}


def test_torchsave_trials_are_skipped_under_a_mutation_it_lacks(tmp_path):
    opts = campaign.Options(tiers=("points",), short=True, seed=1, jobs=1, out=str(tmp_path),
                            unsafe=("unordered_commit",), trial=_torchsave_trials("points")[:1], progress=False)
    [r] = campaign.run(opts).rows
    assert r["outcome"] == "skipped" and "unordered_commit" in r["detail"]
