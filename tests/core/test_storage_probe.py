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
    assert prof.repeats == 1 and all(len(w.samples) == 1 and w.samples[0] == w.seconds for w in prof.writes)
    again = StorageProfile.from_json(json.loads(json.dumps(prof.to_json())))
    assert again == prof


def test_repeats_interleave_the_rounds_and_keep_each_median(tmp_path, monkeypatch):
    """Every configuration once per round; a configuration's one slow round does not decide."""
    from ckptlab.core import storage_probe

    durations = {("buffered", 1): iter([1.0, 1.2, 9.0]), ("buffered", 2): iter([0.5, 0.7, 0.6])}
    calls = []

    def fake_write(directory, data, threads, io_mode, chunk):
        calls.append((io_mode, threads))
        checkpoint = directory / "step_0"
        checkpoint.mkdir()
        (checkpoint / "data").write_bytes(b"x" * 8192)
        return next(durations[io_mode, threads]), 0.01, checkpoint

    monkeypatch.setattr(storage_probe, "_engine_write", fake_write)
    seen = []
    prof = probe_storage(tmp_path, MiB, threads=(2, 1), io_modes=("buffered",), repeats=3,
                         progress=lambda what, done, total: seen.append((what, done, total)))
    assert calls == [("buffered", 1), ("buffered", 2)] * 3
    by = {w.threads: w for w in prof.writes}
    assert by[1].samples == (1.0, 1.2, 9.0) and by[1].seconds == 1.2 and by[1].spread_s == (1.0, 9.0)
    assert by[2].seconds == 0.6 and prof.repeats == 3
    assert [w for w, _, _ in seen[:3]] == ["write buffered x1 (round 1/3)", "cold read (round 1/3)",
                                          "write buffered x2 (round 1/3)"]
    assert [d for _, d, _ in seen] == list(range(1, 10)) and {t for _, _, t in seen} == {9}
    assert StorageProfile.from_json(json.loads(json.dumps(prof.to_json()))) == prof
    assert os.listdir(tmp_path) == []


def test_a_profile_saved_without_rounds_still_loads(tmp_path):
    doc = probe_storage(tmp_path, MiB, threads=(1,), io_modes=("buffered",)).to_json()
    for w in doc["writes"]:
        del w["samples"]
    del doc["repeats"]
    old = StorageProfile.from_json(doc)
    assert old.repeats == 1 and old.writes[0].samples == ()
    assert old.writes[0].spread_s == (old.writes[0].seconds, old.writes[0].seconds)


def test_probe_refuses_bad_arguments_before_writing(tmp_path):
    with pytest.raises(ValueError, match="threads"):
        probe_storage(tmp_path, MiB, threads=(0,))
    with pytest.raises(ValueError, match="io_modes"):
        probe_storage(tmp_path, MiB, io_modes=("fast",))
    with pytest.raises(ValueError, match="nbytes"):
        probe_storage(tmp_path, 1000)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="repeats"):
            probe_storage(tmp_path, MiB, repeats=bad)
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
