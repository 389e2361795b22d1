"""Statistics of the writer-placement experiment (analysis/affinity.py, `ckptlab analyze`): on
synthetic runs with known answers, and on the committed experiment directory."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ckptlab.analysis import compare_cells, load_experiment, summarise_experiment
from ckptlab.analysis.affinity import bootstrap_ratio_ci, placement_order
from ckptlab.analysis.cli import main


def _runs(cell, placement, threads, makespans):
    return [{"cell": cell, "placement": placement, "threads": threads, "writer_cpus": "", "training_cpus": "0-1",
             "makespan_ms": m, "straggler_ratio": 1.0, "migrations": 0, "ctx_invol": 1, "runq_wait_ms": 0.5,
             "blocked_ms": None} for m in makespans]


def test_summary_compares_each_cell_with_unpinned():
    runs = _runs("unpinned-t2", "unpinned", 2, [10, 11, 12, 13, 14]) + _runs("compact-t2", "compact", 2, [5, 6, 7, 5, 6])
    s = compare_cells(runs)
    unpinned, compact = s["cells"]
    assert unpinned["cell"] == "unpinned-t2" and unpinned["vs_unpinned"] is None
    assert unpinned["makespan_ms"] == {"median": 12.0, "q1": 11.0, "q3": 13.0}
    vs = compact["vs_unpinned"]
    assert vs["makespan_ratio"] == pytest.approx(6 / 12)
    assert vs["ci95"][0] <= 0.5 <= vs["ci95"][1] and vs["ci95"][1] < 1
    assert vs["mann_whitney_p"] is None or vs["mann_whitney_p"] < 0.05     # None without SciPy
    assert compact["blocked_ms"]["median"] is None                       # not measured stays unknown


def test_each_io_mode_is_compared_with_its_own_unpinned_cell():
    def mode(runs, io):
        return [r | {"io_mode": io} for r in runs]

    runs = (mode(_runs("unpinned-t1-direct", "unpinned", 1, [10, 10, 10]), "direct")
            + mode(_runs("compact-t1-direct", "compact", 1, [5, 5, 5]), "direct")
            + mode(_runs("unpinned-t1-buffered", "unpinned", 1, [20, 20, 20]), "buffered")
            + mode(_runs("compact-t1-buffered", "compact", 1, [30, 30, 30]), "buffered"))
    cells = compare_cells(runs, io_modes=["direct", "buffered"])["cells"]
    assert [(c["cell"], c["io_mode"]) for c in cells] == [
        ("unpinned-t1-direct", "direct"), ("unpinned-t1-buffered", "buffered"),
        ("compact-t1-direct", "direct"), ("compact-t1-buffered", "buffered")]
    assert cells[2]["vs_unpinned"]["makespan_ratio"] == pytest.approx(0.5)
    assert cells[3]["vs_unpinned"]["makespan_ratio"] == pytest.approx(1.5)
    from ckptlab.analysis.findings import io_mode_sentences
    sentences, io = io_mode_sentences({"cells": cells})
    assert io == {"fastest": "direct", "best_cells": {"direct": "compact-t1-direct", "buffered": "unpinned-t1-buffered"},
                  "best_makespan_ms": {"direct": 5.0, "buffered": 20.0}}
    assert sentences[0].endswith("direct against buffered: median ratio of makespans 0.33, faster in 2 of 2 cells.")
    assert io_mode_sentences({"cells": cells[:1]}) == ([], None), "one I/O mode: nothing to say"


def test_runs_recorded_before_io_mode_was_an_axis_are_auto(affinity_results):
    exp = load_experiment(affinity_results)
    assert exp.io_modes == ["auto"] and {r["io_mode"] for r in exp.runs} == {"auto"}
    assert all("io_mode" not in line for line in (affinity_results / "runs.jsonl").read_text().splitlines()[:1])


def test_bootstrap_interval_of_equal_samples_is_tight():
    a = np.array([3.0, 3.0, 3.0])
    assert bootstrap_ratio_ci(a, a) == (1.0, 1.0)


def test_cells_are_ordered_by_threads_then_the_specs_placements():
    runs = (_runs("spread-t1", "spread", 1, [3]) + _runs("new-t1", "new", 1, [3]) + _runs("compact-t1", "compact", 1, [3])
            + _runs("unpinned-t1", "unpinned", 1, [3]) + _runs("compact-t2", "compact", 2, [3]))
    assert placement_order(runs, ["compact", "spread"]) == ["unpinned", "compact", "spread", "new"]
    cells = [c["cell"] for c in compare_cells(runs, placements=["compact", "spread"])["cells"]]
    assert cells == ["unpinned-t1", "compact-t1", "spread-t1", "new-t1", "compact-t2"]


def test_the_committed_experiment_re_summarises_to_its_summary(affinity_results, capsys):
    """Every figure is recomputed from the traces; it matches what the driver wrote."""
    written = json.loads((affinity_results / "summary.json").read_text())
    assert summarise_experiment(affinity_results) == {k: v for k, v in written.items() if k != "figure"}
    assert main(["analyze", str(affinity_results), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cells"] == written["cells"]
    assert main(["analyze", str(affinity_results)]) == 0
    out = capsys.readouterr().out
    assert "writer placement" in out and "disjoint-t1" in out and "unpinned-t2" in out


def test_the_committed_experiment_is_complete(affinity_results):
    exp = load_experiment(affinity_results)
    spec = exp.spec
    assert [s["cell"] for s in exp.manifest["skipped"]] == ["disjoint-t2"]
    cells = {r["cell"] for r in exp.runs}
    assert cells == {f"{p}-t{t}" for t in spec["threads"] for p in spec["placements"]} - {"disjoint-t2"}
    assert len(exp.runs) == len(cells) * spec["repeats"]
    for r in exp.runs:
        assert r["checkpoints"] == spec["saves"] and r["bytes"] >= spec["size_mb"] << 20
        assert r["runq_wait_ms"] is not None, "schema version 2 traces carry the scheduler counters"


def test_analyze_draws_and_refuses_what_is_not_an_experiment(affinity_results, tmp_path, capsys):
    assert main(["analyze", str(affinity_results), "--plot", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG" and f"figure: {tmp_path / 'a.png'}" in capsys.readouterr().out
    assert main(["analyze", str(tmp_path / "absent")]) == 2
    assert "no such trace file or experiment directory" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path)]) == 2
    assert "not an experiment directory (no runs.jsonl)" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(affinity_results, broken)
    (broken / "traces" / "compact-t1-r0.arrow").unlink()
    assert main(["analyze", str(broken)]) == 2
    assert "compact-t1-r0.arrow is missing" in capsys.readouterr().err


def test_the_committed_report_names_the_fastest_cell(affinity_results):
    from ckptlab.analysis import experiment_findings

    doc = experiment_findings(load_experiment(affinity_results))
    fastest = doc["placements"]["fastest"]
    lo, hi = fastest["ci95_ms"]
    assert lo <= fastest["makespan_ms"] <= hi
    assert doc["findings"][0].startswith(f"Fastest: {fastest['placement']} with {fastest['threads']} writer")
    report = (affinity_results / "report" / "report.md").read_text()
    assert all(f"- {f}" in report for f in doc["findings"]), \
        "regenerate: ckptlab analyze benchmarks/results/affinity_2core_vm --out benchmarks/results/affinity_2core_vm/report"
