"""The engine's streams (open_stream / acquire_chunk / queue_chunk / seal / abort): the
caller fills staging chunks itself (core/staging_fill.py). A stream commits only once every
chunk is durable and it is sealed; an aborted one leaves nothing behind and reports nothing
through take_failure(); a full staging pool blocks acquire_chunk()."""
from __future__ import annotations

import ctypes
import json
import os
import threading

import pytest
import torch

from ckptlab import _engine
from ckptlab.core.recovery import read_checkpoint
from ckptlab.core.state import lift_tensors, plan_storages, stream_layout

CHUNK = 1 << 16


def _engine_at(directory, staging_chunks: int = 4, **kw) -> _engine.Engine:
    return _engine.Engine(dir=str(directory), writer_threads=2, max_inflight=2, chunk_bytes=CHUNK,
                          staging_bytes=CHUNK * staging_chunks, keep_last=0, prefault=False, **kw)


def _fill(address: int, data: bytes) -> None:
    ctypes.memmove(address, data, len(data))


def _stream(eng, step: int, payload: bytes, order=None, seal: bool = True, meta: str = "{}") -> int:
    """Fill a stream with `payload` (zero-padded), queueing chunks in `order` (default: as handed out)."""
    sid = eng.open_stream(step, meta, len(payload))
    chunks = []
    while True:
        try:
            chunk, address, offset, nbytes = eng.acquire_chunk(sid)
        except ValueError:
            break
        part = payload[offset:offset + nbytes]
        _fill(address, part + bytes(nbytes - len(part)))
        chunks.append(chunk)
    for c in (order(chunks) if order else chunks):
        eng.queue_chunk(sid, c)
    if seal:
        eng.seal(sid)
    return sid


def _files(directory) -> list[str]:
    return sorted(os.listdir(directory))


def _checkpoint_stream(payload: bytes) -> tuple[str, bytes]:
    """The meta and byte stream of the state {"a": payload as a uint8 tensor}, laid out as
    ckptlab lays out every checkpoint (core/state.py)."""
    tensor = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    skeleton, tensors = lift_tensors({"a": tensor})
    offsets, total, meta = stream_layout(skeleton, plan_storages(tensors))
    stream = bytearray(total)
    stream[:len(skeleton)] = skeleton
    stream[offsets[0]:offsets[0] + len(payload)] = payload
    return json.dumps(meta), bytes(stream)


def test_a_stream_filled_out_of_order_commits_its_bytes(tmp_path):
    payload = os.urandom(3 * CHUNK + 1234)
    meta, stream = _checkpoint_stream(payload)
    eng = _engine_at(tmp_path, staging_chunks=8)
    try:
        _stream(eng, 1, stream, order=lambda chunks: chunks[::-1], meta=meta)  # 4 chunks, queued last first
        assert eng.wait(30) and eng.take_failure() is None and eng.last_committed_step == 1
    finally:
        eng.close()
    (name,) = [n for n in _files(tmp_path) if n.startswith("step_")]
    m, _, tensors = read_checkpoint(str(tmp_path / name))  # every chunk's CRC verified
    assert m.total_bytes == len(stream) and tensors[0].numpy().tobytes() == payload


def test_an_unsealed_stream_is_written_but_not_committed_until_sealed(tmp_path):
    eng = _engine_at(tmp_path)
    try:
        sid = _stream(eng, 1, os.urandom(2 * CHUNK), seal=False)
        assert not eng.wait(0.3), "an unsealed stream must not be acknowledged"
        assert eng.last_committed_step == -1 and not any(n.startswith("step_") for n in _files(tmp_path))
        eng.seal(sid)
        assert eng.wait(30) and eng.last_committed_step == 1
    finally:
        eng.close()


def test_an_aborted_stream_leaves_nothing_and_reports_nothing(tmp_path):
    eng = _engine_at(tmp_path)
    try:
        sid = eng.open_stream(1, "{}", 3 * CHUNK)
        chunk, address, _, nbytes = eng.acquire_chunk(sid)
        _fill(address, bytes(nbytes))
        eng.queue_chunk(sid, chunk)
        eng.acquire_chunk(sid)  # held, never queued: abort returns its buffer
        eng.abort(sid, "torn")
        assert eng.wait(30) and eng.take_failure() is None
        assert eng.staging_free_buffers == eng.staging_buffers
        assert [r["ok"] for r in eng.commit_records()] == [False]
        assert not any(n.startswith((".step", "step_")) for n in _files(tmp_path))
        _stream(eng, 2, b"after")  # the engine goes on
        assert eng.wait(30) and eng.last_committed_step == 2
    finally:
        eng.close()


