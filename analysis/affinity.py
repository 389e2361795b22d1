"""Statistics of a writer-placement experiment: which placement of the writer threads is faster
than leaving them unpinned, and by how much (the driver: ``ckptlab experiment affinity``).

An experiment directory holds ``manifest.json`` (the spec and the machine), ``runs.jsonl`` (one
line per run: its cell, placement, thread count, I/O mode, CPUs and trace file) and
``traces/*.arrow``. Directories from before I/O mode was an axis have no ``io_mode`` in their
runs: theirs is the spec's single ``io_mode`` (``auto`` when absent).
``summarise(out_dir)`` recomputes every run's figures from its trace (``run_metrics``: median
makespan and straggler ratio of the measured checkpoints, and the writers' migrations,
preemptions, run-queue wait and blocked time), then per cell the quartiles of each figure,
and for each pinned cell against the unpinned cell of the same thread count and I/O mode:

- the ratio of median makespans (< 1: faster than unpinned) with a 95 % percentile-bootstrap
  interval (resampling runs within each cell);
- the two-sided Mann-Whitney U test's p-value (SciPy; None without it or with < 2 runs a side).

Runs are few (5-10 a cell) and their makespans skewed by the odd slow fsync, hence medians,
rank tests and the bootstrap instead of means and t-tests.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckptlab.analysis.stragglers import writer_stragglers

METRICS = ("makespan_ms", "straggler_ratio", "migrations", "ctx_invol", "runq_wait_ms", "blocked_ms")
BASELINE = "unpinned"   # every other placement is compared with this one
WARMUP_STEPS = 1        # the driver's first save warms the engine up and is not measured


def run_metrics(table: Any, warmup_steps: int = WARMUP_STEPS) -> dict[str, Any]:
    """One run's figures from its trace, the first ``warmup_steps`` checkpoints dropped."""
    ckpts, _ = writer_stragglers(table)
    measured = [c for c in ckpts if c["step"] > warmup_steps]
    if not measured:
        raise ValueError("no measured checkpoint in the trace")

    def total(key: str, scale: float = 1.0) -> float | None:
        values = [c[key] for c in measured]
        return None if any(v is None for v in values) else float(sum(values)) * scale

    return {
        "checkpoints": len(measured),
        "bytes": int(np.median([c["bytes"] for c in measured])),
        "makespan_ms": float(np.median([c["makespan_s"] for c in measured])) * 1e3,
        "straggler_ratio": float(np.median([c["straggler_ratio"] for c in measured])),
        "migrations": int(sum(c["migrations"] for c in measured)),
        "ctx_invol": total("ctx_invol"),
        "runq_wait_ms": total("runq_wait_s", 1e3),
        "blocked_ms": total("blocked_s", 1e3),
    }


def quartiles(values: Sequence[float | None]) -> dict[str, float | None]:
    """Median and quartiles; all None when any value is unknown (not measured stays unknown)."""
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if len(v) == 0 or len(v) < len(values):
        return {"median": None, "q1": None, "q3": None}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3)}


