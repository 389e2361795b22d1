"""DDP training under torchrun (training/distributed.py, docs/TRAINING.md "DDP under torchrun"):
2-rank gloo worlds launched as users launch them, one rank SIGKILLed mid-checkpoint, the
relaunch resumes every rank from the same last globally committed step, losses bit-exact.
``ckptlab inspect`` of the directories those worlds leave (core/global_inspect.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ckptlab.core.fault_spec import FAULTS_ENV

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "--max-restarts", "0", "-m", "ckptlab.training.cli", "--no-progress"]
TINY = ["--preset", "tiny", "--device", "cpu", "--training-steps", "8", "--checkpoint-freq", "2",
        "--sequence-length", "16", "--batch-size", "2"]


def torchrun(*args: str | os.PathLike, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != FAULTS_ENV}
    cmd = list(TORCHRUN)
    cmd[cmd.index("--nproc-per-node") + 1] = str(nproc)
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def resumed_steps(stderr: str) -> dict[int, int]:
    return {int(r): int(s) for r, s in re.findall(r"\[rank (\d+)\] resumed from step (\d+)", stderr)}


def last_record(ckpt: Path) -> int:
    """The newest globally committed step (its global record) left on disk."""
    return max(int(p.stem.split("_")[1]) for p in (ckpt / "global").glob("step_*.json"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted 2-rank pccheck run: (its loss file, its checkpoint directory)."""
    d = tmp_path_factory.mktemp("ddp-ref")
    run = torchrun("--checkpointer", "pccheck", *TINY, "--keep-last", "0", "--ckpt-dir", d / "ckpt",
                   "--loss-file", d / "loss.txt", "--summary-json", d / "summary.json")
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rank"] == 0 and summary["last_step"] == 8
    return d / "loss.txt", d / "ckpt"


def test_rank_killed_inside_a_checkpoint_write_resumes_bit_exact(reference, tmp_path):
    ref_loss, _ = reference
    ckpt, loss = tmp_path / "ckpt", tmp_path / "loss.txt"
    # rank 1 (the last, --fail-rank's default) dies inside the engine while persisting step 6
    crashed = torchrun("--checkpointer", "pccheck", *TINY, "--ckpt-dir", ckpt, "--loss-file", loss,
                       "--fault", "point=before_rename,step=6,action=kill")
    assert crashed.returncode != 0, crashed.stderr[-4000:]
    assert "SIGKILL" in crashed.stderr or "Signal 9" in crashed.stderr, crashed.stderr[-4000:]
    last = last_record(ckpt)
    assert last in (2, 4), last  # 4 unless rank 1 died before step 4's (asynchronous) global commit
    assert not (ckpt / "rank_00001" / "step_000000000006").exists()

    resumed = torchrun("--checkpointer", "pccheck", *TINY, "--ckpt-dir", ckpt, "--loss-file", loss,
                       "--load-checkpoint")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert resumed_steps(resumed.stderr) == {0: last, 1: last}, resumed.stderr[-4000:]
    assert loss.read_bytes() == ref_loss.read_bytes()
    assert len(ref_loss.read_text().splitlines()) == 8


def test_ranks_draw_disjoint_shards_of_the_one_order_and_resume_their_own_position():
    from ckptlab.training.data import ResumableSampler, SyntheticTokens

    data = SyntheticTokens(vocab_size=256, seq_len=8, seed=3)
    single = ResumableSampler(data, 4, epoch_size=16)
    order = single.next_ids() + single.next_ids() + single.next_ids() + single.next_ids()
    ranks = [ResumableSampler(data, 2, epoch_size=16, rank=r, world_size=2) for r in range(2)]
    drawn = [ranks[r].next_ids() + ranks[r].next_ids() for r in range(2)]
    assert drawn[0] == order[0:8:2] and drawn[1] == order[1:8:2]  # disjoint, interleaved
    saved = ranks[1].state_dict()
    assert saved["rank"] == 1 and saved["world_size"] == 2
    again = ResumableSampler(data, 2, epoch_size=16, rank=1, world_size=2)
    again.load_state_dict(saved)
    assert again.next_ids() == ranks[1].next_ids()
    with pytest.raises(ValueError, match="rank 1's of 2"):
        ResumableSampler(data, 2, epoch_size=16, rank=0, world_size=2).load_state_dict(saved)
    with pytest.raises(ValueError, match="rank 0's of 2"):  # a part of another world size
        ResumableSampler(data, 2, epoch_size=16).load_state_dict(ranks[0].state_dict())
    # the epoch wraps per rank after its 8 positions; a world of one is unchanged
    assert ResumableSampler(data, 4, epoch_size=16).state_dict() == {"epoch": 0, "index": 0, "seed": 3}


@dataclass
class Shown:
    returncode: int
    stdout: str


def inspect(*args: str | os.PathLike) -> Shown:
    """``ckptlab inspect ARGS`` in process (the dispatcher's main; no torch import to pay)."""
    from ckptlab.core.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["inspect", *map(str, args)])
    return Shown(code, out.getvalue())


