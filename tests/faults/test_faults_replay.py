"""The crash-state model: what a power cut may keep, from a recorded operation log."""
import os
import random

import pytest
from ckptlab.faults.iolog import IoRecord, read_io_log
from ckptlab.faults.replay import CrashModel, materialize, snapshot
from faults_helpers import save_steps, small_setup

ROOT = "/r"


def rec(op, path="", path2="", offset=0, data=None, err=0):
    rec.seq += 1
    return IoRecord(rec.seq, 0, 1, op, err, path, path2, offset, len(data or b""), 0, data)


rec.seq = -1


def mark(kind, detail):
    return rec("mark", kind, detail)


def states_at(model, k, n=3):
    return {s.variant: s.files for s in model.states(random.Random(0), random_variants=n, points=[k])}


def test_unsynced_file_and_entry_may_vanish():
    log = [mark("start", f"pid=1 dir={ROOT}"), rec("create", f"{ROOT}/a"), rec("write", f"{ROOT}/a", data=b"x" * 1024)]
    m = CrashModel(log)
    s = states_at(m, len(log))
    assert s["durable"] == {}                      # neither the name nor the bytes were synced
    assert s["all"] == {"a": b"x" * 1024}          # what a process crash leaves
    m = CrashModel(log + [rec("fsync_dir", ROOT)])
    assert states_at(m, 4)["durable"] == {"a": b""}  # the name survives, the data may not
    m = CrashModel(log + [rec("fsync", f"{ROOT}/a")])
    assert states_at(m, 4)["durable"] == {}          # a file fsync does not persist its name
    m = CrashModel(log + [rec("fdatasync", f"{ROOT}/a"), rec("fsync_dir", ROOT)])
    assert {s.variant for s in m.states(random.Random(0), points=[5])} == {"durable"}
    assert states_at(m, 5)["durable"] == {"a": b"x" * 1024}


def test_rename_is_atomic_and_needs_the_directory_fsync():
    log = [mark("start", f"pid=1 dir={ROOT}"), rec("mkdir", f"{ROOT}/.t"), rec("create", f"{ROOT}/.t/f"),
           rec("write", f"{ROOT}/.t/f", data=b"y" * 600), rec("fdatasync", f"{ROOT}/.t/f"),
           rec("fsync_dir", f"{ROOT}/.t"), rec("fsync_dir", ROOT), rec("rename", f"{ROOT}/.t", f"{ROOT}/final")]
    m = CrashModel(log + [mark("ack", "ckpt=1 step=1")])
    for st in m.states(random.Random(1), random_variants=8):
        names = {p.split("/")[0] for p in st.files}
        assert not {".t", "final"} <= names, f"both names after a rename: {st.files.keys()}"
    durable = states_at(m, len(log))["durable"]
    assert ".t" in durable and "final" not in durable  # the rename was never made durable
    m = CrashModel(log + [rec("fsync_dir", ROOT)])
    assert states_at(m, len(log) + 1)["durable"] == {"final": None, "final/f": b"y" * 600}


def test_torn_write_keeps_a_sector_prefix():
    log = [mark("start", f"pid=1 dir={ROOT}"), rec("create", f"{ROOT}/a"), rec("fsync_dir", ROOT),
           rec("write", f"{ROOT}/a", data=bytes(range(256)) * 16)]
    m = CrashModel(log)
    seen = set()
    for seed in range(20):
        for st in m.states(random.Random(seed), random_variants=0, points=[len(log)]):
            if st.variant == "torn":
                data = st.files["a"]
                assert len(data) == 4096
                orig = bytes(range(256)) * 16
                first_diff = next((i for i in range(4096) if data[i] != orig[i]), 4096)
                cut = first_diff - first_diff % 512  # garbage may match a byte or two by chance
                assert data[:cut] == orig[:cut] and data[cut:cut + 512] != orig[cut:cut + 512]
                seen.add(cut)
    assert len(seen) > 1


def test_initial_snapshot_is_durable(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_bytes(b"old")
    init = snapshot(str(d))
    log = [mark("start", f"pid=1 dir={d}"), rec("unlink", f"{d}/sub/f")]
    m = CrashModel(log, initial=init)
    s = states_at(m, len(log))
    assert s["durable"] == {"sub": None, "sub/f": b"old"} and s["all"] == {"sub": None}
    out = tmp_path / "out"
    materialize(s["durable"], str(out))
    assert (out / "sub" / "f").read_bytes() == b"old"


def test_recorded_engine_run_replays_to_the_real_end_state(tmp_path):
    d, log = str(tmp_path / "ck"), str(tmp_path / "io.log")
    os.mkdir(d)
    save_steps(d, small_setup(keep_last=2), io_log=log)
    m = CrashModel(read_io_log(log))
    end = m.build(len(m.records), lambda op: True, lambda op: None)
    real = snapshot(d)
    assert end == real  # replaying every operation gives exactly what is on disk
    # After the final directory fsync only dead files (the O_DIRECT probe) have pending
    # operations: a power cut at the end can leave exactly one state, the real one.
    finals = list(m.states(random.Random(0), random_variants=4, points=[len(m.records)]))
    assert [st.files for st in finals] == [real]


def test_metadata_only_log_cannot_be_replayed(tmp_path):
    from ckptlab.faults.replay import ReplayError

    d, log = str(tmp_path / "ck"), str(tmp_path / "io.log")
    os.mkdir(d)
    save_steps(d, small_setup(), io_log=log, io_log_data=False)
    with pytest.raises(ReplayError, match="without data"):
        CrashModel(read_io_log(log))
