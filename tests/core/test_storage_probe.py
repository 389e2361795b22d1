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


def test_disk_probe_holds_one_file_of_the_size_at_a_time(tmp_path, monkeypatch):
    """The bench's raw-disk probe writes the checkpoint's size twice (O_DIRECT, buffered): a
    48 GB seed-full probe must fit a 64 GiB disk, so the first file is gone before the second."""
    from ckptlab.core import storage_probe as sp

    held = []
    real = sp.raw_write_buffered

    def buffered(buf, path):
        held.append(sorted(os.listdir(path.parent)))
        return real(buf, path)

    monkeypatch.setattr(sp, "raw_write_buffered", buffered)
    out = sp.disk_probe(tmp_path / "raw", MiB)
    assert held == [[]], held  # direct.bin removed before buffered.bin is written
    assert out["buffered_write_s"] > 0 and out["read_s"] > 0
    assert os.listdir(tmp_path / "raw") == []


def test_d2h_probe_copies_a_bounded_sample(monkeypatch):
    """The bandwidth is a rate: a 48 GB state is measured on D2H_SAMPLE_MAX_BYTES, not by
    pinning 48 GB of host memory."""
    from ckptlab.core import storage_probe as sp

    sizes = []
    monkeypatch.setattr(sp, "d2h_seconds", lambda n, repeats=3: sizes.append(n) or n / 25e9)
    assert sp.d2h_gbps(48 << 30) == pytest.approx(25.0)
    assert sp.d2h_gbps(MiB) == pytest.approx(25.0)
    assert sizes == [sp.D2H_SAMPLE_MAX_BYTES, MiB]