def test_inspect_shows_a_two_rank_directory(reference, tmp_path):
    _, src = reference
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    (ckpt / "global" / "step_000000000008.json").unlink()  # step 8's parts now lack a record

    shown = inspect(ckpt, "--json")
    assert shown.returncode == 0, shown.stdout
    doc = json.loads(shown.stdout)
    assert doc["world_size"] == 2
    assert [s["step"] for s in doc["steps"]] == [2, 4, 6]
    for s in doc["steps"]:
        assert [p["rank"] for p in s["parts"]] == [0, 1]
        assert all(p["identity_matches"] and p["status"] == "unverified" and p["nbytes"] > 0 for p in s["parts"])
    assert sorted((p["rank"], p["step"]) for p in doc["uncommitted"]) == [(0, 8), (1, 8)]

    text = inspect(ckpt, "--verify")
    assert text.returncode == 0, text.stdout
    assert "world size 2" in text.stdout and "uncommitted" in text.stdout

    part = ckpt / "rank_00001" / "step_000000000006"
    data = max((p for p in part.iterdir() if p.name != "MANIFEST"), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    bad = inspect(ckpt, "--verify", "--json")
    assert bad.returncode == 1, bad.stdout
    doc = json.loads(bad.stdout)
    step6 = next(s for s in doc["steps"] if s["step"] == 6)
    assert step6["status"] == "corrupt"
    assert [p["status"] for p in step6["parts"]] == ["ok", "corrupt"]
    assert all(s["status"] == "ok" for s in doc["steps"] if s["step"] != 6)
    # without --verify the flipped byte is not read: sizes and manifests still check out
    assert inspect(ckpt).returncode == 0


def test_inspect_notices_a_part_that_is_not_the_acknowledged_one(reference, tmp_path):
    _, src = reference
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    # the two ranks' parts of step 4 swapped: each is a valid step-4 checkpoint, neither the acknowledged one
    r0, r1 = ckpt / "rank_00000" / "step_000000000004", ckpt / "rank_00001" / "step_000000000004"
    r0.rename(tmp_path / "swap")
    r1.rename(r0)
    (tmp_path / "swap").rename(r1)
    bad = inspect(ckpt, "--json")
    assert bad.returncode == 1
    step4 = next(s for s in json.loads(bad.stdout)["steps"] if s["step"] == 4)
    assert step4["parts"][0]["identity_matches"] is False and step4["parts"][0]["status"] == "corrupt"
    assert "acknowledged" in step4["parts"][0]["problem"] and step4["parts"][1]["identity_matches"] is False
    assert inspect(ckpt, "--verify").returncode == 1  # chunk CRCs are fine: only the record tells


@pytest.mark.slow
def test_fail_at_step_kills_the_last_rank_and_resume_is_bit_exact(reference, tmp_path):
    ref_loss, _ = reference
    ckpt, loss = tmp_path / "ckpt", tmp_path / "loss.txt"
    crashed = torchrun("--checkpointer", "torchsave", *TINY, "--ckpt-dir", ckpt, "--loss-file", loss,
                       "--fail-at-step", "5")
    assert crashed.returncode != 0
    assert "[rank 1] --fail-at-step 5: sending SIGKILL" in crashed.stderr, crashed.stderr[-4000:]
    assert "[rank 0] --fail-at-step" not in crashed.stderr
    last = last_record(ckpt)
    assert last in (2, 4), last  # step 4's global commit races the kill one step later
    resumed = torchrun("--checkpointer", "torchsave", *TINY, "--ckpt-dir", ckpt, "--loss-file", loss,
                       "--load-checkpoint")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert resumed_steps(resumed.stderr) == {0: last, 1: last}
    assert loss.read_bytes() == ref_loss.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dcp", "dcp-async"])
def test_dcp_under_torchrun_resumes_bit_exact(reference, tmp_path, kind):
    ref_loss, _ = reference
    ckpt, loss = tmp_path / "ckpt", tmp_path / "loss.txt"
    crashed = torchrun("--checkpointer", kind, *TINY, "--ckpt-dir", ckpt, "--loss-file", loss, "--fail-at-step", "5")
    assert crashed.returncode != 0 and "[rank 1] --fail-at-step 5" in crashed.stderr, crashed.stderr[-4000:]
    steps = sorted(p.name for p in ckpt.glob("step_*"))
    if kind == "dcp":  # synchronous and collective: step 4 was durable on every rank before save(4) returned
        assert steps == ["step_000000000002", "step_000000000004"]
    else:  # step 4's commit runs in the background and races the kill one step later
        assert steps in (["step_000000000002"], ["step_000000000002", "step_000000000004"]), steps
    last = int(steps[-1].split("_")[1])
    assert (ckpt / steps[-1] / "trainer_state.rank1.pt").is_file()
    resumed = torchrun("--checkpointer", kind, *TINY, "--ckpt-dir", ckpt, "--loss-file", loss, "--load-checkpoint")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert resumed_steps(resumed.stderr) == {0: last, 1: last}
    assert loss.read_bytes() == ref_loss.read_bytes()
    assert sorted(p.name for p in ckpt.glob("step_*"))[-1] == "step_000000000008"


def test_one_process_refuses_a_multi_rank_directory(reference, tmp_path, monkeypatch):
    from ckptlab.training.config import TrainConfig
    from ckptlab.training.loop import TrainError, train

    _, src = reference
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    for resume in (True, False):
        with pytest.raises(TrainError, match="multi-rank checkpoints .* torchrun"):
            train(TrainConfig(checkpointer="pccheck", device="cpu", ckpt_dir=src, load_checkpoint=resume))
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before  # nothing created


@pytest.mark.slow
def test_three_ranks_refuse_a_two_rank_checkpoint_naming_both_sizes(reference, tmp_path):
    _, src = reference
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    run = torchrun("--checkpointer", "pccheck", *TINY, "--ckpt-dir", ckpt, "--load-checkpoint", nproc=3)
    assert run.returncode != 0
    assert "saved by 2 ranks" in run.stderr and "runs on 3" in run.stderr, run.stderr[-4000:]
    assert "exitcode  : 2" in run.stderr
