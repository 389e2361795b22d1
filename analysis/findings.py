"""Findings in sentences, with numbers: what ``ckptlab analyze`` prints and writes to
``report.md``, from the analyzers (``analyzers``, ``affinity``).

``trace_findings(table)`` and ``experiment_findings(experiment)`` return
``{"checkpoints": [...], "findings": [...]}`` (plus ``"placements"`` for an experiment, whose
``io_modes`` is None with one I/O mode, else the fastest and each mode's best cell): the
``--json`` document. Each checkpoint row has ``step``, ``makespan_s``, ``straggler`` (a thread
name or None), ``cause``, ``cause_why``, ``gap_s`` (its finish minus ``reference_finish_s``: the median
thread's, with 2 threads the other thread's, ``causes``),
``what_if_makespan_s`` and the rest of ``detect_stragglers``' and ``what_if_median_speed``'s
columns; an experiment's rows add ``cell`` and ``trace``.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from ckptlab.analysis import affinity, analyzers, causes, steal


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _clean(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, NaN as None."""
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def checkpoint_rows(table: pa.Table) -> list[dict[str, Any]]:
    """``detect_stragglers`` joined with ``what_if_median_speed``, one dict per checkpoint."""
    found = analyzers.detect_stragglers(table)
    if found.empty:
        return []
    what = analyzers.what_if_median_speed(table)[["ckpt_id", "resim_makespan_s", "what_if_makespan_s", "saved_s"]]
    merged = found.merge(what, on="ckpt_id")
    return [{k: _clean(v) for k, v in row.items()} for row in merged.to_dict("records")]


def checkpoint_sentence(c: dict[str, Any]) -> str:
    head = f"Step {c['step']} (makespan {_ms(c['makespan_s'])}, {c['threads']} writer threads)"
    if c["threads"] == 1:
        return f"{head}: no straggler; a single writer thread, {c['last_thread']}, has no peer to lag."
    other = "the other thread" if c["threads"] == 2 else "the median thread"
    if c["straggler"] is None:
        return (f"{head}: no straggler; the last thread, {c['last_thread']}, finished {_ms(c['gap_s'])} after "
                f"{other} ({c['straggler_ratio']:.3f}x its finish).")
    s = (f"{head}: {c['straggler']} straggled, finishing {_ms(c['gap_s'])} after {other} "
         f"({_ms(c['finish_s'])} vs {_ms(c['reference_finish_s'])}, {c['straggler_ratio']:.2f}x). Cause: "
         f"{c['cause']}: {c['cause_why']}.")
    if c["saved_s"] is not None and c["cause"] != "late-start":
        s += (f" At the median thread's speed it would have ended the checkpoint at {_ms(c['what_if_makespan_s'])} "
              f"({_ms(c['saved_s'])} sooner; re-simulated from the chunk records, which replay the observed run "
              f"in {_ms(c['resim_makespan_s'])}).")
    if c.get("steal_caveat"):
        s += (f" Caveat: the hypervisor stole CPU time during this trace (steal counters); about "
              f"{_ms(c['steal_s'])} of {c['straggler']}'s window on its CPUs, against the "
              f"{_ms(c['excess_blocked_s'])} of excess blocked time, may be steal, which neither run_ns nor "
              f"wait_ns sees, rather than the device, writeback or a lock.")
    return s


def summary_sentences(rows: list[dict[str, Any]], what: str) -> list[str]:
    """Over many checkpoints: how many had a straggler, of which cause, which thread repeatedly."""
    if not rows:
        return [f"{what}: no engine writes (a pccheck run with --trace records them)."]
    named = [r for r in rows if r["straggler"] is not None]
    if not named:
        worst = max(r["straggler_ratio"] for r in rows)
        return [f"{what}: none of the {len(rows)} checkpoints had a straggler (the last writer finished at most "
                f"{worst:.3f}x the median thread's time; a straggler needs {causes.MIN_RATIO}x, "
                f"{_ms(causes.MIN_GAP_S)} and, with 3 or more threads, a robust z-score above 3.5)."]
    by_cause = Counter(r["cause"] for r in named)
    out = [f"{what}: {len(named)} of {len(rows)} checkpoints had a straggler; causes: "
           + ", ".join(f"{c} {n}" for c, n in by_cause.most_common()) + "."]
    by_thread = Counter(r["straggler"] for r in named)
    thread, n = by_thread.most_common(1)[0]
    if n > 1:
        out.append(f"{thread} was the straggler {n} times (a thread that straggles repeatedly points at its CPU "
                   f"or its placement rather than at chance).")
    return out


def trace_findings(table: pa.Table, label: str = "the trace") -> dict[str, Any]:
    """The trace's document; ``steal`` is its hypervisor steal (``steal.StealWindow.summary``)
    or None where the trace has no steal counters."""
    rows = checkpoint_rows(table)
    window = steal.steal_window(table)
    return {"checkpoints": rows, "steal": None if window is None else window.summary(),
            "findings": summary_sentences(rows, label) + [checkpoint_sentence(r) for r in rows]}


