"""Text reports of the analyzers: the tables ``ckptlab trace info|threads`` and ``ckptlab
analyze`` print (rich), kept apart from the argument parsing so the experiment driver prints
the same table at its end."""
from __future__ import annotations

import sys
from typing import Any

NAMED_STRAGGLER_RATIO = 1.1  # `trace threads` says why the last writer was last from this last/median on


def _console(width: int) -> Any:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else width)


def _table(title: str, columns: tuple[str, ...], left: tuple[str, ...] = (), no_wrap: tuple[str, ...] = ()) -> Any:
    from rich.table import Table

    out = Table(title=title)
    for col in columns:
        out.add_column(col, justify="left" if col in left else "right", no_wrap=col in no_wrap)
    return out


def print_trace_info(path: str, meta: dict[str, Any], rows: int, phases: list[dict[str, Any]]) -> None:
    """Run metadata and the per-phase table of ``summary.summarize``."""
    console = _console(160)
    console.print(f"[bold]{path}[/bold]: {rows} records, run {meta.get('run_id')} on "
                  f"{meta.get('host')} ({meta.get('arch')}, {meta.get('cpu_model')}, {meta.get('cpu_count')} CPUs, "
                  f"allowed {meta.get('cpus_allowed')}), dropped {meta.get('dropped_records', '0')}")
    threads = meta.get("threads") or {}
    console.print("threads: " + ", ".join(f"{n} ({t})" for t, n in threads.items()))
    out = _table("per phase", ("phase", "records", "threads", "bytes", "busy s", "mean ms", "p50 ms", "p99 ms",
                               "max ms", "GB/s"), left=("phase",))
    for r in phases:
        out.add_row(r["phase"], str(r["records"]), str(r["threads"]), f"{r['bytes']:,}", f"{r['busy_s']:.3f}",
                    f"{r['mean_ms']:.3f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['max_ms']:.3f}",
                    "" if r["gb_per_s"] is None else f"{r['gb_per_s']:.2f}")
    console.print(out)


def percent_parts(row: dict[str, Any]) -> list[str]:
    """A thread's on-CPU / CPU-wait / blocked / idle shares as table cells, '-' when unmeasured."""
    from ckptlab.analysis.stragglers import TIME_PARTS

    values = [row[key] for key, _ in TIME_PARTS]
    if any(v is None for v in values) or sum(values) <= 0:
        return ["-"] * len(values)
    return [f"{100 * v / sum(values):.0f}" for v in values]


def print_writer_threads(checkpoints: list[dict[str, Any]], totals: list[dict[str, Any]]) -> None:
    """The three tables of ``trace threads``: per checkpoint, where the time went, per thread."""
    from ckptlab.profiling.metadata import cpu_list_string

    console = _console(160)
    out = _table("writer threads per checkpoint (times from the checkpoint's first engine record)",
                 ("step", "threads", "MB", "makespan ms", "last/median", "imbalance %", "slowest", "why",
                  "outliers", "migrations"), left=("slowest", "why", "outliers"))
    for c in checkpoints:
        out.add_row(str(c["step"]), str(c["threads"]), f"{c['bytes'] / 1e6:.1f}", f"{c['makespan_s'] * 1e3:.2f}",
                    f"{c['straggler_ratio']:.2f}", f"{c['imbalance_pct']:.0f}", c["slowest"],
                    c["slowest_cause"] if c["straggler_ratio"] >= NAMED_STRAGGLER_RATIO else "-",
                    ", ".join(c["outliers"]) or "-", str(c["migrations"]))
    console.print(out)
    measured = [c for c in checkpoints if c["blocked_s"] is not None]
    if measured:
        out = _table("where the writers' time went per checkpoint (sum over threads; what-if = makespan "
                     "estimate without that part)",
                     ("step", "on CPU ms", "CPU wait ms", "blocked ms", "idle ms", "preempted", "makespan ms",
                      "if no CPU wait", "if never blocked"))
        for c in measured:
            out.add_row(str(c["step"]), *(f"{c[k] * 1e3:.2f}" for k in ("on_cpu_s", "runq_wait_s", "blocked_s",
                                                                           "idle_s")),
                        str(c["ctx_invol"]), f"{c['makespan_s'] * 1e3:.2f}", f"{c['if_no_runq_wait_s'] * 1e3:.2f}",
                        f"{c['if_no_blocked_s'] * 1e3:.2f}")
        console.print(out)
    out = _table("per writer thread, all checkpoints (% of its active time)",
                 ("thread", "checkpoints", "chunks", "MB", "busy s", "median finish ms", "last", "on CPU %",
                  "CPU wait %", "blocked %", "idle %", "preempted", "migrations", "CPUs"),
                 left=("thread", "CPUs"), no_wrap=("thread",))
    for r in totals:
        out.add_row(r["thread_name"], str(r["checkpoints"]), str(r["chunks"]), f"{r['bytes'] / 1e6:.1f}",
                    f"{r['busy_s']:.3f}", f"{r['median_finish_s'] * 1e3:.2f}", str(r["times_last"]),
                    *percent_parts(r), "-" if r["ctx_invol"] is None else str(r["ctx_invol"]),
                    str(r["migrations"]), cpu_list_string(r["cpus"]) or "?")
    console.print(out)


def print_affinity_summary(summary: dict[str, Any]) -> None:
    """The per-cell table of an affinity experiment (``analysis.affinity.summarise``)."""

    def q(m: dict, fmt: str = "{:.1f}") -> str:
        if m["median"] is None:
            return "-"
        return f"{fmt.format(m['median'])} [{fmt.format(m['q1'])}-{fmt.format(m['q3'])}]"

    table = _table("writer placement: median [IQR] over runs; vs unpinned = ratio of median makespans, "
                   "95 % bootstrap CI, Mann-Whitney p",
                   ("cell", "writers on", "training on", "runs", "makespan ms", "vs unpinned", "p", "last/median",
                    "CPU wait ms", "preempted", "migrations"), left=("cell", "writers on", "training on"))
    for c in summary["cells"]:
        vs = c["vs_unpinned"]
        ratio = "-" if vs is None else f"{vs['makespan_ratio']:.2f} ({vs['ci95'][0]:.2f}-{vs['ci95'][1]:.2f})"
        p = "-" if vs is None or vs["mann_whitney_p"] is None else f"{vs['mann_whitney_p']:.3f}"
        table.add_row(c["cell"], c["writer_cpus"] or "any", c["training_cpus"], str(c["runs"]), q(c["makespan_ms"]),
                      ratio, p, q(c["straggler_ratio"], "{:.2f}"), q(c["runq_wait_ms"]), q(c["ctx_invol"], "{:.0f}"),
                      q(c["migrations"], "{:.0f}"))
    _console(170).print(table)
