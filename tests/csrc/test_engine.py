"""The engine through its bindings: checksums, fault specs, direct I/O, the directory lock,
crash debris cleanup, verified reads."""
import os
import signal
import threading
import time
import zlib

import numpy as np
import pytest

from ckptlab import _engine
from ckptlab.core.manifest import decode_manifest


def test_crc32c_known_vectors_and_continuation():
    assert _engine.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert _engine.crc32c(b"") == 0
    assert _engine.crc32c(b"\0" * 32) == 0x8A9136AA  # RFC 3720 B.4
    data = os.urandom(100_003)
    assert _engine.crc32c(data[50_000:], _engine.crc32c(data[:50_000])) == _engine.crc32c(data)
    assert _engine.crc32c(np.frombuffer(data, np.uint8)) == _engine.crc32c(data)
    assert _engine.crc32c_implementation() in ("sse4.2", "armv8-crc", "table")


def test_crc32c_matches_an_independent_implementation():
    crc32c = pytest.importorskip("crc32c") if False else None  # noqa: F841 (no extra dependency needed)
    # bitwise reference implementation of CRC-32C
    def ref(data: bytes) -> int:
        c = 0xFFFFFFFF
        for b in data:
            c ^= b
            for _ in range(8):
                c = (c >> 1) ^ (0x82F63B78 & -(c & 1))
        return c ^ 0xFFFFFFFF

    for n in (1, 7, 8, 9, 63, 1000, 3 * 4096 - 1, 3 * 4096, 3 * 4096 + 9, 7 * 4096 + 3):  # serial and 3-stream paths
        d = os.urandom(n)
        assert _engine.crc32c(d) == ref(d)
    assert ref(b"x") != zlib.crc32(b"x")  # it is not plain CRC-32


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("point=nowhere", "unknown point"),
        ("point=before_rename,action=explode", "unknown action"),
        ("point=before_rename,hit=0", "hit=0"),
        ("point=before_rename,color=red", "unknown key"),
        ("action=kill", "no point="),
        ("point", "key=value"),
    ],
)
def test_fault_spec_errors_name_the_token(spec, needle):
    with pytest.raises(ValueError, match=needle):
        _engine.validate_fault_spec(spec)


def test_fault_spec_accepts_several_rules():
    _engine.validate_fault_spec("point=before_rename,ckpt=3,action=kill; point=before_gc,hit=2,action=delay=5;;")


def test_direct_io_probe_answers(tmp_path):
    ok, reason = _engine.probe_direct_io(str(tmp_path))
    assert ok or reason


EMPTY_LAYOUT = '{"objects":[0,0],"storages":[],"tensors":[]}'  # the meta a pccheck manifest must carry


def _submit(engine, step, arr):
    return engine.submit(step, EMPTY_LAYOUT, [(arr.ctypes.data, arr.nbytes, 0)], arr.nbytes)


def test_second_writer_on_the_same_directory_is_refused(tmp_path):
    e = _engine.Engine(str(tmp_path), chunk_bytes=65536, staging_bytes=65536 * 2, prefault=False)
    with pytest.raises(RuntimeError, match="another ckptlab checkpointer is writing"):
        _engine.Engine(str(tmp_path), chunk_bytes=65536, staging_bytes=65536 * 2)
    e.close()
    _engine.Engine(str(tmp_path), chunk_bytes=65536, staging_bytes=65536 * 2).close()


def test_missing_directory_is_an_oserror_with_the_path(tmp_path):
    with pytest.raises(OSError) as info:
        _engine.Engine(str(tmp_path / "nope"))
    assert info.value.filename == str(tmp_path / "nope")


def test_open_cleans_crash_debris_and_restores_a_replaced_checkpoint(tmp_path):
    arr = np.arange(20_000, dtype=np.float32)
    e = _engine.Engine(str(tmp_path), chunk_bytes=65536, staging_bytes=65536 * 2, keep_last=0)
    _submit(e, 1, arr)
    e.wait()
    e.close()
    os.rename(tmp_path / "step_000000000001", tmp_path / ".step_000000000001.replaced-9")
    (tmp_path / ".step_000000000002.tmp-1-2").mkdir()
    (tmp_path / ".step_000000000002.tmp-1-2" / "data_000.bin").write_bytes(b"partial")
    (tmp_path / ".step_000000000000.deleting-3").mkdir()
    _engine.Engine(str(tmp_path), chunk_bytes=65536, staging_bytes=65536 * 2).close()
    assert sorted(n for n in os.listdir(tmp_path) if "step" in n) == ["step_000000000001"]