def test_acquire_blocks_while_staging_is_full(tmp_path):
    eng = _engine_at(tmp_path, staging_chunks=2)
    try:
        sid = eng.open_stream(1, "{}", 3 * CHUNK)
        first = eng.acquire_chunk(sid)
        second = eng.acquire_chunk(sid)
        got: list[tuple] = []
        t = threading.Thread(target=lambda: got.append(eng.acquire_chunk(sid)))
        t.start()
        t.join(0.3)
        assert t.is_alive() and not got, "a third chunk was handed out with both staging buffers held"
        for chunk, address, _, nbytes in (first, second):
            _fill(address, bytes(nbytes))
            eng.queue_chunk(sid, chunk)
        t.join(30)
        assert got and got[0][0] == 2
        _fill(got[0][1], bytes(got[0][3]))
        eng.queue_chunk(sid, 2)
        eng.seal(sid)
        assert eng.wait(30) and eng.last_committed_step == 1
    finally:
        eng.close()


def test_misuse_is_refused_with_a_clear_error(tmp_path):
    eng = _engine_at(tmp_path)
    try:
        with pytest.raises(ValueError, match="not an open stream"):
            eng.acquire_chunk(99)
        sid = eng.open_stream(5, "{}", 100)
        with pytest.raises(ValueError, match="before every chunk is queued"):
            eng.seal(sid)
        with pytest.raises(ValueError, match="was not handed out"):
            eng.queue_chunk(sid, 0)
        chunk, *_ = eng.acquire_chunk(sid)
        with pytest.raises(ValueError, match="no chunk left"):
            eng.acquire_chunk(sid)
        eng.queue_chunk(sid, chunk)
        with pytest.raises(ValueError, match="queued already"):
            eng.queue_chunk(sid, chunk)
        eng.seal(sid)
        with pytest.raises(ValueError, match="not an open stream"):
            eng.seal(sid)
        with pytest.raises(ValueError, match="greater than the last saved step"):
            eng.open_stream(5, "{}", 100)
    finally:
        eng.close()


def test_close_aborts_a_stream_left_open(tmp_path):
    eng = _engine_at(tmp_path)
    eng.open_stream(1, "{}", 2 * CHUNK)
    eng.close()  # returns: the stream is aborted, not waited for
    assert not any(n.startswith((".step", "step_")) for n in _files(tmp_path))
    assert [r["ok"] for r in eng.commit_records()] == [False]


def test_each_filled_chunk_has_a_stage_record(tmp_path):
    """The what-if replay (analysis/whatif.py) takes a chunk's stage end as when it was ready."""
    eng = _engine_at(tmp_path, trace=True)
    try:
        sid = _stream(eng, 1, os.urandom(3 * CHUNK))
        assert eng.wait(30)
        cols = eng.drain_trace()
    finally:
        eng.close()
    stage = _engine.phase_names().index("stage")
    rows = [i for i, p in enumerate(cols["phase"]) if p == stage]
    assert sorted(int(cols["chunk"][i]) for i in rows) == [0, 1, 2]
    assert all(int(cols["ckpt_id"][i]) == sid and cols["t_end_ns"][i] >= cols["t_begin_ns"][i] > 0 for i in rows)
    assert [int(cols["offset"][i]) for i in sorted(rows, key=lambda i: cols["chunk"][i])] == [0, CHUNK, 2 * CHUNK]


def test_stage_records_are_listed_under_the_stream_role(tmp_path):
    eng = _engine_at(tmp_path, trace=True)
    try:
        _stream(eng, 1, os.urandom(CHUNK))
        assert eng.wait(30)
        tid = threading.get_native_id()
        names = dict(eng.thread_names())
    finally:
        eng.close()
    assert names.get(tid) == "ckptlab-stream"