def bootstrap_ratio_ci(a: np.ndarray, b: np.ndarray, *, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of median(a) / median(b)."""
    rng = np.random.default_rng(seed)
    ra = np.median(rng.choice(a, size=(resamples, len(a))), axis=1)
    rb = np.median(rng.choice(b, size=(resamples, len(b))), axis=1)
    ratios = ra / np.where(rb > 0, rb, np.nan)
    lo, hi = np.nanpercentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sided Mann-Whitney U p-value; None without SciPy or with too few runs to test."""
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        return None
    if len(a) < 2 or len(b) < 2:
        return None
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def io_mode_of(run: dict[str, Any]) -> str:
    """A run's I/O mode (``auto`` for runs recorded before it was an axis)."""
    return run.get("io_mode") or "auto"


def io_mode_order(runs: Sequence[dict[str, Any]], io_modes: Sequence[str] = ()) -> list[str]:
    """The I/O modes of ``runs``: the spec's order first, then any other as they appear."""
    present = {io_mode_of(r) for r in runs}
    return [m for m in dict.fromkeys([*io_modes, *(io_mode_of(r) for r in runs)]) if m in present]


def placement_order(runs: Sequence[dict[str, Any]], placements: Sequence[str] = ()) -> list[str]:
    """The placements of ``runs`` in display order: the baseline first, then ``placements``'
    order (the experiment's spec), then any other in order of appearance."""
    seen = list(dict.fromkeys([BASELINE, *placements, *(r["placement"] for r in runs)]))
    present = {r["placement"] for r in runs}
    return [p for p in seen if p in present]


def compare_cells(runs: Sequence[dict[str, Any]], *, seed: int = 0, placements: Sequence[str] = (),
                  io_modes: Sequence[str] = ()) -> dict[str, Any]:
    """Per cell: quartiles of every metric, and makespan against the unpinned cell of the same
    thread count and I/O mode (ratio of medians < 1 = faster than unpinned). Cells are ordered
    by thread count, placement (``placement_order``), then I/O mode (``io_mode_order``)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["cell"], []).append(r)
    order = placement_order(runs, placements)
    modes = io_mode_order(runs, io_modes)
    baselines = {(rs[0]["threads"], io_mode_of(rs[0])): rs for rs in by.values() if rs[0]["placement"] == BASELINE}
    cells = []
    for name, rs in sorted(by.items(), key=lambda kv: (kv[1][0]["threads"], order.index(kv[1][0]["placement"]),
                                                       modes.index(io_mode_of(kv[1][0])))):
        row = {"cell": name, "threads": rs[0]["threads"], "placement": rs[0]["placement"], "io_mode": io_mode_of(rs[0]),
               "writer_cpus": rs[0]["writer_cpus"], "training_cpus": rs[0]["training_cpus"], "runs": len(rs)}
        for m in METRICS:
            row[m] = quartiles([r[m] for r in rs])
        base = baselines.get((row["threads"], row["io_mode"]))
        row["vs_unpinned"] = None
        if base is not None and row["placement"] != BASELINE:
            a = np.array([r["makespan_ms"] for r in rs])
            b = np.array([r["makespan_ms"] for r in base])
            lo, hi = bootstrap_ratio_ci(a, b, seed=seed)
            row["vs_unpinned"] = {"makespan_ratio": float(np.median(a) / np.median(b)), "ci95": [lo, hi],
                                  "mann_whitney_p": mann_whitney_p(a, b)}
        cells.append(row)
    return {"cells": cells, "runs": len(runs)}


@dataclass(frozen=True)
class Experiment:
    """An experiment directory read back: its manifest and its runs (figures from the traces)."""

    directory: str
    manifest: dict[str, Any]
    runs: list[dict[str, Any]]

    @property
    def spec(self) -> dict[str, Any]:
        return self.manifest.get("spec", {})

    @property
    def io_modes(self) -> list[str]:
        """The spec's I/O modes (an older spec's single ``io_mode``)."""
        return list(self.spec.get("io_modes") or [self.spec.get("io_mode", "auto")])


def load_experiment(out_dir: str | os.PathLike) -> Experiment:
    """The experiment in ``out_dir``, every run's figures recomputed from its trace (so a
    change here applies to old results). FileNotFoundError names what is missing; ValueError
    a run without a measured checkpoint."""
    from ckptlab.profiling.schema import read_trace

    out = Path(out_dir)
    runs_path = out / "runs.jsonl"
    if not runs_path.is_file():
        raise FileNotFoundError(f"{out}: not an experiment directory (no runs.jsonl)")
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    old_mode = manifest.get("spec", {}).get("io_mode", "auto")
    runs = []
    for lineno, line in enumerate(runs_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        run = json.loads(line)
        run.setdefault("io_mode", old_mode)
        trace = out / run["trace"]
        if not trace.is_file():
            raise FileNotFoundError(f"{runs_path}:{lineno}: trace {trace} is missing")
        try:
            run.update(run_metrics(read_trace(trace)))
        except ValueError as e:
            raise ValueError(f"{trace}: {e}") from None
        runs.append(run)
    if not runs:
        raise ValueError(f"{runs_path}: no finished run")
    return Experiment(os.fspath(out_dir), manifest, runs)


def _experiment(where: str | os.PathLike | Experiment) -> Experiment:
    return where if isinstance(where, Experiment) else load_experiment(where)


def summarise(experiment: str | os.PathLike | Experiment) -> dict[str, Any]:
    """The summary of an experiment (a directory or a loaded one): what the driver writes to
    summary.json without its ``figure`` entry. Per cell quartiles and the comparison with
    unpinned, the experiment's spec and the cells it skipped."""
    exp = _experiment(experiment)
    summary = compare_cells(exp.runs, seed=int(exp.spec.get("seed", 0)), placements=exp.spec.get("placements", ()),
                            io_modes=exp.io_modes)
    return summary | {"skipped": exp.manifest.get("skipped", []), "spec": exp.spec}


def figure_title(spec: dict[str, Any]) -> str:
    if not spec:
        return "ckptlab writer-thread placement"
    return (f"writer placement: {spec.get('size_mb')} MiB checkpoints, {spec.get('load_procs')} load processes, "
            f"{spec.get('repeats')} runs per cell")


def plot_experiment(experiment: str | os.PathLike | Experiment, out: str | os.PathLike,
                    title: str | None = None) -> str:
    """Box plots with the runs over them, one box per cell (makespan, straggler ratio, CPU
    wait, migrations), written atomically to the PNG ``out``; returns its path."""
    exp = _experiment(experiment)
    return plot_runs(exp.runs, out, title=title or figure_title(exp.spec), placements=exp.spec.get("placements", ()))


def plot_runs(runs: Sequence[dict[str, Any]], out: str | os.PathLike, title: str | None = None,
              placements: Sequence[str] = ()) -> str:
    """``plot_experiment`` on run rows already loaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from ckptlab.analysis.tables import write_png

    df = pd.DataFrame(list(runs))
    order = placement_order(runs, placements)
    modes = io_mode_order(runs)
    if len(modes) > 1:  # one box group per placement and I/O mode
        df["placement"] = [f"{p}\n{io_mode_of(r)}" for p, r in zip(df["placement"], runs, strict=True)]
        order = [f"{p}\n{m}" for p in order for m in modes if f"{p}\n{m}" in set(df["placement"])]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = (("makespan_ms", "checkpoint makespan (ms, median of a run)"),
              ("straggler_ratio", "straggler ratio (last / median finish)"),
              ("runq_wait_ms", "writers' time waiting for a CPU (ms per run)"),
              ("migrations", "writer CPU migrations per run"))
    for ax, (metric, label) in zip(axes.flat, panels, strict=True):
        data = df.dropna(subset=[metric])
        if data.empty:
            ax.text(0.5, 0.5, "not measured in these traces", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11 a deprecated argument
            warnings.simplefilter("ignore", DeprecationWarning)
            sns.boxplot(data=data, x="placement", y=metric, hue="threads", order=order, ax=ax, fliersize=0,
                        palette="crest")
        sns.stripplot(data=data, x="placement", y=metric, hue="threads", order=order, ax=ax, dodge=True,
                      palette="dark:black", size=3, alpha=0.6, legend=False)
        ax.set_title(label)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.legend(title="writers", fontsize=7, title_fontsize=7)
    fig.suptitle(title or "ckptlab writer-thread placement", fontsize=11)
    write_png(fig, out, dpi=110)
    return os.fspath(out)