def test_engine_layout_shards_and_checksums(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, 5 * 65536 + 123, dtype=np.uint8)
    e = _engine.Engine(str(tmp_path), writer_threads=2, shards=2, chunk_bytes=65536, staging_bytes=65536 * 3)
    assert _submit(e, 1, arr) == 1
    e.wait()
    assert e.take_failure() is None and e.last_committed_step == 1
    e.close()
    d = tmp_path / "step_000000000001"
    m = decode_manifest((d / "MANIFEST").read_bytes())
    assert [f.name for f in m.files] == ["data_000.bin", "data_001.bin"]
    assert m.total_bytes == arr.nbytes and m.stream_bytes % 4096 == 0 and len(m.chunks) == 6
    stream = bytearray()
    for i, c in enumerate(m.chunks):
        raw = (d / m.files[c.file].name).read_bytes()[c.offset:c.offset + c.nbytes]
        assert _engine.crc32c(raw) == c.crc and c.file == i % 2
        stream += raw
    assert bytes(stream[: arr.nbytes]) == arr.tobytes() and not any(stream[arr.nbytes:])


def test_read_verified_copies_pieces_and_reports_bad_chunks(tmp_path):
    data = os.urandom(3 * 65536)
    f = tmp_path / "blob"
    f.write_bytes(data)
    dst = np.zeros(100, dtype=np.uint8)
    tasks = [(str(f), 65536, 65536, _engine.crc32c(data[65536:131072]), 1, [(10, dst.ctypes.data, 100)])]
    r = _engine.read_verified(tasks, threads=2)
    assert r["failures"] == [] and bytes(dst) == data[65546:65646]
    bad = [(str(f), 0, 65536, 123, 0, []), (str(f), 3 * 65536, 4096, 0, 3, []), (str(tmp_path / "gone"), 0, 1, 0, 4, [])]
    kinds = sorted(x["kind"] for x in _engine.read_verified(bad, threads=3)["failures"])
    assert kinds == ["checksum", "io", "truncated"]
    with pytest.raises(ValueError, match="outside its chunk"):
        _engine.read_verified([(str(f), 0, 10, 0, 0, [(5, dst.ctypes.data, 10)])])


def test_segments_must_be_sorted_and_inside(tmp_path):
    arr = np.zeros(100, dtype=np.uint8)
    e = _engine.Engine(str(tmp_path), chunk_bytes=65536, staging_bytes=65536)
    with pytest.raises(ValueError, match="sorted"):
        e.submit(1, "{}", [(arr.ctypes.data, 100, 50), (arr.ctypes.data, 10, 0)], 200)
    with pytest.raises(ValueError, match="sorted"):
        e.submit(1, "{}", [(arr.ctypes.data, 100, 150)], 200)
    e.close()


def test_bad_engine_options(tmp_path):
    with pytest.raises(ValueError, match="multiple of 65536"):
        _engine.Engine(str(tmp_path), chunk_bytes=1000)
    with pytest.raises(ValueError, match="io_mode"):
        _engine.Engine(str(tmp_path), io_mode="turbo")
    with pytest.raises(ValueError, match="unknown durability mutation"):
        _engine.Engine(str(tmp_path), unsafe=["skip_all"])


def test_durability_mutations_are_the_names_engine_takes(tmp_path):
    names = _engine.durability_mutations()
    assert isinstance(names, tuple) and len(names) == len(set(names)) == 5
    assert "skip_data_fsync" in names and "unordered_commit" in names
    for name in names:  # each one alone, then all together
        (tmp_path / name).mkdir()
        _engine.Engine(str(tmp_path / name), unsafe=[name], chunk_bytes=65536, staging_bytes=65536,
                       prefault=False).close()
    _engine.Engine(str(tmp_path), unsafe=list(names), chunk_bytes=65536, staging_bytes=65536, prefault=False).close()


def _held_engine(tmp_path, delay_ms):
    """An engine whose first checkpoint sits `delay_ms` at before_rename (docs/FAULTS.md)."""
    e = _engine.Engine(str(tmp_path), writer_threads=1, chunk_bytes=65536, staging_bytes=65536 * 2,
                       prefault=False, faults=f"point=before_rename,action=delay={delay_ms}")
    _submit(e, 1, np.arange(10_000, dtype=np.float32))
    return e


def test_wait_timeout_is_a_deadline(tmp_path):
    e = _held_engine(tmp_path, 800)
    try:
        t0 = time.monotonic()
        assert e.wait(timeout=0.05) is False
        waited = time.monotonic() - t0
        assert 0.04 <= waited < 0.5, waited
        assert e.wait(0) is False and e.inflight == 1 and e.last_committed_step == -1
        assert e.wait() is True
        assert e.inflight == 0 and e.last_committed_step == 1 and e.take_failure() is None
    finally:
        e.close()


