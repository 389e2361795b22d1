"""`ckptlab bench` end to end on the tiny preset (every run in its own process), and its flags:
bad ones exit 2 with a message naming the flag, and nothing is written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptlab.core.cli import main


def _bench(*args: str) -> int:
    try:
        return main(["bench", *args])
    except SystemExit as exc:  # argparse's error() exits 2
        return int(exc.code or 0)


def test_tiny_bench_writes_json_table_and_plot(tmp_path):
    out = tmp_path / "out"
    rc = _bench("--preset", "tiny", "--kinds", "none,torchsave,pccheck-deferred", "--steps", "6",
                "--every", "3", "--repeats", "1", "--out", str(out), "--no-progress",
                "--variant", "deferred-pf=pccheck-deferred:--prefault-staging --max-inflight 1")
    assert rc == 0
    bench = json.loads((out / "bench.json").read_text())
    assert bench["schema"] == "ckptlab.bench/1"
    machine = bench["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and machine["kernel"]
    assert machine["dir_fs"]["fstype"] and machine["dir_fs"]["source"]
    assert bench["versions"]["torch"] and bench["versions"]["python"]
    assert "git_commit" in bench["versions"]
    rows = {(r["kind"], r["every"]): r for r in bench["results"]}
    assert set(rows) == {("none", None), ("torchsave", 3), ("pccheck-deferred", 3), ("deferred-pf", 3)}
    assert bench["config"]["kinds"] == ["none", "torchsave", "pccheck-deferred", "deferred-pf"]
    assert bench["config"]["variants"] == [{"name": "deferred-pf", "base": "pccheck-deferred",
                                            "flags": ["--prefault-staging", "--max-inflight", "1"]}]
    assert rows[("deferred-pf", 3)]["checkpoints"]["median"] == 2
    deferred = rows[("pccheck-deferred", 3)]
    assert deferred["checkpoints"]["median"] == 2
    assert deferred["durable_s"]["median"] > 0 and deferred["durable_gbps"]["median"] > 0
    assert deferred["cold_load_s"]["median"] > 0 and deferred["peak_rss_bytes"]["median"] > 0
    assert deferred["lost_per_ckpt_s"]["n"] == 1
    for kind in ("pccheck-deferred", "deferred-pf"):  # resident staging, reported for pccheck only
        assert 0 < rows[(kind, 3)]["staging_touched_bytes"]["median"] <= 64 << 20, rows[(kind, 3)]
    assert rows[("torchsave", 3)]["staging_touched_bytes"]["median"] is None
    raw = bench["raw_disk"]
    assert raw["bytes"] > 0 and raw["buffered_write_s"]["median"] > 0 and raw["read_s"]["median"] > 0
    assert {t["name"] for t in bench["targets"]} == {"deferred-stall", "durable-vs-raw", "lost-below-peers-every-3"}
    assert all(t["met"] in (True, False) for t in bench["targets"])
    assert [r["kind"] for r in bench["runs"]].count("none") == 1 and len(bench["runs"]) == 4
    table = (out / "bench.md").read_text()
    assert "| pccheck-deferred |" in table and "lost/ckpt" in table and "staging MiB" in table
    assert "| deferred-pf | 3 |" in table
    assert "Variants: deferred-pf = pccheck-deferred --prefault-staging --max-inflight 1." in table
    for t in bench["targets"]:  # each target's verdict, whichever it is on this machine
        verdict = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[t["met"]]
        assert f"{t['target']}: {verdict}" in table, (t, table)
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(p.name.startswith("ckpt-") for p in out.rglob("*"))  # the runs' checkpoints are gone


@pytest.mark.parametrize("flags, needle", [
    (["--kinds", "none,zip"], "unknown kind 'zip'"),
    (["--kinds", "pccheck-gpu"], "pccheck-gpu needs --device cuda"),
    (["--every", "0"], "--every"),
    (["--every", "5,x"], "--every"),
    (["--every", "4", "--steps", "4"], "--steps 4 is too few for --every 4: need at least 5"),
    (["--repeats", "0"], "--repeats"),
    (["--state-mb", "64", "--vocab-size", "512"], "--state-mb and --vocab-size"),
    (["--preset", "huge"], "unknown preset"),
    (["--device", "tpu"], "--device"),
    (["--variant", "nopf"], "expected NAME=KIND:FLAGS"),
    (["--variant", "nopf=pccheck-deferred:"], "give the flags that make it differ from pccheck-deferred"),
    (["--variant", "dcp=pccheck-sync:--max-inflight 2"], "'dcp' is a kind's name"),
    (["--variant", "a=pccheck-sync:--max-inflight 2", "--variant", "a=pccheck-sync:--max-inflight 3"],
     "'a' is given twice"),
    (["--variant", "a=zip:--max-inflight 2"], "unknown base kind 'zip'"),
    (["--variant", "a=none:--max-inflight 2"], "unknown base kind 'none'"),
    (["--variant", "a=pccheck-gpu:--max-inflight 2"], "pccheck-gpu needs --device cuda"),
    (["--variant", "a=pccheck-sync:--lr 3"], "--lr is not a setting a variant may change"),
    (["--variant", "a=pccheck-sync:--keep-last 3"], "--keep-last is not a setting a variant may change"),
    (["--variant", "a=pccheck-deferred:--snapshot sync"], "--snapshot is not a setting a variant may change"),
    (["--variant", "a=pccheck-sync:--no-max-inflight"], "--no-max-inflight is not a setting"),
    (["--variant", "a=pccheck-sync:--max-inflight 0"], "--variant 'a=pccheck-sync:--max-inflight 0': argument "
                                                        "--max-inflight: must be >= 1"),
    (["--variant", "a=pccheck-sync:--chunk-mb 0.1"], "multiple of 0.0625 MiB"),
    (["--variant", "a=pccheck-sync:--writer-cpus=x"], "'x' is not a CPU"),
    (["--variant", "a=pccheck-sync:--prefault-staging yes"], "unrecognized arguments: yes"),
    (["--variant", "a=pccheck-sync:'--max-inflight"], "No closing quotation"),
])
def test_bad_flags_exit_2_and_write_nothing(tmp_path, capsys, flags, needle):
    out = tmp_path / "out"
    assert _bench(*flags, "--out", str(out)) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert _bench("--device", "cuda", "--out", str(tmp_path / "out")) == 2
    assert "--device cuda but no CUDA device" in capsys.readouterr().err


def test_an_existing_bench_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench.json").write_text("{}")
    assert _bench("--out", str(out)) == 2
    assert "already holds a bench.json" in capsys.readouterr().err
    assert (out / "bench.json").read_text() == "{}"


def test_a_variants_flags_come_last_so_they_win_over_the_benchs(tmp_path):
    from ckptlab.training.bench.runner import train_flags
    from ckptlab.training.bench.spec import BenchSpec, Run, parse_variant

    spec = BenchSpec(out=tmp_path, kinds=("pccheck-sync",), writer_threads=4,
                     variants=(parse_variant("w1=pccheck-deferred:--writer-threads 1"),))
    assert spec.measured == ("none", "pccheck-sync", "w1")
    flags = train_flags(spec, Run(0, "w1", 5), tmp_path / "ckpt")
    assert flags[-6:] == ["--checkpointer", "pccheck", "--snapshot", "deferred", "--writer-threads", "1"]
    assert flags.count("--writer-threads") == 2  # the bench's 4 first, the variant's 1 after it
    assert train_flags(spec, Run(0, "pccheck-sync", 5), tmp_path)[-4:] == ["--checkpointer", "pccheck",
                                                                            "--snapshot", "sync"]
