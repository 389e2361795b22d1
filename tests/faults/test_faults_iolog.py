"""The engine's I/O recording: every mutating operation, in protocol order, with its bytes."""
import os

from ckptlab import _engine
from ckptlab.core import CheckpointConfig, open_checkpointer
from ckptlab.faults.iolog import marks, parse_io_log, point_census, read_io_log
from faults_helpers import save_steps, small_setup


def test_one_checkpoint_follows_the_commit_protocol(tmp_path):
    d, log = str(tmp_path / "ck"), str(tmp_path / "io.log")
    os.mkdir(d)
    setup = small_setup(shards=1, writer_threads=1)
    save_steps(d, setup, steps=[5], io_log=log)
    recs = read_io_log(log)
    kinds = [r.op for r in recs if not r.is_mark and "step_" in r.path]
    # mkdir tmp, create + fallocate data, write(s), fdatasync, MANIFEST create/write/fsync,
    # fsync tmp dir, rename into place.
    first = {op: kinds.index(op) for op in ("mkdir", "create", "write", "fdatasync", "fsync", "fsync_dir", "rename")}
    assert first["mkdir"] < first["create"] < first["write"] < first["fdatasync"] < first["fsync"] \
        < first["fsync_dir"] < first["rename"]
    rename = next(i for i, r in enumerate(recs) if r.op == "rename")
    root_sync = next(i for i, r in enumerate(recs) if r.op == "fsync_dir" and r.path == d and i > rename)
    ack = next(i for i, r in enumerate(recs) if r.is_mark and r.path == "ack")
    assert rename < root_sync < ack, "acknowledged before the rename was made durable"
    assert marks(recs, "ack")[0].detail() == {"ckpt": "1", "step": "5"}
    assert marks(recs, "start")[0].detail()["dir"] == d
    for r in recs:
        if r.op == "write":
            assert r.data is not None and len(r.data) == r.nbytes
            assert _engine.crc32c(r.data) == r.crc
    census = point_census(recs)
    assert census["before_rename"] == 1 and census["before_chunk_write"] >= 3


def test_without_data_and_torn_tail(tmp_path):
    d, log = str(tmp_path / "ck"), str(tmp_path / "io.log")
    os.mkdir(d)
    save_steps(d, small_setup(), io_log=log, io_log_data=False)
    with open(log, "rb") as f:
        raw = f.read()
    recs = parse_io_log(raw)
    assert all(r.data is None for r in recs) and any(r.op == "write" and r.nbytes for r in recs)
    assert len(parse_io_log(raw[:-7])) == len(recs) - 1  # a torn last record is dropped
    assert marks(recs, "close")


def test_skipped_dir_fsync_shows_in_the_log(tmp_path):
    d, log = str(tmp_path / "ck"), str(tmp_path / "io.log")
    os.mkdir(d)
    save_steps(d, small_setup(), io_log=log, unsafe=["skip_dir_fsync"])
    recs = read_io_log(log)
    # Only the start-up fsync of the directory remains; no temp-dir or post-rename fsync.
    assert [r.path for r in recs if r.op == "fsync_dir"] == [d]


def test_off_by_default_and_through_config(tmp_path, monkeypatch):
    import torch

    monkeypatch.delenv("CKPTLAB_IO_LOG", raising=False)
    d = str(tmp_path / "ck")
    with open_checkpointer("pccheck", d, CheckpointConfig(chunk_bytes=64 << 10)) as ck:
        ck.save(1, {"w": torch.ones(1000)})
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".log")]
    log = str(tmp_path / "cfg.log")
    with open_checkpointer("pccheck", d, CheckpointConfig(chunk_bytes=64 << 10, io_log=log)) as ck:
        ck.save(2, {"w": torch.ones(1000)})
    assert [m.detail()["step"] for m in marks(read_io_log(log), "ack")] == ["2"]
    env_log = str(tmp_path / "env.log")
    monkeypatch.setenv("CKPTLAB_IO_LOG", env_log)
    with open_checkpointer("pccheck", d, CheckpointConfig(chunk_bytes=64 << 10)) as ck:
        ck.save(3, {"w": torch.ones(1000)})
    assert [m.detail()["step"] for m in marks(read_io_log(env_log), "ack")] == ["3"]