def test_wait_polls_an_idle_engine_and_refuses_bad_timeouts(tmp_path):
    e = _engine.Engine(str(tmp_path), chunk_bytes=65536, staging_bytes=65536, prefault=False)
    try:
        assert e.wait(0) is True and e.wait(timeout=0.0) is True and e.wait() is True
        assert e.wait(float("inf")) is True and e.wait(1e300) is True
        for bad in (-1, -1e-9, float("nan")):
            with pytest.raises(ValueError, match="timeout"):
                e.wait(bad)
    finally:
        e.close()


class _Interrupt(Exception):
    pass


def test_wait_stays_interruptible(tmp_path):
    """A signal handler's exception reaches the caller of wait() (Ctrl-C), with or without a timeout."""
    def handler(signum, frame):
        raise _Interrupt()

    e = _held_engine(tmp_path, 1500)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        for timeout in (None, 30.0):
            timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            t0 = time.monotonic()
            with pytest.raises(_Interrupt):
                e.wait(timeout)
            timer.join()
            assert time.monotonic() - t0 < 1.0
    finally:
        signal.signal(signal.SIGINT, previous)
        e.close()
    assert e.last_committed_step == 1


def test_allowed_cpus_is_the_process_affinity():
    assert _engine.allowed_cpus() == sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_a_pinned_caller_may_put_writers_on_other_cpus(tmp_path):
    """A training thread pinned to its cores still gets writers on others: the check asks the
    kernel (the cpuset), not the calling thread's affinity."""
    import threading

    first, last = min(os.sched_getaffinity(0)), max(os.sched_getaffinity(0))
    seen: dict = {}

    def pinned_caller() -> None:
        os.sched_setaffinity(0, {first})  # this thread only
        try:
            seen["allowed"] = _engine.allowed_cpus()
            arr = np.random.default_rng(2).integers(0, 255, 8 * 65536, dtype=np.uint8)
            e = _engine.Engine(str(tmp_path), writer_threads=2, chunk_bytes=65536, staging_bytes=65536 * 4,
                               trace=True, writer_cpus=[last])
            _submit(e, 1, arr)
            e.wait()
            seen["pin_failures"] = e.pin_failures
            cols, names = e.drain_trace(), dict(e.thread_names())
            e.close()
            writer = np.array([names.get(int(t), "").startswith("ckptlab-writer") for t in cols["thread"]])
            seen["writer_cpus"] = set(cols["cpu_begin"][writer].tolist())
            seen["caller_mask"] = os.sched_getaffinity(0)
        except Exception as exc:  # noqa: BLE001 - reported below, in the test's thread
            seen["error"] = exc

    t = threading.Thread(target=pinned_caller)
    t.start()
    t.join()
    assert "error" not in seen, seen.get("error")
    assert seen["allowed"] == sorted(os.sched_getaffinity(0)), "the probe must not stop at the caller's mask"
    assert seen["pin_failures"] == 0 and seen["writer_cpus"] == {last}
    assert seen["caller_mask"] == {first}, "probing left the caller's own affinity alone"


def test_writer_threads_stay_on_writer_cpus(tmp_path):
    """Each writer record begins and ends on the one CPU the writers were pinned to."""
    cpu = _engine.allowed_cpus()[-1]
    arr = np.random.default_rng(1).integers(0, 255, 12 * 65536, dtype=np.uint8)
    e = _engine.Engine(str(tmp_path), writer_threads=3, chunk_bytes=65536, staging_bytes=65536 * 4, trace=True,
                       writer_cpus=[cpu])
    assert e.writer_cpus == [cpu]
    for step in (1, 2, 3):
        _submit(e, step, arr)
    e.wait()
    assert e.pin_failures == 0 and e.take_failure() is None
    cols = e.drain_trace()
    names = dict(e.thread_names())
    writer = np.array([names.get(int(t), "").startswith("ckptlab-writer") for t in cols["thread"]])
    assert writer.sum() >= 3 * 12, "a write (and checksum) record per chunk"
    assert set(cols["cpu_begin"][writer].tolist()) == {cpu} and set(cols["cpu_end"][writer].tolist()) == {cpu}
    e.close()


def test_writer_cpus_outside_the_process_affinity_are_refused(tmp_path):
    bad = max(_engine.allowed_cpus()) + 1
    with pytest.raises(ValueError, match=rf"writer_cpus: CPU {bad} not available to this process \(it may use "):
        _engine.Engine(str(tmp_path), writer_cpus=[bad])
    e = _engine.Engine(str(tmp_path))  # the refused engine released the directory lock
    e.close()
