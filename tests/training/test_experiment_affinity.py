"""The writer-placement experiment's driver (training/experiments/affinity.py, `ckptlab experiment
affinity`): placements, the plan, flags, and a small real experiment summarised by analysis."""
from __future__ import annotations

import json
import os

import pytest

from ckptlab.analysis.affinity import run_metrics
from ckptlab.analysis.cli import main as analysis_main
from ckptlab.core.config import parse_cpu_list
from ckptlab.profiling import read_trace, trace_metadata
from ckptlab.training.experiments.affinity import ExperimentSpec, Unplaceable, place, plan
from ckptlab.training.experiments.cli import main


@pytest.mark.parametrize("placement, threads, allowed, writers, training", [
    ("unpinned", 3, range(8), (), tuple(range(8))),
    ("compact", 3, range(8), (0, 1, 2), tuple(range(8))),
    ("spread", 4, range(8), (0, 2, 4, 6), tuple(range(8))),
    ("spread", 3, [2, 5, 9, 11, 12, 20], (2, 9, 12), (2, 5, 9, 11, 12, 20)),
    ("disjoint", 2, range(8), (6, 7), tuple(range(6))),
    ("disjoint", 1, [3, 9], (9,), (3,)),
])
def test_placements(placement, threads, allowed, writers, training):
    cell = place(placement, threads, allowed)
    assert cell.writer_cpus == writers and cell.training_cpus == training
    assert cell.name == f"{placement}-t{threads}"
    assert not set(cell.writer_cpus) & set(cell.training_cpus) or placement != "disjoint"


@pytest.mark.parametrize("placement, threads, allowed, error, needle", [
    ("compact", 5, range(4), Unplaceable, "needs 5 CPUs"),
    ("disjoint", 4, range(4), Unplaceable, "needs more than 4 CPUs"),
    ("diagonal", 1, range(4), ValueError, "unknown placement 'diagonal'"),
    ("compact", 0, range(4), ValueError, "must be >= 1"),
])
def test_impossible_placements_say_why(placement, threads, allowed, error, needle):
    with pytest.raises(error, match=needle):
        place(placement, threads, allowed)


def test_plan_skips_what_cannot_be_placed(tmp_path):
    spec = ExperimentSpec(str(tmp_path), str(tmp_path / "o"), threads=(1, 2), cpus=(0, 1))
    cells, skipped = plan(spec)
    assert [c.name for c in cells] == ["unpinned-t1", "compact-t1", "spread-t1", "disjoint-t1", "unpinned-t2",
                                       "compact-t2", "spread-t2"]
    assert [s["cell"] for s in skipped] == ["disjoint-t2"]


def test_io_mode_is_an_axis_of_the_plan(tmp_path):
    spec = ExperimentSpec(str(tmp_path), str(tmp_path / "o"), threads=(1,), placements=("unpinned", "compact"),
                          io_modes=("auto", "buffered"), cpus=(0,))
    cells, skipped = plan(spec)
    assert [(c.name, c.io_mode) for c in cells] == [("unpinned-t1", "auto"), ("unpinned-t1-buffered", "buffered"),
                                                    ("compact-t1", "auto"), ("compact-t1-buffered", "buffered")]
    assert skipped == [] and "io buffered" in cells[1].describe()


def test_bad_flags_are_refused_before_anything_runs(tmp_path, capsys):
    base = ["experiment", "affinity", "--dir", str(tmp_path / "ck"), "--out", str(tmp_path / "o")]
    assert main(base + ["--placements", "compact,diagonal"]) == 2
    assert "unknown placement(s) ['diagonal']" in capsys.readouterr().err
    assert main(base + ["--repeats", "0"]) == 2
    assert "repeats must be >= 1" in capsys.readouterr().err
    assert main(base + ["--io-modes", "direct,fast"]) == 2
    assert "io-modes must be distinct values of auto, direct, buffered, got ['direct', 'fast']" in capsys.readouterr().err
    assert main(base + ["--io-modes", "direct,direct"]) == 2
    assert "io-modes must be distinct" in capsys.readouterr().err
    bad = max(os.sched_getaffinity(0)) + 1
    assert main(base + ["--cpus", str(bad)]) == 2
    assert f"cpus: CPU {bad} not available to this process" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--threads", "0,2"])
    assert "integers >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "ck").exists()


