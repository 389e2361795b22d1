"""NVTX ranges of a save and a load, recorded without nsys by a test NVTX tool
(tests/profiling/nvtx_inject) loaded through NVTX_INJECTION64_PATH in a child process."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

import pytest

from ckptlab import _engine
from ckptlab.profiling.nvtx_ranges import ENGINE_PHASES, PYTHON_PHASES

HERE = os.path.dirname(os.path.abspath(__file__))
MSG = re.compile(r"^(\w+) ckpt=(\d+) step=(-?\d+) chunk=(-?\d+) bytes=(\d+)$")


def run_child(tmp_path, lib: str | None) -> tuple[dict, list[dict]]:
    log = tmp_path / "nvtx.jsonl"
    env = dict(os.environ)
    env.pop("CKPTLAB_FAULTS", None)
    env.pop("NVTX_INJECTION64_PATH", None)
    if lib:
        env["NVTX_INJECTION64_PATH"] = lib
        env["CKPTLAB_NVTX_LOG"] = str(log)
    env["PYTHONPATH"] = os.pathsep.join([HERE, os.path.dirname(HERE), env.get("PYTHONPATH", "")])  # + tests/
    r = subprocess.run([sys.executable, os.path.join(HERE, "nvtx_child.py"), str(tmp_path / "ckpt")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout.strip().splitlines()[-1])
    events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return facts, events


@pytest.fixture(scope="module")
def recorded(nvtx_inject_lib, tmp_path_factory):
    return run_child(tmp_path_factory.mktemp("nvtx"), nvtx_inject_lib)


def ranges(events: list[dict]) -> list[dict]:
    """Closed push/pop ranges with their thread, depth, parent message and times."""
    stacks: dict[tuple[int, str], list[dict]] = defaultdict(list)
    out = []
    for e in events:
        if e["ev"] == "push":
            st = stacks[(e["tid"], e["domain"])]
            r = dict(e, parent=st[-1]["msg"] if st else None)
            st.append(r)
        elif e["ev"] == "pop":
            st = stacks[(e["tid"], e["domain"])]
            r = st.pop()
            r["t_end"] = e["t"]
            out.append(r)
    assert all(not s for s in stacks.values()), "every pushed range was popped"
    return out


def engine_ranges(rs: list[dict], phase: str) -> list[dict]:
    out = []
    for r in rs:
        m = MSG.match(r["msg"] or "")
        if m and m.group(1) == phase:
            out.append(dict(r, ckpt=int(m.group(2)), step=int(m.group(3)), chunk=int(m.group(4)),
                            bytes=int(m.group(5))))
    return out


def test_domain_categories_and_thread_names(recorded):
    facts, events = recorded
    assert facts["nvtx_enabled"] is True
    assert [e["name"] for e in events if e["ev"] == "domain"] == ["ckptlab"]
    categories: dict[int, set[str]] = defaultdict(set)
    for e in events:
        if e["ev"] == "category":
            assert e["domain"] == "ckptlab"
            categories[e["id"]].add(e["name"])
    assert all(len(v) == 1 for v in categories.values()), "one name per category id, whoever named it"
    names = {k: v.pop() for k, v in categories.items()}
    assert tuple(_engine.phase_names()) == ENGINE_PHASES
    for i, phase in enumerate(ENGINE_PHASES + PYTHON_PHASES):
        assert names[i + 1] == phase
    threads = {e["tid"]: e["name"] for e in events if e["ev"] == "thread_name"}
    assert {"ckptlab-writer-0", "ckptlab-writer-1", "ckptlab-commit"} <= set(threads.values())
    assert any(n.startswith("ckptlab-reader-") for n in threads.values())
    assert facts["main_tid"] not in threads, "the caller's (training) thread keeps its own name"
    # every range is in the ckptlab domain and carries its phase's category
    pushes = [e for e in events if e["ev"] == "push"]
    assert pushes and {e["domain"] for e in pushes} == {"ckptlab"}
    for e in pushes:
        m = MSG.match(e["msg"])
        phase = m.group(1) if m else e["msg"]
        assert names[e["category"]] == (phase if phase != "custom-range" else "tests")


def test_nesting_is_balanced_per_thread(recorded):
    _, events = recorded
    depth: Counter = Counter()
    for e in events:
        key = (e.get("tid"), e.get("domain"))
        if e["ev"] == "push":
            depth[key] += 1
            assert e["depth"] == depth[key]
        elif e["ev"] == "pop":
            assert e["depth"] == depth[key] >= 1, f"pop without a push on {key}"
            depth[key] -= 1
    assert all(v == 0 for v in depth.values())


def test_save_ranges(recorded):
    facts, events = recorded
    rs = ranges(events)
    main = facts["main_tid"]
    n = facts["nchunks"]
    by_msg = {r["msg"]: r for r in rs if r["tid"] == main and not MSG.match(r["msg"] or "")}
    save, capture, submit, wait = by_msg["save"], by_msg["capture"], by_msg["submit"], by_msg["wait"]
    assert save["depth"] == 1 and save["payload"] == 5
    assert capture["parent"] == "save" and submit["parent"] == "save" and submit["depth"] == 2
    assert submit["payload"] == facts["total_bytes"]
    assert wait["depth"] == 1 and wait["t"] >= save["t_end"]
    snaps = engine_ranges(rs, "snapshot")
    assert len(snaps) == 1 and snaps[0]["tid"] == main and snaps[0]["parent"] == "submit"
    assert snaps[0]["payload"] == snaps[0]["bytes"] == facts["total_bytes"]
    stages = engine_ranges(rs, "stage")
    assert sorted(r["chunk"] for r in stages) == list(range(n))
    assert all(r["tid"] == main and r["depth"] == 4 and r["parent"].startswith("snapshot ") for r in stages)
    writer_tids = set()
    for phase in ("checksum", "write"):
        rows = engine_ranges(rs, phase)
        assert sorted(r["chunk"] for r in rows) == list(range(n)), phase
        for r in rows:
            assert r["depth"] == 1 and r["step"] == 5 and r["ckpt"] == 1
            assert r["payload"] == r["bytes"] == facts["chunk_bytes"][r["chunk"]]
            writer_tids.add(r["tid"])
    assert len(writer_tids) == 2 and main not in writer_tids, "both writer threads wrote chunks"
    fsyncs = engine_ranges(rs, "fsync")
    assert len(fsyncs) == 2 and sum(r["bytes"] for r in fsyncs) == sum(facts["chunk_bytes"])
    commit = engine_ranges(rs, "commit")
    manifest = engine_ranges(rs, "manifest")
    assert len(commit) == len(manifest) == 1 and commit[0]["tid"] == manifest[0]["tid"] not in writer_tids | {main}
    assert manifest[0]["t_end"] <= commit[0]["t"] and max(r["t_end"] for r in fsyncs) <= manifest[0]["t"]
    assert wait["t"] <= commit[0]["t_end"] <= wait["t_end"]


def test_load_ranges(recorded):
    facts, events = recorded
    rs = ranges(events)
    main = facts["main_tid"]
    load = [r for r in rs if r["msg"] == "load"]
    assert len(load) == 1 and load[0]["tid"] == main and load[0]["parent"] == "custom-range"
    assert load[0]["payload"] == 5  # the step
    restore = [r for r in rs if r["msg"] == "restore"]
    assert len(restore) == 1 and restore[0]["parent"] == "custom-range"
    custom = [r for r in rs if r["msg"] == "custom-range"]
    assert len(custom) == 1 and custom[0]["payload"] == 1.5 and custom[0]["depth"] == 1
    for phase in ("read", "verify"):
        rows = engine_ranges(rs, phase)
        assert sorted(r["chunk"] for r in rows) == list(range(facts["nchunks"])), phase
        for r in rows:
            assert r["tid"] != main and r["depth"] == 1 and r["step"] == 5
            assert r["payload"] == r["bytes"] == facts["chunk_bytes"][r["chunk"]]
            assert load[0]["t"] <= r["t"] <= r["t_end"] <= load[0]["t_end"]


def test_without_a_tool_nothing_is_collected(tmp_path):
    facts, events = run_child(tmp_path, None)
    assert facts["nvtx_enabled"] is False and events == []
