"""core/commit.py: the Python commit protocol, checked against the engine's.

The differential tests craft the leftovers a crash can leave (temp dirs, moved-aside copies
with and without their step_N, half-deleted retention victims, names that only look alike)
and require that Python recovery (what torchsave and dcp run on open) and the engine's own
recovery (what pccheck runs when its engine opens) leave the same directory, byte for byte.
"""
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptlab import _engine
from ckptlab.core import commit


def _snapshot(root: str) -> dict[str, bytes | None]:
    """{relative path: file bytes, or None for a directory}, without the lock file."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.relpath(p, root) != commit.LOCK_NAME:
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = fh.read()
    return out


def _build(root: str, entries: dict[str, dict[str, bytes]]) -> None:
    os.makedirs(root)
    for name, files in entries.items():
        os.mkdir(os.path.join(root, name))
        for fname, data in files.items():
            with open(os.path.join(root, name, fname), "wb") as f:
                f.write(data)


def _python_recovers(root: str) -> list[str]:
    lock = commit.DirectoryLock(root)
    try:
        return commit.recover(root)
    finally:
        lock.release()


def _engine_recovers(root: str) -> None:
    e = _engine.Engine(root, writer_threads=1, chunk_bytes=64 << 10, staging_bytes=64 << 10, prefault=False)
    e.close()


def _both(tmp_path, entries) -> tuple[dict, dict, list[str]]:
    py_root, cc_root = str(tmp_path / "py"), str(tmp_path / "cc")
    _build(py_root, entries)
    shutil.copytree(py_root, cc_root)
    actions = _python_recovers(py_root)
    _engine_recovers(cc_root)
    return _snapshot(py_root), _snapshot(cc_root), actions


S = commit.step_dir_name
CRAFTED = {
    "interrupted re-save before the new copy was in place": {
        f".{S(7)}.replaced-12": {"MANIFEST": b"old 7", "data_0": b"x"},
        f".{S(7)}.tmp-99-abcdef01": {"data_0": b"new 7, unfinished"},
    },
    "interrupted re-save after the new copy was in place": {
        S(8): {"MANIFEST": b"new 8"},
        f".{S(8)}.replaced-3": {"MANIFEST": b"old 8"},
    },
    "half-deleted retention victim next to the kept ones": {
        f".{S(2)}.deleting-5": {"data_1": b"partly gone"},
        S(4): {"MANIFEST": b"4"},
        S(6): {"MANIFEST": b"6"},
    },
    "temp dirs of two crashed writers": {
        f".{S(10)}.tmp-1-00000000": {},
        f".{S(11)}.tmp-2-ffffffff": {"data_0": b"a", "data_1": b"b"},
        S(9): {"MANIFEST": b"9"},
    },
    "names that only look like leftovers": {
        ".step_x.tmp-1": {"f": b"engine reads any base"},
        f".{S(3)}.partial": {"f": b"not one of ours"},
        f"{S(3)}.tmp-1": {"f": b"no leading dot"},
        ".unrelated": {"f": b"kept"},
        "step_": {"f": b"not a step"},
        f".{S(5)}": {"f": b"no kind"},
    },
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_python_and_engine_recovery_leave_the_same_directory(tmp_path, case):
    py, cc, _ = _both(tmp_path, CRAFTED[case])
    assert py == cc


def test_recovery_restores_the_only_copy_and_says_so(tmp_path):
    py, _, actions = _both(tmp_path, CRAFTED["interrupted re-save before the new copy was in place"])
    assert py == {S(7): None, f"{S(7)}/MANIFEST": b"old 7", f"{S(7)}/data_0": b"x"}
    assert sorted(actions) == [f"removed .{S(7)}.tmp-99-abcdef01", f"restored {S(7)} from .{S(7)}.replaced-12"]


_kinds = st.sampled_from(["tmp", "replaced", "deleting"])
_entry = st.one_of(
    st.tuples(st.just("committed"), st.integers(0, 5)),
    st.tuples(_kinds, st.integers(0, 5), st.integers(0, 3)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_entry, min_size=1, max_size=8, unique=True))
def test_random_leftovers_recover_alike(tmp_path_factory, entries):
    tree = {}
    for e in entries:
        if e[0] == "committed":
            tree[S(e[1])] = {"MANIFEST": f"committed {e[1]}".encode()}
        else:
            kind, step, tag = e
            # one moved-aside copy per step: which of two a crash would restore is readdir order
            if kind == "replaced" and any(k.startswith(f".{S(step)}.replaced-") for k in tree):
                continue
            tree[f".{S(step)}.{kind}-{tag}"] = {"f": f"{kind} {step} {tag}".encode()}
    py, cc, _ = _both(tmp_path_factory.mktemp("leftovers"), tree)
    assert py == cc
    assert not any(name.startswith(".step_") for name in py)


def test_publish_replaces_an_existing_step_and_leaves_nothing_aside(tmp_path):
    d = str(tmp_path)
    for payload in (b"first", b"second"):
        tmp = commit.make_temp_dir(d, 5)
        with open(os.path.join(tmp, "MANIFEST"), "wb") as f:
            f.write(payload)
        assert commit.publish(d, 5, tmp) == os.path.join(d, S(5))
    assert os.listdir(d) == [S(5)]
    with open(os.path.join(d, S(5), "MANIFEST"), "rb") as f:
        assert f.read() == b"second"


def test_publish_failure_removes_the_temp_dir_and_keeps_the_old_copy(tmp_path, monkeypatch):
    d = str(tmp_path)
    tmp = commit.make_temp_dir(d, 3)
    commit.publish(d, 3, tmp)
    tmp = commit.make_temp_dir(d, 3)
    real_rename = os.rename

    def failing_rename(src, dst):
        if ".tmp-" in str(src):
            raise OSError(5, "injected EIO", src)
        return real_rename(src, dst)

    monkeypatch.setattr(commit.os, "rename", failing_rename)
    with pytest.raises(OSError, match="injected EIO"):
        commit.publish(d, 3, tmp)
    assert os.listdir(d) == [S(3)]


@pytest.mark.parametrize("keep_last, kept", [(0, [1, 2, 3, 4]), (1, [4]), (2, [3, 4]), (9, [1, 2, 3, 4])])
def test_retain_keeps_the_newest(tmp_path, keep_last, kept):
    d = str(tmp_path)
    for s in (1, 2, 3, 4):
        os.mkdir(os.path.join(d, S(s)))
    deleted = commit.retain(d, 4, keep_last)
    assert [s for s, _ in commit.committed_step_dirs(d)] == kept
    assert sorted(deleted + kept) == [1, 2, 3, 4]
    assert sorted(os.listdir(d)) == [S(s) for s in kept]


def test_step_names_round_trip_and_refuse_lookalikes():
    assert commit.parse_step_dir(S(42)) == 42 and S(42) == "step_000000000042"
    assert commit.parse_step_dir(f"step_{2**63 - 1}") == 2**63 - 1
    assert commit.parse_step_dir("step_" + "0" * 30 + "7") == 7  # leading zeros: the engine reads 7 too
    for bad in ("step_", "step_1a", "step_" + "1" * 20, f"step_{2**63}", "step_" + "9" * 19, ".step_1", "step_-1",
                "Step_1", "step_5\n", "step_\u0663"):
        assert commit.parse_step_dir(bad) is None


def test_python_and_engine_retention_keep_the_same_checkpoints(tmp_path):
    """Retention after committing step 10 with keep_last=2, among names that are committed
    steps, look like them, or overflow an int64: both keep the same directories."""
    names = [S(3), S(7), S(9), "step_12a", "step_" + "1" * 20, f"step_{2**63}", "step_000000000001x", S(11),
             "step_" + "0" * 25 + "2", "step_\u0663", "step_4\n"]
    roots = {}
    for who in ("py", "cc"):
        root = tmp_path / who
        root.mkdir()
        for n in names:
            (root / n).mkdir()
        roots[who] = root
    os.mkdir(roots["py"] / S(10))
    commit.retain(str(roots["py"]), 10, 2)
    e = _engine.Engine(str(roots["cc"]), writer_threads=1, chunk_bytes=64 << 10, staging_bytes=64 << 10,
                       keep_last=2, prefault=False)
    import numpy as np
    data = np.zeros(1000, np.uint8)
    e.submit(10, '{"objects":[0,0],"storages":[],"tensors":[]}', [(data.ctypes.data, data.nbytes, 0)], data.nbytes)
    assert e.wait(timeout=30)
    e.close()
    kept = {who: sorted(n for n in os.listdir(r) if n != commit.LOCK_NAME) for who, r in roots.items()}
    assert kept["py"] == kept["cc"]
    assert S(9) in kept["py"] and S(7) not in kept["py"] and S(11) in kept["py"]  # newer ones stay


def test_one_writer_per_directory_across_kinds(tmp_path):
    d = str(tmp_path)
    lock = commit.DirectoryLock(d)
    with pytest.raises(RuntimeError, match="another ckptlab checkpointer"):
        _engine.Engine(d, writer_threads=1, chunk_bytes=64 << 10, staging_bytes=64 << 10, prefault=False)
    lock.release()
    e = _engine.Engine(d, writer_threads=1, chunk_bytes=64 << 10, staging_bytes=64 << 10, prefault=False)
    with pytest.raises(RuntimeError, match="another ckptlab checkpointer"):
        commit.DirectoryLock(d)
    e.close()
    commit.DirectoryLock(d).release()


def test_a_lock_file_unlinked_while_being_taken_is_taken_again(tmp_path, monkeypatch):
    """The holder that made the lock file unlinks it as it releases (training/loop.py when
    there was nothing to resume); an opener that opened the old file just before holds a lock
    on nothing. DirectoryLock notices the inode changed under it and takes the new file."""
    d = str(tmp_path)
    path = os.path.join(d, commit.LOCK_NAME)
    real_flock = commit.fcntl.flock
    calls = []

    def racing_flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:  # between our open and our flock: unlinked, and a new one made
            os.unlink(path)
            open(path, "wb").close()
        return real_flock(fd, op)

    monkeypatch.setattr(commit.fcntl, "flock", racing_flock)
    lock = commit.DirectoryLock(d)
    assert len(calls) == 2
    assert os.fstat(lock._fd).st_ino == os.stat(path).st_ino  # the lock is on the file at the path
    monkeypatch.setattr(commit.fcntl, "flock", real_flock)
    with pytest.raises(RuntimeError, match="another ckptlab checkpointer"):
        commit.DirectoryLock(d)  # and so it excludes the next opener
    lock.release()


def test_a_lock_file_that_keeps_vanishing_is_a_clear_error(tmp_path, monkeypatch):
    d = str(tmp_path)
    path = os.path.join(d, commit.LOCK_NAME)
    real_flock = commit.fcntl.flock

    def vanishing_flock(fd, op):
        os.unlink(path)
        return real_flock(fd, op)

    monkeypatch.setattr(commit.fcntl, "flock", vanishing_flock)
    with pytest.raises(RuntimeError, match="replaced 5 times"):
        commit.DirectoryLock(d)
