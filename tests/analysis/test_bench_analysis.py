"""The bench analyzer (analysis/bench.py) on the committed `ckptlab bench` result: its tables
and figure come from bench.json alone, and a file of another kind is refused by name."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptlab.analysis import bench_table, bench_targets, overhead_vs_k, plot_bench, read_bench
from trace_fixtures import REPO

BENCH = Path(REPO) / "benchmarks" / "results" / "bench_cpu_64mb_shared"


def test_table_has_a_row_per_kind_and_k():
    doc = read_bench(BENCH)
    table = bench_table(BENCH)
    kinds = set(doc["config"]["kinds"])
    assert set(table["kind"]) == kinds
    assert len(table) == 1 + (len(kinds) - 1) * len(doc["config"]["every"])
    none = table[table["kind"] == "none"]
    assert none["lost_per_ckpt_s"].isna().all()  # the baseline loses nothing against itself
    assert table[table["kind"] != "none"]["durable_s"].gt(0).all()


def test_overhead_vs_k_is_kinds_by_k():
    doc = read_bench(BENCH)
    pivot = overhead_vs_k(doc)
    assert list(pivot.index) == sorted(doc["config"]["every"])
    assert "none" not in pivot.columns and "pccheck-deferred" in pivot.columns
    medians = {(r["kind"], r["every"]): r["overhead"]["median"] for r in doc["results"] if r["kind"] != "none"}
    assert pivot.loc[doc["config"]["every"][0], "torchsave"] == pytest.approx(medians[("torchsave",
                                                                                       doc["config"]["every"][0])])


def test_targets_carry_figures_and_verdicts():
    targets = bench_targets(BENCH)
    assert {"deferred-stall", "durable-vs-raw"} <= set(targets["name"])
    assert targets["met"].isin([True, False]).all()


def test_plot_is_a_png(tmp_path):
    out = plot_bench(BENCH / "bench.json", tmp_path / "b.png")
    assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_another_file_is_refused_by_name(tmp_path):
    other = tmp_path / "bench.json"
    other.write_text(json.dumps({"schema": "something/2"}))
    with pytest.raises(ValueError, match="not a ckptlab bench result"):
        read_bench(tmp_path)
