"""Timing records of a save with two writer threads and of a load: every chunk, every
thread, ordered timestamps, bytes adding up to the checkpoint."""
from __future__ import annotations

import os
import threading
import time
import warnings

import numpy as np
import pytest

from profiling_helpers import CHUNK, traced_state
from ckptlab import _engine
from ckptlab.core import CheckpointConfig, open_checkpointer
from ckptlab.profiling import phase, read_trace, record, recording, start_trace, trace_metadata
from ckptlab.profiling.nvtx_ranges import ENGINE_PHASES


def frame(table):
    df = table.to_pandas()
    df["phase"] = df["phase"].astype(str)
    df["thread_name"] = df["thread_name"].astype(str)
    return df


def test_engine_phase_order_matches_the_python_side():
    assert tuple(_engine.phase_names()) == ENGINE_PHASES


def test_save_has_records_from_each_writer_thread_for_each_chunk(traced_run):
    df = frame(traced_run.table)
    n = traced_run.nchunks
    assert n >= 8
    for ph in ("stage", "checksum", "write"):
        rows = df[df.phase == ph]
        assert sorted(rows.chunk) == list(range(n)), f"{ph}: one record per chunk"
    writes = df[df.phase == "write"]
    writers = set(writes.thread_name)
    assert writers == {"ckptlab-writer-0", "ckptlab-writer-1"}, "both writer threads persisted chunks"
    # each writer thread checksums exactly the chunks it writes, on the same OS thread
    for tid, rows in writes.groupby("thread"):
        sums = df[(df.phase == "checksum") & (df.thread == tid)]
        assert sorted(sums.chunk) == sorted(rows.chunk)
    # staging runs on the caller's thread, which keeps its own name
    stage_threads = set(df[df.phase == "stage"].thread_name)
    assert stage_threads == {"MainThread / ckptlab-save"}
    assert set(df[df.phase.isin(["manifest", "commit"])].thread_name) == {"ckptlab-commit"}


def test_save_timestamps_are_ordered(traced_run):
    df = frame(traced_run.table)
    assert (df.t_end_ns >= df.t_begin_ns).all()
    save = df[df.phase.isin(["snapshot", "stage", "checksum", "write", "fsync", "manifest", "commit"])]
    by = {ph: save[save.phase == ph].set_index("chunk") for ph in ("stage", "checksum", "write")}
    for c in range(traced_run.nchunks):
        st, cs, wr = by["stage"].loc[c], by["checksum"].loc[c], by["write"].loc[c]
        assert st.t_end_ns <= cs.t_begin_ns <= cs.t_end_ns <= wr.t_begin_ns <= wr.t_end_ns, f"chunk {c}"
    # a writer thread does one thing at a time
    for _, rows in save[save.thread_name.str.startswith("ckptlab-writer")].groupby("thread"):
        rows = rows.sort_values("t_begin_ns")
        assert (rows.t_begin_ns.values[1:] >= rows.t_end_ns.values[:-1]).all()
    snap = save[save.phase == "snapshot"].iloc[0]
    stages = save[save.phase == "stage"]
    assert snap.t_begin_ns <= stages.t_begin_ns.min() and stages.t_end_ns.max() <= snap.t_end_ns
    manifest = save[save.phase == "manifest"].iloc[0]
    commit = save[save.phase == "commit"].iloc[0]
    last_data = save[save.phase.isin(["write", "fsync"])].t_end_ns.max()
    assert last_data <= manifest.t_begin_ns <= manifest.t_end_ns <= commit.t_begin_ns


