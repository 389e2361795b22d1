"""The record path's contracts: one column list, the RecordSource protocol, cheap imports."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from profiling_helpers import CHUNK, traced_state
from ckptlab.core import CheckpointConfig, open_checkpointer
from ckptlab.profiling import DrainedRecords, RecordSource, read_trace, start_trace, trace_metadata
from ckptlab.profiling.schema import RAW_COLUMNS, SCHEMA, Record, file_columns
from ckptlab.profiling.sources import announce


def test_every_column_list_derives_from_raw_columns():
    assert Record._fields == tuple(RAW_COLUMNS)
    assert [f.name for f in SCHEMA] == file_columns()
    assert [c for c in file_columns() if c not in ("run_id", "thread_name")] == list(RAW_COLUMNS)


def test_the_engine_hands_over_the_raw_columns(tmp_path):
    ck = open_checkpointer("pccheck", tmp_path / "ck", CheckpointConfig(chunk_bytes=CHUNK, trace=True))
    ck.save(1, traced_state(1 << 18))
    ck.close()
    drained = ck.drain_records()
    assert list(drained.columns) == list(RAW_COLUMNS)
    engine = {n: str(np.dtype(a.dtype)) for n, a in drained.columns.items()}
    assert engine == RAW_COLUMNS  # phase too: int16, the file's dictionary index type
    assert {name for _, name in drained.thread_names} >= {"ckptlab-writer-0", "ckptlab-commit"}


class FakeSource:
    """A RecordSource that is no checkpointer: two records on a thread of its own."""

    def __init__(self, dropped: int = 0) -> None:
        self.drains = 0
        self.dropped = dropped

    def drain_records(self) -> DrainedRecords:
        self.drains += 1
        if self.drains > 1:
            return DrainedRecords(thread_names=[(4242, "fake-writer")], dropped=self.dropped)
        cols = {n: np.zeros(2, dtype=t) for n, t in RAW_COLUMNS.items()}
        cols.update(thread=np.array([4242, 4242], np.int32), phase=np.array([3, 3], np.int16),
                    t_begin_ns=np.array([10, 30], np.uint64), t_end_ns=np.array([20, 40], np.uint64))
        return DrainedRecords(cols, [(4242, "fake-writer")], dropped=self.dropped)

    def describe(self) -> dict:
        return {"kind": "fake", "directory": None, "config": {"x": 1}, "affinity": "writers pinned to 9"}


def test_any_record_source_is_drained_and_described(tmp_path):
    src = FakeSource(dropped=3)
    assert isinstance(src, RecordSource) and not isinstance(object(), RecordSource)
    session = start_trace(tmp_path / "t.arrow", src, drain_interval_s=None)
    assert session.attach(object()) is False
    with pytest.warns(RuntimeWarning, match="3 engine records were dropped"):
        session.close()
    table = read_trace(session.path)
    df = table.to_pandas()
    assert df.phase.astype(str).tolist() == ["write", "write"]
    assert set(df.thread_name.astype(str)) == {"fake-writer"}
    meta = trace_metadata(table)
    assert meta["config"]["checkpointers"] == [src.describe()]
    assert meta["affinity_policy"] == "writers pinned to 9" and meta["dropped_records"] == "3"


def test_announced_sources_are_adopted_by_recording_sessions_only(tmp_path):
    early = FakeSource()
    announce(early)  # no session records: nobody adopts it
    with start_trace(tmp_path / "t.arrow", drain_interval_s=None) as session:
        late = FakeSource()
        announce(late)
    assert early.drains == 0 and late.drains >= 1
    assert read_trace(session.path).num_rows == 2


def test_pccheck_is_a_record_source(tmp_path):
    ck = open_checkpointer("pccheck", tmp_path / "ck", CheckpointConfig(chunk_bytes=CHUNK))
    try:
        assert isinstance(ck, RecordSource)
        assert ck.describe()["records"] is None and ck.drain_records() == DrainedRecords()
    finally:
        ck.close()
    torchsave = open_checkpointer("torchsave", tmp_path / "ts", CheckpointConfig())
    assert not isinstance(torchsave, RecordSource)
    torchsave.close()


def test_phases_need_no_pyarrow():
    code = ("import sys\nfrom ckptlab.profiling import phase, record, recording\n"
            "with phase('forward', step=1):\n    pass\n"
            "assert 'pyarrow' not in sys.modules, 'importing phase pulled in pyarrow'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr


def test_records_of_another_thread_keep_their_fields(tmp_path):
    from ckptlab.profiling import phase

    with start_trace(tmp_path / "t.arrow", drain_interval_s=None) as session:
        t = threading.Thread(target=lambda: phase("data", step=7, nbytes=9).__enter__().__exit__(None, None, None),
                             name="loader")
        t.start()
        t.join()
    row = read_trace(session.path).to_pandas().iloc[0]
    assert (str(row.phase), row.step, row["nbytes"], str(row.thread_name)) == ("data", 7, 9, "loader")
    assert row.chunk == -1 and row.run_ns >= 0
