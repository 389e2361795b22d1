"""The Arrow trace file: schema and metadata exactly as docs/TRACE.md documents them,
Feather-compatible, written atomically."""
from __future__ import annotations

import json
import os
import platform
import socket

import pyarrow as pa
import pyarrow.feather as feather
import pytest

from profiling_helpers import REPO
from ckptlab.profiling import SCHEMA, read_trace, trace_metadata, write_trace_file
from ckptlab.profiling.phases import PHASES

DOC = os.path.join(REPO, "docs", "TRACE.md")


def doc_table(heading: str) -> list[list[str]]:
    """Rows (cells) of the first Markdown table after `heading` in docs/TRACE.md."""
    text = open(DOC, encoding="utf-8").read()
    section = text[text.index(heading):]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set(cells[0]) <= {"-", ":"}:
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header row


def unquote(cell: str) -> str:
    return cell.strip("`")


def test_schema_matches_the_documented_columns(traced_run):
    documented = [(unquote(r[0]), unquote(r[1])) for r in doc_table("## Schema: one row per operation")]
    actual = [(f.name, str(f.type).replace(", ordered=0", "")) for f in SCHEMA]
    assert documented == actual
    file_schema = traced_run.table.schema
    assert [(f.name, f.type) for f in file_schema] == [(f.name, f.type) for f in SCHEMA]
    assert not any(f.nullable for f in file_schema)


def test_documented_phases_match_the_dictionary(traced_run):
    engine = [unquote(r[0]) for r in doc_table("Engine phases (C++")]
    python = [unquote(r[0]) for r in doc_table("Python phases (`ckptlab.profiling.phase`")]
    assert engine + python == PHASES[: len(engine) + len(python)]
    dictionary = traced_run.table.column("phase").chunk(0).dictionary.to_pylist()
    assert dictionary[: len(engine) + len(python)] == engine + python
    assert trace_metadata(traced_run.table)["phases"] == dictionary


def test_metadata_keys_are_documented_and_filled(traced_run):
    documented = {unquote(r[0]) for r in doc_table("## Schema metadata")}
    actual = {k.decode() for k in traced_run.table.schema.metadata}
    assert actual == documented
    meta = trace_metadata(traced_run.table)
    assert meta["schema_version"] == "2"
    assert meta["run_id"] == traced_run.run_id
    assert meta["host"] == socket.gethostname()
    assert meta["arch"] == platform.machine()
    assert meta["kernel"].startswith(platform.system())
    assert meta["cpu_model"]
    assert int(meta["cpu_count"]) == os.cpu_count()
    allowed = sorted(os.sched_getaffinity(0))
    assert meta["cpus_allowed"] in (f"{allowed[0]}-{allowed[-1]}", ",".join(map(str, allowed)))
    assert meta["affinity_policy"] == "unpinned"
    assert meta["clock"] == "CLOCK_MONOTONIC ns"
    assert int(meta["pid"]) == os.getpid()
    assert meta["config"]["run"] == {"test": "traced_run"}
    ck = meta["config"]["checkpointers"][0]
    assert ck["kind"] == "pccheck" and ck["config"]["writer_threads"] == 2 and ck["config"]["trace"] is True
    assert meta["versions"]["pyarrow"] == pa.__version__ and meta["versions"]["python"] == platform.python_version()
    threads = meta["threads"]
    tids = set(traced_run.table.column("thread").to_pylist())
    assert {int(t) for t in threads} == tids
    assert int(meta["thread_count"]) == len(tids)
    assert {"ckptlab-writer-0", "ckptlab-writer-1", "ckptlab-commit"} <= set(threads.values())
    assert int(meta["rows"]) == traced_run.table.num_rows
    steal = meta["cpu_steal"]  # this machine has /proc/stat (a VM shows nonzero steal there)
    assert steal["source"] == "/proc/stat" and steal["user_hz"] == os.sysconf("SC_CLK_TCK")
    start, end = steal["start"], steal["end"]
    assert 0 < start["monotonic_ns"] < end["monotonic_ns"]
    assert set(start["ticks"]) == set(end["ticks"]) and len(start["ticks"]) == os.cpu_count()
    assert all(end["ticks"][c] >= n >= 0 for c, n in start["ticks"].items())


def test_steal_snapshot_reads_the_per_cpu_steal_column(tmp_path):
    from ckptlab.profiling.metadata import cpu_steal_metadata, cpu_steal_snapshot

    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 5 100 1 0 2 9 0 0\n"
                    "cpu0 5 0 2 50 1 0 1 4 0 0\n"
                    "cpu1 5 0 3 50 0 0 1 5 0 0\n"
                    "intr 1 2 3\nctxt 99\n")
    snap = cpu_steal_snapshot(str(stat))
    assert snap["ticks"] == {"0": 4, "1": 5} and snap["monotonic_ns"] > 0  # the 8th value; "cpu " is the sum
    assert cpu_steal_snapshot(str(tmp_path / "missing")) is None
    assert cpu_steal_metadata(snap, None) is None


def test_feather_and_pandas_read_it(traced_run):
    t = feather.read_table(traced_run.path)
    assert t.equals(traced_run.table)
    df = feather.read_feather(traced_run.path)
    assert len(df) == traced_run.table.num_rows
    assert str(df["phase"].dtype) == "category"


def test_write_is_atomic(tmp_path):
    path = tmp_path / "t.arrow"
    empty = pa.RecordBatch.from_pylist([], schema=SCHEMA)
    write_trace_file(path, [empty], {"ckptlab.run_id": "first"})
    before = path.read_bytes()

    def failing():
        yield empty
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_trace_file(path, failing(), {"ckptlab.run_id": "second"})
    assert path.read_bytes() == before, "a failed write leaves the previous file untouched"
    assert os.listdir(tmp_path) == ["t.arrow"], "and no temp file behind"
    assert trace_metadata(read_trace(path))["run_id"] == "first"
    assert read_trace(path).num_rows == 0


def test_metadata_json_values_decode(traced_run):
    raw = traced_run.table.schema.metadata
    for key in (b"ckptlab.config", b"ckptlab.versions", b"ckptlab.threads", b"ckptlab.phases"):
        json.loads(raw[key])


def test_affinity_policy_says_where_the_writers_were_pinned(tmp_path):
    import torch

    from ckptlab.core import CheckpointConfig, open_checkpointer
    from ckptlab.profiling import start_trace

    cpu = max(os.sched_getaffinity(0))
    ck = open_checkpointer("pccheck", tmp_path / "ck", CheckpointConfig(writer_cpus=(cpu,), chunk_bytes=65536))
    with start_trace(tmp_path / "t.arrow", ck) as session:
        ck.save(1, {"w": torch.zeros(1000)})
        ck.close()
    meta = trace_metadata(read_trace(session.path))
    assert meta["affinity_policy"] == f"writers pinned to {cpu}"
    assert meta["config"]["checkpointers"][0]["config"]["writer_cpus"] == [cpu]
    with start_trace(tmp_path / "u.arrow", affinity_policy="training on 0, writers on 1") as session:
        pass
    assert trace_metadata(read_trace(session.path))["affinity_policy"] == "training on 0, writers on 1"