def test_save_bytes_sum_to_the_checkpoint_size(traced_run):
    df = frame(traced_run.table)
    save = df[df.ckpt_id == 1]
    data_files = [e for e in os.scandir(traced_run.ckpt_path) if e.name.startswith("data_")]
    assert len(data_files) == 2 and sum(e.stat().st_size for e in data_files) == traced_run.stream_bytes
    for ph in ("stage", "checksum", "write", "fsync"):
        assert save[save.phase == ph].nbytes.sum() == traced_run.stream_bytes, ph
    assert traced_run.total_bytes <= traced_run.stream_bytes < traced_run.total_bytes + CHUNK
    assert save[save.phase == "snapshot"].nbytes.tolist() == [traced_run.total_bytes]
    assert save[save.phase == "commit"].nbytes.tolist() == [traced_run.total_bytes]
    # write offsets: chunk c is at (c // shards) * chunk_bytes in its shard file
    writes = save[save.phase == "write"]
    assert (writes.offset == (writes.chunk // 2) * CHUNK).all()


def test_load_records_cover_every_chunk_once(traced_run):
    df = frame(traced_run.table)
    for ph in ("read", "verify"):
        rows = df[df.phase == ph]
        assert sorted(rows.chunk) == list(range(traced_run.nchunks)), ph
        assert rows.nbytes.sum() == traced_run.stream_bytes
        assert rows.thread_name.str.startswith("ckptlab-reader-").all()
        assert (rows.step == 3).all()
    reads = df[df.phase == "read"].set_index("chunk")
    verifies = df[df.phase == "verify"].set_index("chunk")
    assert (reads.t_end_ns <= verifies.loc[reads.index].t_begin_ns).all()
    load = df[df.phase == "load"].iloc[0]
    assert load.t_begin_ns <= reads.t_begin_ns.min() and verifies.t_end_ns.max() <= load.t_end_ns


def test_python_phases_nest_around_engine_records(traced_run):
    df = frame(traced_run.table)
    main = df[df.thread_name == "MainThread / ckptlab-save"]
    save = main[main.phase == "save"].iloc[0]
    capture = main[main.phase == "capture"].iloc[0]
    submit = main[main.phase == "submit"].iloc[0]
    snap = main[main.phase == "snapshot"].iloc[0]
    assert save.t_begin_ns <= capture.t_begin_ns <= capture.t_end_ns <= submit.t_begin_ns
    assert submit.t_begin_ns <= snap.t_begin_ns <= snap.t_end_ns <= submit.t_end_ns <= save.t_end_ns
    assert submit["nbytes"] == traced_run.total_bytes and save.step == 3
    assert main.thread.nunique() == 1 and main.thread.iloc[0] == threading.get_native_id()


def test_cpu_columns_and_run_id(traced_run):
    df = frame(traced_run.table)
    ncpu = os.cpu_count()
    assert df.cpu_begin.between(0, ncpu - 1).all() and df.cpu_end.between(0, ncpu - 1).all()
    assert set(df.run_id.astype(str)) == {traced_run.run_id}
    assert trace_metadata(traced_run.table)["dropped_records"] == "0"


def test_full_ring_drops_and_counts_records(tmp_path):
    cfg = CheckpointConfig(writer_threads=1, chunk_bytes=CHUNK, trace=True, trace_capacity=4)
    ck = open_checkpointer("pccheck", tmp_path / "ck", cfg)
    session = start_trace(tmp_path / "t.arrow", ck, drain_interval_s=None)
    ck.save(1, traced_state(1 << 20))  # 16 chunks: 33 writer records into a 4-record ring
    ck.wait()
    ck.close()
    with pytest.warns(RuntimeWarning, match="dropped"):
        path = session.close()
    meta = trace_metadata(read_trace(path))
    assert int(meta["dropped_records"]) > 0
    assert int(meta["dropped_records"]) == ck.engine.trace_dropped


def test_background_drain_keeps_small_rings_from_overflowing(tmp_path):
    cfg = CheckpointConfig(writer_threads=2, chunk_bytes=CHUNK, trace=True, trace_capacity=256)
    ck = open_checkpointer("pccheck", tmp_path / "ck", cfg)
    session = start_trace(tmp_path / "t.arrow", ck, drain_interval_s=0.01)
    for step in range(1, 6):  # 5 x ~35 records per writer ring, drained between saves
        ck.save(step, traced_state(1 << 20))
        ck.wait()
        time.sleep(0.05)
    ck.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = session.close()
    df = frame(read_trace(path))
    assert sorted(df[df.phase == "commit"].step) == [1, 2, 3, 4, 5]
    assert ck.engine.trace_dropped == 0


def test_spill_keeps_every_row_and_leaves_no_files(tmp_path):
    cfg = CheckpointConfig(writer_threads=2, chunk_bytes=CHUNK, trace=True)
    ck = open_checkpointer("pccheck", tmp_path / "ck", cfg)
    out = tmp_path / "out"
    session = start_trace(out / "t.arrow", ck, drain_interval_s=None)
    session.spill_rows = 10
    for step in (1, 2, 3):
        with phase("save", step=step):
            ck.save(step, traced_state(1 << 19))
        ck.wait()
        session.collect()  # spills past 10 rows
    assert session._spill_path and os.path.exists(session._spill_path)
    in_memory = session.table()
    ck.close()
    path = session.close()
    table = read_trace(path)
    assert table.num_rows == session.rows >= in_memory.num_rows > 30
    assert sorted(os.listdir(out)) == ["t.arrow"]
    df = frame(table)
    assert sorted(df[df.phase == "save"].step) == [1, 2, 3]
    per_step = df[df.phase == "write"].groupby("step").chunk.nunique().tolist()
    assert len(per_step) == 3 and len(set(per_step)) == 1 and per_step[0] >= 8


def test_python_records_without_a_session_cost_nothing_and_record_nothing(tmp_path):
    assert not recording()
    with phase("forward", step=1):
        pass
    record("d2h", 1, 2)  # no session: dropped silently
    session = start_trace(tmp_path / "t.arrow", drain_interval_s=None)
    assert recording()
    t0 = time.monotonic_ns()

    def worker():
        with phase("backward", step=2, nbytes=5):
            time.sleep(0.01)

    th = threading.Thread(target=worker, name="bwd-thread")
    with phase("forward", step=2):
        th.start()
        th.join()
    record("d2h", t0, t0 + 1000, step=2, nbytes=4096, cpu_begin=0, cpu_end=0)
    session.close()
    assert not recording()
    df = frame(read_trace(tmp_path / "t.arrow"))
    assert sorted(df.phase) == ["backward", "d2h", "forward"]
    bwd = df[df.phase == "backward"].iloc[0]
    assert bwd.thread_name == "bwd-thread" and bwd["nbytes"] == 5 and bwd.t_end_ns - bwd.t_begin_ns >= 10_000_000
    fwd = df[df.phase == "forward"].iloc[0]
    assert fwd.t_begin_ns <= bwd.t_begin_ns <= bwd.t_end_ns <= fwd.t_end_ns
    assert df[df.phase == "d2h"].nbytes.tolist() == [4096]
    assert np.issubdtype(df.t_begin_ns.dtype, np.unsignedinteger)


def test_a_recording_session_attaches_checkpointers_by_itself(tmp_path):
    """The training loop's pattern: open the checkpointer (default config, trace=False), start
    the trace with only a path, save. The engine opens at the first save, while the session
    records, so it keeps records and the session drains it."""
    ck = open_checkpointer("pccheck", tmp_path / "ck", CheckpointConfig(writer_threads=2, chunk_bytes=CHUNK))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with start_trace(tmp_path / "t.arrow", drain_interval_s=None) as session:
            ck.save(1, traced_state(1 << 19))
            ck.wait()
    ck.close()
    df = frame(read_trace(session.path))
    assert {"snapshot", "stage", "write", "checksum", "fsync", "manifest", "commit", "capture", "submit"} <= set(df.phase)
    assert trace_metadata(read_trace(session.path))["config"]["checkpointers"][0]["kind"] == "pccheck"
    # outside a session, a default checkpointer keeps no records
    ck2 = open_checkpointer("pccheck", tmp_path / "ck2", CheckpointConfig(chunk_bytes=CHUNK))
    ck2.save(1, traced_state(1 << 19))
    ck2.close()
    assert len(ck2.engine.drain_trace()["t_begin_ns"]) == 0
