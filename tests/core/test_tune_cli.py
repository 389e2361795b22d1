"""``ckptlab tune DIR``: table or JSON, clear errors for bad flags and a directory it cannot
write, and ``CheckpointConfig.auto`` from the JSON it saves (no probing)."""
import json
import os

import pytest

from ckptlab.core import cli
from ckptlab.core.config import CheckpointConfig

MiB = 1 << 20
FLAGS = ["--state-mb", "64", "--iteration-s", "0.5", "--probe-mb", "1", "--threads", "1,2"]


def test_tune_json_schema_and_save(tmp_path, capsys):
    saved = tmp_path / "tune.json"
    d = tmp_path / "disk"
    d.mkdir()
    assert cli.main(["tune", str(d), *FLAGS, "--json", "--save", str(saved)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(saved.read_text())
    assert doc["schema"] == "ckptlab.tune/1"
    assert doc["inputs"] == {"state_bytes": 64 * MiB, "iteration_s": 0.5, "budget": 0.01,
                             "staging_budget_bytes": doc["inputs"]["staging_budget_bytes"], "lost_per_ckpt_s": None}
    rec = doc["recommendation"]
    assert set(rec) >= {"writer_threads", "io_mode", "chunk_bytes", "max_inflight", "staging_bytes",
                        "interval_steps", "interval_s", "reasons"}
    assert rec["writer_threads"] in (1, 2) and rec["interval_steps"] >= 1 and rec["reasons"]
    assert {w["threads"] for w in doc["measured"]["writes"]} == {1, 2}
    assert doc["measured"]["repeats"] == 3  # the default
    assert all(len(w["samples"]) == 3 and sorted(w["samples"])[1] == w["seconds"] for w in doc["measured"]["writes"])
    assert os.listdir(d) == []  # the probe's files are gone


def test_tune_table(tmp_path, capsys):
    assert cli.main(["tune", str(tmp_path), *FLAGS]) == 0
    out = capsys.readouterr().out
    assert "writer_threads" in out and "max_inflight" in out and "interval" in out
    assert "median of 3 rounds" in out and "fastest-slowest s" in out
    assert os.listdir(tmp_path) == []


def test_tune_table_of_one_round_has_no_spread(tmp_path, capsys):
    assert cli.main(["tune", str(tmp_path), *FLAGS, "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "writer_threads" in out and "rounds" not in out and "fastest-slowest" not in out


@pytest.mark.parametrize("flags, message", [
    (["--state-mb", "0", "--iteration-s", "1"], "--state-mb"),
    (["--state-mb", "8", "--iteration-s", "-1"], "--iteration-s"),
    (["--state-mb", "8", "--iteration-s", "1", "--budget", "2"], "--budget"),
    (["--state-mb", "8", "--iteration-s", "1", "--threads", "1,x"], "--threads"),
    (["--state-mb", "8", "--iteration-s", "1", "--threads", "0"], "--threads"),
    (["--state-mb", "8", "--iteration-s", "1", "--probe-mb", "0"], "--probe-mb"),
    (["--state-mb", "8", "--iteration-s", "1", "--repeats", "0"], "--repeats"),
    (["--state-mb", "8", "--iteration-s", "1", "--repeats", "2.5"], "--repeats"),
    (["--state-mb", "8", "--state-bytes", "8", "--iteration-s", "1"], "not allowed with"),
    (["--iteration-s", "1"], "--state-bytes"),
])
def test_tune_refuses_bad_flags(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(["tune", str(tmp_path), *flags])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_tune_refuses_a_directory_it_cannot_write(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert cli.main(["tune", str(missing), *FLAGS]) == 2
    assert "not a directory" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        # As root permissions do not stop writes; /proc takes no new entries from anyone.
        target = "/proc" if os.access(ro, os.W_OK) else str(ro)
        assert cli.main(["tune", target, *FLAGS]) == 2
        assert f"cannot write to {target}" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


def test_auto_from_a_saved_tune_json_does_not_probe(tmp_path, monkeypatch):
    from ckptlab.core import storage_probe

    saved = tmp_path / "tune.json"
    assert cli.main(["tune", str(tmp_path), *FLAGS, "--json", "--save", str(saved)]) == 0
    doc = json.loads(saved.read_text())
    # Replace the measured writes by known ones: 2 buffered threads clearly fastest.
    doc["measured"]["writes"] = [{"io_mode": "buffered", "threads": 1, "nbytes": MiB, "seconds": 0.01},
                                 {"io_mode": "buffered", "threads": 2, "nbytes": MiB, "seconds": 0.005}]
    saved.write_text(json.dumps(doc))
    monkeypatch.setattr(storage_probe, "probe_storage", lambda *a, **k: pytest.fail("auto probed"))
    cfg = CheckpointConfig.auto(tmp_path / "ckpt", state_bytes=64 * MiB, iteration_s=0.5, probe=saved,
                                staging_budget_bytes=256 * MiB, keep_last=3)
    assert isinstance(cfg, CheckpointConfig)
    assert (cfg.writer_threads, cfg.io_mode, cfg.max_inflight) == (2, "buffered", 2)
    assert cfg.staging_bytes == 128 * MiB and cfg.chunk_bytes == 8 * MiB and cfg.keep_last == 3
    with pytest.raises(ValueError, match="max_inflight"):
        CheckpointConfig.auto(tmp_path, state_bytes=64 * MiB, iteration_s=0.5, probe=saved, max_inflight=0)
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other"}')
    with pytest.raises(ValueError, match="ckptlab.tune/1"):
        CheckpointConfig.auto(tmp_path, state_bytes=64 * MiB, iteration_s=0.5, probe=bad)


def test_auto_probes_with_the_rounds_asked_for(tmp_path, monkeypatch):
    from ckptlab.core import storage_probe

    asked = {}
    real = storage_probe.probe_storage

    def recording(directory, nbytes, **kwargs):
        asked.update(kwargs)
        return real(directory, nbytes, **kwargs)

    monkeypatch.setattr(storage_probe, "probe_storage", recording)
    cfg = CheckpointConfig.auto(tmp_path / "ckpt", state_bytes=2 * MiB, iteration_s=0.1, probe_bytes=MiB,
                                probe_threads=(1,), probe_repeats=2)
    assert asked["repeats"] == 2 and cfg.writer_threads == 1
