"""Bit rot, truncation and foreign files: reported, skipped, never loaded silently."""
import json
import warnings
import os
import subprocess
import sys

import pytest
import torch

from ckptlab.core import (
    CheckpointConfig,
    CorruptCheckpointError,
    NoCheckpointError,
    list_checkpoints,
    load_latest,
    open_checkpointer,
    verify_checkpoint,
)
from ckpt_testutil import REPO, assert_state_is_step, det_state

NBYTES = 300 * 1024


def make_three(ckpt_dir, kind):
    with open_checkpointer(kind, ckpt_dir, CheckpointConfig(chunk_bytes=64 * 1024, keep_last=0)) as ck:
        for s in (1, 2, 3):
            ck.save(s, det_state(s, NBYTES))
    return os.path.join(ckpt_dir, "step_000000000003")


def data_file(path):
    return os.path.join(path, sorted(n for n in os.listdir(path) if n != "MANIFEST")[0])


def flip(path, offset, bit=0):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


def truncate_data(p):
    f = data_file(p)
    os.truncate(f, os.path.getsize(f) - 4096)


def flip_data(p):
    flip(data_file(p), os.path.getsize(data_file(p)) // 2, 3)


def zero_range(p):
    with open(data_file(p), "r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 5000)


def flip_manifest(p):
    flip(os.path.join(p, "MANIFEST"), 40)


def torn_manifest(p):
    m = os.path.join(p, "MANIFEST")
    os.truncate(m, os.path.getsize(m) // 2)


def foreign_manifest(p):
    torch.save({"not": "ours"}, os.path.join(p, "MANIFEST"))


def json_manifest(p):
    with open(os.path.join(p, "MANIFEST"), "w") as f:
        json.dump({"format": "ckptlab", "step": 3}, f)


def missing_manifest(p):
    os.unlink(os.path.join(p, "MANIFEST"))


def missing_data(p):
    os.unlink(data_file(p))


def empty_dir(p):
    for n in os.listdir(p):
        os.unlink(os.path.join(p, n))


CORRUPTIONS = [truncate_data, flip_data, zero_range, flip_manifest, torn_manifest, foreign_manifest, json_manifest,
               missing_manifest, missing_data, empty_dir]


@pytest.mark.parametrize("kind", ["pccheck", "torchsave"])
@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_corrupt_newest_is_reported_and_skipped(kind, corrupt, ckpt_dir):
    newest = make_three(ckpt_dir, kind)
    corrupt(newest)
    with pytest.warns(RuntimeWarning, match="skipping corrupt checkpoint .*step_000000000003"):
        step, state = load_latest(ckpt_dir)
    assert step == 2
    assert_state_is_step(state, 2, NBYTES)
    infos = {i.step: i for i in list_checkpoints(ckpt_dir, verify=True)}
    assert infos[3].status == "corrupt" and infos[3].problem
    assert infos[2].status == "ok" and infos[1].status == "ok"


def test_verify_names_the_bad_chunk(ckpt_dir):
    newest = make_three(ckpt_dir, "pccheck")
    flip_data(newest)
    with pytest.raises(CorruptCheckpointError, match=r"chunk \d+ at offset \d+: checksum"):
        verify_checkpoint(newest)


def test_nothing_valid_is_a_clear_error_listing_what_was_skipped(ckpt_dir):
    make_three(ckpt_dir, "pccheck")
    for s in (1, 2, 3):
        flip_data(os.path.join(ckpt_dir, f"step_{s:012d}"))
    with pytest.warns(RuntimeWarning):
        with pytest.raises(NoCheckpointError, match="no valid checkpoint in .*skipped: .*step_000000000003"):
            load_latest(ckpt_dir)


def test_empty_directory_is_a_clear_error(ckpt_dir):
    with pytest.raises(NoCheckpointError, match="no valid checkpoint"):
        load_latest(ckpt_dir)


def test_corrupt_bytes_never_reach_the_target(ckpt_dir):
    """A corrupt chunk is detected before its bytes are copied into live tensors."""
    with open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(chunk_bytes=64 * 1024)) as ck:
        ck.save(1, {"w": torch.arange(100_000.0)})
    flip_data(os.path.join(ckpt_dir, "step_000000000001"))
    target = {"w": torch.full((100_000,), -1.0)}
    with pytest.warns(RuntimeWarning), pytest.raises(NoCheckpointError):
        load_latest(ckpt_dir, target)
    assert torch.all(target["w"] == -1.0)


def test_inspect_cli_reports_corruption_with_exit_status(ckpt_dir):
    newest = make_three(ckpt_dir, "pccheck")
    flip_data(newest)
    cmd = [sys.executable, "-m", "ckptlab.core.cli", "inspect", ckpt_dir, "--verify", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["step"], x["status"]) for x in rows] == [(1, "ok"), (2, "ok"), (3, "corrupt")]
    r = subprocess.run(cmd[:-1], capture_output=True, text=True, cwd=REPO)
    assert "corrupt" in r.stdout and "checksum" in r.stdout


def test_inspect_without_verify_checks_manifests_only(ckpt_dir):
    make_three(ckpt_dir, "torchsave")
    r = subprocess.run([sys.executable, "-m", "ckptlab.core.cli", "inspect", ckpt_dir, "--json"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0
    assert {x["status"] for x in json.loads(r.stdout)} == {"unverified"}


@pytest.mark.parametrize("how", ["load_latest", "checkpointer"])
def test_a_skipped_corrupt_checkpoint_is_reported_exactly_once(how, ckpt_dir, caplog):
    """One report per skip, a CorruptCheckpointWarning a library user can catch and read
    (path, step, reason), and no second copy of it in the log."""
    from ckptlab.core import CorruptCheckpointWarning

    newest = make_three(ckpt_dir, "torchsave")
    flip_data(newest)
    caplog.set_level("DEBUG", logger="ckptlab")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if how == "load_latest":
            step, _ = load_latest(ckpt_dir)
        else:
            with open_checkpointer("pccheck", ckpt_dir, CheckpointConfig()) as ck:
                step, _ = ck.load()
    assert step == 2
    reports = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert len([r for r in reports if "step_000000000003" in r]) == 1, reports
    (w,) = caught
    assert issubclass(w.category, CorruptCheckpointWarning) and issubclass(w.category, RuntimeWarning)
    assert w.message.step == 3 and w.message.path == newest and "checksum" in w.message.reason
