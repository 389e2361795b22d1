"""ckptlab.analysis: analyzers over the files the record path writes (traces, loss files,
experiment directories), their figures, and the ``ckptlab trace`` / ``ckptlab analyze`` commands.

Public API (docs/TRACE.md, docs/PROFILING.md; notebooks in analysis/notebooks)::

    from ckptlab.analysis import read_trace, writer_stragglers, thread_totals, plot_writer_report

    table = read_trace("runs/a/trace.arrow")
    checkpoints, threads = writer_stragglers(table)   # per checkpoint / per checkpoint and thread
    totals = thread_totals(threads)                   # per writer thread over the run
    plot_timeline(table, "step20.png", step=20)       # the checkpoint of step 20 as a timeline
    summarise_experiment("runs/affinity-1")           # placements against unpinned
    detect_stragglers(table)                          # DataFrame: straggler, gap and cause per checkpoint
    what_if_median_speed(table)                       # ... makespan had it run at the median speed
    trace_findings(table)["findings"]                 # the same in sentences (ckptlab analyze)
    overhead_vs_k("benchmarks/results/bench_cpu_64mb_shared")  # a ckptlab bench result: overhead per kind and K

Analysis reads files and never live objects: it imports ``ckptlab.profiling`` (the trace
schema, the loss file, atomic writes) and nothing of core or training. Names resolve on first
use, so importing the package needs neither pyarrow nor matplotlib.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ckptlab.profiling.schema": ("read_trace", "trace_metadata"),
    "ckptlab.analysis.stragglers": ("writer_stragglers", "thread_totals", "migrations", "TIME_PARTS"),
    "ckptlab.analysis.straggler_plot": ("plot_writer_report",),
    "ckptlab.analysis.timeline": ("plot_timeline", "step_window"),
    "ckptlab.analysis.summary": ("summarize", "overlap"),
    "ckptlab.analysis.chrome": ("to_chrome_trace", "export_chrome"),
    "ckptlab.analysis.affinity": ("load_experiment", "run_metrics", "compare_cells", "plot_experiment"),
    "ckptlab.analysis.losses": ("plot_losses",),
    "ckptlab.analysis.analyzers": ("time_split", "chunk_latency", "critical_path", "migration_table",
                                   "detect_stragglers", "what_if_median_speed"),
    "ckptlab.analysis.findings": ("trace_findings", "experiment_findings"),
    "ckptlab.analysis.bench": ("read_bench", "bench_table", "overhead_vs_k", "bench_targets", "plot_bench"),
}
_ALIASES = {"summarise_experiment": ("ckptlab.analysis.affinity", "summarise")}
_WHERE = {name: (module, name) for module, names in _EXPORTS.items() for name in names} | _ALIASES
__all__ = list(_WHERE)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from ckptlab.analysis.affinity import compare_cells, load_experiment, plot_experiment, run_metrics
    from ckptlab.analysis.affinity import summarise as summarise_experiment
    from ckptlab.analysis.analyzers import (chunk_latency, critical_path, detect_stragglers, migration_table,
                                            time_split, what_if_median_speed)
    from ckptlab.analysis.bench import bench_table, bench_targets, overhead_vs_k, plot_bench, read_bench
    from ckptlab.analysis.chrome import export_chrome, to_chrome_trace
    from ckptlab.analysis.findings import experiment_findings, trace_findings
    from ckptlab.analysis.losses import plot_losses
    from ckptlab.analysis.straggler_plot import plot_writer_report
    from ckptlab.analysis.stragglers import TIME_PARTS, migrations, thread_totals, writer_stragglers
    from ckptlab.analysis.summary import overlap, summarize
    from ckptlab.analysis.timeline import plot_timeline, step_window
    from ckptlab.profiling.schema import read_trace, trace_metadata


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'ckptlab.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
