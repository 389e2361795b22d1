"""core/storage_probe.py: the engine writes a synthetic checkpoint per io_mode x threads, the
file is read back cold, and nothing of the probe stays behind."""
import json
import os

import pytest

from ckptlab.core.storage_probe import StorageProfile, probe_storage

MiB = 1 << 20


def test_probe_returns_positive_bandwidths_and_removes_its_files(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    seen = []
    prof = probe_storage(tmp_path, 1 * MiB, threads=(1, 2), io_modes=("direct", "buffered"),
                         progress=lambda what, done, total: seen.append(what))
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]  # the probe's directory is gone
    modes = {w.io_mode for w in prof.writes}
    assert "buffered" in modes and modes <= {"direct", "buffered"}
    if "direct" not in modes:
        assert prof.direct_note  # says why O_DIRECT was not measured (tmpfs refuses it)
    assert {w.threads for w in prof.writes} == {1, 2}
    assert all(w.nbytes == MiB and w.seconds > 0 and w.bps > 0 for w in prof.writes)
    assert prof.read_s > 0 and prof.read_bps > 0 and 0.0 <= prof.read_resident <= 1.0
    assert prof.copy_s > 0 and prof.copy_bps > 0
    assert prof.d2h_s is None  # no CUDA here
    assert len(seen) == len(prof.writes) + 1  # one step per write, and the read
    again = StorageProfile.from_json(json.loads(json.dumps(prof.to_json())))
    assert again == prof


def test_probe_refuses_bad_arguments_before_writing(tmp_path):
    with pytest.raises(ValueError, match="threads"):
        probe_storage(tmp_path, MiB, threads=(0,))
    with pytest.raises(ValueError, match="io_modes"):
        probe_storage(tmp_path, MiB, io_modes=("fast",))
    with pytest.raises(ValueError, match="nbytes"):
        probe_storage(tmp_path, 1000)
    assert os.listdir(tmp_path) == []


def test_probe_cleans_up_when_interrupted(tmp_path):
    def interrupt(what, done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        probe_storage(tmp_path, MiB, threads=(1,), io_modes=("buffered",), progress=interrupt)
    assert os.listdir(tmp_path) == []