def test_dry_run_lists_the_cells(tmp_path, capsys):
    assert main(["experiment", "affinity", "--dir", str(tmp_path), "--out", str(tmp_path / "o"), "--threads", "1",
                 "--cpus", "0", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "compact-t1" in captured.out and "3 cells x 5 runs x 4 saves of 256 MiB" in captured.out
    assert "skipping disjoint-t1" in captured.err and not (tmp_path / "o").exists()


SMALL = dict(threads=(1,), placements=("unpinned", "disjoint", "numa-local"), io_modes=("direct", "buffered"))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A small real experiment: 1 writer, three placements (numa-local from this machine's
    sysfs), O_DIRECT and buffered, 2 runs each."""
    root = tmp_path_factory.mktemp("affinity")
    argv = ["experiment", "affinity", "--dir", str(root / "ck"), "--out", str(root / "out"), "--threads", "1",
            "--placements", ",".join(SMALL["placements"]), "--io-modes", ",".join(SMALL["io_modes"]),
            "--repeats", "2", "--saves", "2", "--size-mb", "4", "--chunk-mb", "1", "--load-procs", "1"]
    assert main(argv) == 0
    return root / "out", argv


def test_experiment_writes_every_result(experiment):
    out, _ = experiment
    cells, _ = plan(ExperimentSpec(str(out.parent / "ck"), "y", **SMALL))
    assert {c.io_mode for c in cells} == {"direct", "buffered"} and "numa-local-t1-direct" in [c.name for c in cells]
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["cell"], r["repeat"]) for r in runs) == sorted((c.name, i) for c in cells for i in range(2))
    for r in runs:
        assert r["cell"].endswith("-" + r["io_mode"]) and r["io_mode_used"] == r["io_mode"]
        assert bool(r["placement_note"]) == (r["placement"] == "numa-local" and len(os.sched_getaffinity(0)) <= 2)
    summary = json.loads((out / "summary.json").read_text())
    assert [c["cell"] for c in summary["cells"]] == [c.name for c in cells] and summary["runs"] == len(runs)
    assert summary["figure"] == "affinity.png" and (out / "affinity.png").read_bytes()[:4] == b"\x89PNG"
    assert [c["io_mode"] for c in summary["cells"]] == [c.io_mode for c in cells]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["threads"] == [1] and manifest["machine"]["cpus_allowed"]
    assert manifest["spec"]["io_modes"] == ["direct", "buffered"]
    assert manifest["mount"]["mount_point"]
    topo = manifest["topology"]
    assert topo["root"] == "/" and topo["nodes"] and topo["storage"]["directory"] == str(out.parent / "ck")
    assert "numa_node" in topo["storage"] and "irq_cpus" in topo["storage"]
    for r in runs:
        assert r["checkpoints"] == 2 and r["bytes"] >= 4 << 20 and r["makespan_ms"] > 0
        assert r["runq_wait_ms"] is not None and r["ctx_invol"] is not None
    assert not list((out.parent / "ck").iterdir()), "checkpoint directories are removed after each run"


def test_analyze_re_summarises_to_the_same_summary(experiment, tmp_path, capsys):
    out, _ = experiment
    capsys.readouterr()
    assert analysis_main(["analyze", str(out), "--json", "--plot", str(tmp_path / "again.png")]) == 0
    again = json.loads(capsys.readouterr().out)
    written = json.loads((out / "summary.json").read_text())
    assert again == {k: v for k, v in written.items() if k != "figure"}
    assert (tmp_path / "again.png").read_bytes()[:4] == b"\x89PNG"


def test_the_report_says_which_io_mode_was_fastest(experiment, tmp_path, capsys):
    out, _ = experiment
    assert analysis_main(["analyze", str(out), "--out", str(tmp_path / "report"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    io = doc["placements"][str(out)]["io_modes"]
    assert io["fastest"] in ("direct", "buffered") and set(io["best_cells"]) == {"direct", "buffered"}
    sentence = next(f for f in doc["findings"] if f.startswith("Fastest I/O mode: "))
    assert sentence.startswith(f"Fastest I/O mode: {io['fastest']} (its best cell {io['best_cells'][io['fastest']]}")
    assert "faster in" in sentence and f"- {sentence}" in (tmp_path / "report" / "report.md").read_text()


def test_each_run_ran_where_its_cell_says(experiment):
    out, _ = experiment
    for line in (out / "runs.jsonl").read_text().splitlines():
        run = json.loads(line)
        table = read_trace(out / run["trace"])
        meta = trace_metadata(table)
        assert meta["affinity_policy"].startswith(f"experiment cell {run['placement']}:")
        assert meta["config"]["checkpointers"][0]["config"]["io_mode"] == run["io_mode"]
        df = table.to_pandas()
        name = df.thread_name.astype(str)
        writer_cpus = set(df.cpu_begin[name.str.startswith("ckptlab-writer")])
        saver_cpus = set(df.cpu_begin[name.str.contains("ckptlab-save")])
        if run["writer_cpus"]:
            assert writer_cpus <= set(parse_cpu_list(run["writer_cpus"]))
        assert saver_cpus <= set(parse_cpu_list(run["training_cpus"]))
        if run["placement"] == "disjoint":
            assert not writer_cpus & saver_cpus, "disjoint keeps the saving thread off the writers' CPUs"
        assert run_metrics(table)["makespan_ms"] == pytest.approx(run["makespan_ms"])


def test_an_experiment_is_never_overwritten(experiment, capsys):
    out, argv = experiment
    before = (out / "runs.jsonl").read_bytes()
    assert main(argv) == 2
    assert "already holds an experiment" in capsys.readouterr().err
    assert (out / "runs.jsonl").read_bytes() == before