def bootstrap_median_ci(values: np.ndarray, *, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of a median (as ``affinity.bootstrap_ratio_ci``)."""
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(values, size=(resamples, len(values))), axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return float(lo), float(hi)


def placement_sentences(summary: dict[str, Any], runs: list[dict[str, Any]], seed: int) -> tuple[list[str], dict]:
    """Which placement and thread count was fastest, with its intervals."""
    cells = [c for c in summary["cells"] if c["makespan_ms"]["median"] is not None]
    best = min(cells, key=lambda c: c["makespan_ms"]["median"])
    values = np.array([r["makespan_ms"] for r in runs if r["cell"] == best["cell"]])
    lo, hi = bootstrap_median_ci(values, seed=seed)
    fastest = {"cell": best["cell"], "placement": best["placement"], "threads": best["threads"],
               "io_mode": best.get("io_mode", "auto"), "makespan_ms": best["makespan_ms"]["median"], "ci95_ms": [lo, hi], "runs": best["runs"],
               "vs_unpinned": best["vs_unpinned"]}
    s = (f"Fastest: {best['placement']} with {best['threads']} writer thread{'s' if best['threads'] > 1 else ''} "
         f"(cell {best['cell']}, writers on CPUs {best['writer_cpus'] or 'any'}): median makespan "
         f"{best['makespan_ms']['median']:.1f} ms, 95 % bootstrap interval of the median {lo:.1f}-{hi:.1f} ms "
         f"over {best['runs']} runs.")
    vs = best["vs_unpinned"]
    if vs is not None:
        lo_r, hi_r = vs["ci95"]
        s += (f" Against unpinned with the same thread count: {vs['makespan_ratio']:.2f}x the makespan "
              f"(95 % interval {lo_r:.2f}-{hi_r:.2f}"
              + ("" if vs["mann_whitney_p"] is None else f", Mann-Whitney p = {vs['mann_whitney_p']:.3f}") + "); "
              + ("the interval spans 1, so this experiment cannot tell it from unpinned."
                 if lo_r <= 1 <= hi_r else "the interval excludes 1."))
    out = [s]
    ranking = sorted(cells, key=lambda c: c["makespan_ms"]["median"])
    out.append("All cells by median makespan: " + ", ".join(
        f"{c['cell']} {c['makespan_ms']['median']:.1f} ms" for c in ranking) + ".")
    return out, fastest


def io_mode_sentences(summary: dict[str, Any]) -> tuple[list[str], dict[str, Any] | None]:
    """With more than one I/O mode: which was fastest, by each mode's best cell and by the
    median over the cells both modes share (the same thread count and placement)."""
    cells = [c for c in summary["cells"] if c["makespan_ms"]["median"] is not None]
    modes = list(dict.fromkeys(c.get("io_mode", "auto") for c in cells))
    if len(modes) < 2:
        return [], None
    best = {m: min((c for c in cells if c.get("io_mode", "auto") == m), key=lambda c: c["makespan_ms"]["median"])
            for m in modes}
    ranked = sorted(modes, key=lambda m: best[m]["makespan_ms"]["median"])
    key = {m: {(c["threads"], c["placement"]): c["makespan_ms"]["median"] for c in cells
               if c.get("io_mode", "auto") == m} for m in modes}
    fastest, runner = ranked[0], ranked[1]
    shared = sorted(set(key[fastest]) & set(key[runner]))
    s = (f"Fastest I/O mode: {fastest} (its best cell {best[fastest]['cell']}, median makespan "
         f"{best[fastest]['makespan_ms']['median']:.1f} ms; " + "; ".join(
             f"{m}: best cell {best[m]['cell']} {best[m]['makespan_ms']['median']:.1f} ms" for m in ranked[1:]) + ").")
    ratios = [key[fastest][k] / key[runner][k] for k in shared if key[runner][k] > 0]
    if ratios:
        wins = sum(r < 1 for r in ratios)
        s += (f" Cell by cell (same threads and placement), {fastest} against {runner}: median ratio of makespans "
              f"{float(np.median(ratios)):.2f}, faster in {wins} of {len(ratios)} cells.")
    return [s], {"fastest": fastest, "best_cells": {m: best[m]["cell"] for m in ranked},
                 "best_makespan_ms": {m: best[m]["makespan_ms"]["median"] for m in ranked}}


def experiment_findings(experiment: affinity.Experiment) -> dict[str, Any]:
    """Placement findings and the stragglers of every run's measured checkpoints."""
    from ckptlab.profiling.schema import read_trace

    seed = int(experiment.spec.get("seed", 0))
    summary = affinity.summarise(experiment)
    placement, fastest = placement_sentences(summary, experiment.runs, seed)
    io_sentences, io_modes = io_mode_sentences(summary)
    placement += io_sentences
    rows = []
    for run in experiment.runs:
        table = read_trace(f"{experiment.directory}/{run['trace']}")
        for r in checkpoint_rows(table):
            if r["step"] > affinity.WARMUP_STEPS:
                rows.append({"cell": run["cell"], "trace": run["trace"], **r})
    findings = placement + summary_sentences(rows, f"Stragglers over the {len(experiment.runs)} runs' measured "
                                                   f"checkpoints")
    by_cell: dict[str, Counter] = {}
    for r in rows:
        if r["straggler"] is not None:
            by_cell.setdefault(r["cell"], Counter())[r["cause"]] += 1
    for cell, counts in by_cell.items():
        total = sum(1 for r in rows if r["cell"] == cell)
        findings.append(f"Cell {cell}: stragglers in {sum(counts.values())} of {total} checkpoints ("
                        + ", ".join(f"{c} {n}" for c, n in counts.most_common()) + ").")
    return {"checkpoints": rows, "findings": findings, "placements": {"fastest": fastest, "cells": summary["cells"],
                                                                      "skipped": summary["skipped"],
                                                                      "io_modes": io_modes}}
