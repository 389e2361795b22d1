"""The realfs tier: clean skips (not root, mkfs missing), loop mounts that never outlive their
trial, and (slow) a handful of real trials on ext4 and xfs images."""
import errno
import json
import os
import subprocess

import pytest
from ckptlab.faults import campaign, loopfs
from ckptlab.faults.tiers import realfs


def _which_without(*missing):
    real = loopfs.shutil.which
    return lambda name: None if name in missing else (real(name) or f"/usr/sbin/{name}")


def test_realfs_skips_with_a_reason_when_not_root(monkeypatch):
    monkeypatch.setattr(loopfs.os, "geteuid", lambda: 1000)
    trials, skipped = campaign.generate(campaign.Options(tiers=("realfs",), short=True))
    assert trials == [] and "root" in skipped["realfs"]


def test_realfs_leaves_out_a_file_system_whose_mkfs_is_missing(monkeypatch):
    monkeypatch.setattr(loopfs.os, "geteuid", lambda: 0)
    monkeypatch.setattr(loopfs, "_have_loop_devices", lambda: True)
    monkeypatch.setattr(loopfs.shutil, "which", _which_without("mkfs.xfs"))
    trials, skipped = campaign.generate(campaign.Options(tiers=("realfs",)))
    assert skipped == {"realfs (xfs)": "mkfs.xfs is not installed (Debian package xfsprogs)"}
    assert trials and {t["p"]["fs"] for t in trials} == {"ext4"}
    monkeypatch.setattr(loopfs.shutil, "which", _which_without("mkfs.xfs", "mkfs.ext4"))
    trials, skipped = campaign.generate(campaign.Options(tiers=("realfs",)))
    assert trials == [] and "e2fsprogs" in skipped["realfs"] and "xfsprogs" in skipped["realfs"]


def test_realfs_trials_cover_each_group_before_repeating_one(monkeypatch):
    monkeypatch.setattr(loopfs, "why_not", lambda fs: None)
    groups = len(realfs.KINDS) * len(realfs.VARIANTS) * len(realfs.WRITERS)
    first = realfs.generate(1, groups, False)
    keys = {(t["p"]["kind"], t["p"]["fs"], t["p"]["mount"], t["p"].get("writer", "pccheck")) for t in first}
    assert len(keys) == groups
    assert realfs.generate(1, 10 ** 6, False) == realfs.generate(1, 10 ** 5, False)  # all of them


def _attached(image: str) -> str:
    return subprocess.run(["losetup", "-j", image], capture_output=True, text=True, check=False).stdout


@pytest.mark.skipif(loopfs.why_not("ext4") is not None, reason=str(loopfs.why_not("ext4")))
def test_mounted_takes_everything_down_even_when_the_body_fails(tmp_path):
    seen = {}
    with pytest.raises(RuntimeError, match="trial failed"):
        with loopfs.mounted("ext4", str(tmp_path), "data=writeback") as mnt:
            seen["mnt"], seen["image"] = mnt, os.path.join(os.path.dirname(mnt), "image")
            assert os.path.ismount(mnt) and seen["image"] in _attached(seen["image"])
            with open(os.path.join(mnt, "f"), "w") as f:  # a file open inside when the trial fails
                f.write("x")
                raise RuntimeError("trial failed")
    assert not os.path.ismount(seen["mnt"]) and _attached(seen["image"]) == ""
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_realfs_trials_on_ext4_and_xfs(tmp_path):
    ok, why = realfs.available()
    if not ok:
        pytest.skip(why)
    # Round-robin order: 0-5 full disk, 6-11 kill, 12-17 one-off errors (ext4 ordered, ext4
    # writeback, xfs; pccheck then torchsave in each).
    pick = ("realfs:0", "realfs:1", "realfs:5", "realfs:8", "realfs:11", "realfs:12", "realfs:17")
    opts = campaign.Options(tiers=("realfs",), seed=1, jobs=2, out=str(tmp_path / "out"), progress=False,
                            trial=pick, work_dir=str(tmp_path / "work"))
    r = campaign.run(opts)
    assert [x["trial"] for x in r.rows] == sorted(pick, key=lambda i: int(i.split(':')[1]))
    assert r.violations == 0 and r.errors == 0, [x["detail"] for x in r.rows]
    assert all(x["fired"] for x in r.rows), [(x["trial"], x["outcome"]) for x in r.rows]
    full = {x["trial"]: json.loads(x["params"]) for x in r.rows if "free_ckpts" in json.loads(x["params"])}
    assert len(full) == 3 and all(p["errnos"] == [errno.ENOSPC] for p in full.values()), full
    # The engine reserves its data files first: ENOSPC at fallocate. torchsave does not: on
    # ext4 the kernel's ENOSPC comes in the middle of state.pt; xfs (its ~170 KiB reservation)
    # may refuse the MANIFEST (or the temp dir) after the data instead.
    assert full["realfs:0"]["failed_ops"] and all(o.startswith("fallocate data_") for o in full["realfs:0"]["failed_ops"]), full
    assert "write state.pt" in full["realfs:1"]["failed_ops"], full
    assert full["realfs:5"]["failed_ops"] and not any(o.startswith("fallocate") for o in full["realfs:5"]["failed_ops"]), full
    with open("/proc/mounts") as f:
        assert str(tmp_path) not in f.read()
    assert str(tmp_path) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
