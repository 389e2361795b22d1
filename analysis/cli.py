"""``ckptlab trace ...`` and ``ckptlab analyze ...``: the analyzers on the command line.

    ckptlab trace export TRACE --chrome out.json [--phases write,fsync]
    ckptlab trace info TRACE [--json]
    ckptlab trace plot TRACE -o timeline.png [--step N | --window A:B] [--phases P1,P2]
    ckptlab trace threads TRACE [--json] [--plot OUT.png]
    ckptlab analyze TRACE_OR_EXPERIMENT... [--out DIR] [--json]
    ckptlab analyze EXPERIMENT_DIR [--json] [--plot OUT.png]   # the per-cell table

``add_trace_parser`` / ``add_analyze_parser`` register them on the ``ckptlab`` console script
(entry points ``trace`` and ``analyze``, pyproject.toml); each leaf sets ``func`` to a
function of the parsed args returning the exit code: 0, 2 for bad input (a missing or
unreadable file, an unknown phase), 127 when a plotting package is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_TOOL_MISSING = 127  # like a shell's "command not found"


def _open_trace(path: str, prog: str) -> Any:
    """The trace at ``path`` as a table, or None after printing why it cannot be read."""
    from ckptlab.profiling.schema import read_trace

    if not os.path.isfile(path):
        print(f"ckptlab {prog}: {path}: no such trace file", file=sys.stderr)
        return None
    try:
        return read_trace(path)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        print(f"ckptlab {prog}: cannot read {path} as a ckptlab trace: {e}", file=sys.stderr)
        return None


def _draw(prog: str, out: str, draw: Callable[[], object]) -> int | None:
    """Run ``draw``, which writes the figure ``out`` (a --plot); None once it did, else the
    exit code after saying why not (127: a plotting package is missing)."""
    try:
        draw()
    except ImportError as e:
        print(f"{prog}: --plot needs matplotlib, seaborn and pandas ({e}); pip install 'ckptlab[analysis]'",
              file=sys.stderr)
        return EXIT_TOOL_MISSING
    except OSError as e:
        print(f"{prog}: cannot write {out}: {e}", file=sys.stderr)
        return 2
    return None


def _phase_set(text: str | None) -> set[str] | None:
    return {p.strip() for p in text.split(",") if p.strip()} if text else None


def _trace_export(args: argparse.Namespace) -> int:
    from ckptlab.analysis.chrome import UnknownPhases, export_chrome

    if not os.path.isfile(args.trace):
        print(f"ckptlab trace export: {args.trace}: no such trace file", file=sys.stderr)
        return 2
    try:
        n = export_chrome(args.trace, args.chrome, _phase_set(args.phases))
    except UnknownPhases as e:
        print(f"ckptlab trace export: --phases: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        print(f"ckptlab trace export: cannot read {args.trace} as a ckptlab trace: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} events to {args.chrome}; open it in Perfetto UI (ui.perfetto.dev) or chrome://tracing")
    return 0


def _trace_info(args: argparse.Namespace) -> int:
    from ckptlab.analysis.reports import print_trace_info
    from ckptlab.analysis.summary import summarize
    from ckptlab.profiling.schema import read_trace, trace_metadata

    try:
        table = read_trace(args.trace)
    except (OSError, ValueError) as e:
        print(f"ckptlab trace info: cannot read {args.trace} as a ckptlab trace: {e}", file=sys.stderr)
        return 2
    meta = trace_metadata(table)
    rows = summarize(table)
    if args.json:
        print(json.dumps({"metadata": meta, "rows": table.num_rows, "phases": rows}, indent=2, default=str))
        return 0
    print_trace_info(args.trace, meta, table.num_rows, rows)
    return 0


def _parse_window(text: str) -> tuple[float, float]:
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a, b = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not START:END in seconds, e.g. 1.5:2.25") from None
    if not (0 <= a < b):
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= START < END (seconds from the trace's first record)")
    return a, b


def _trace_plot(args: argparse.Namespace) -> int:
    from ckptlab.analysis.tables import column
    from ckptlab.analysis.timeline import plot_timeline

    table = _open_trace(args.trace, "trace plot")
    if table is None:
        return 2
    window = None
    if args.window is not None and table.num_rows:
        t0 = int(column(table, "t_begin_ns").min())
        window = (t0 + int(args.window[0] * 1e9), t0 + int(args.window[1] * 1e9))
    title = args.title or f"{os.path.basename(args.trace)}" + (f", step {args.step}" if args.step is not None else "")
    try:
        drawn = plot_timeline(table, args.output, window_ns=window, step=args.step, phases=_phase_set(args.phases),
                              title=title)
    except ValueError as e:
        print(f"ckptlab trace plot: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"ckptlab trace plot: needs matplotlib ({e}); pip install 'ckptlab[analysis]'", file=sys.stderr)
        return EXIT_TOOL_MISSING
    except OSError as e:
        print(f"ckptlab trace plot: cannot write {args.output}: {e}", file=sys.stderr)
        return 2
    span = (drawn.t_end_ns - drawn.t_begin_ns) / 1e6
    print(f"drew {drawn.records} records on {len(drawn.tracks)} thread tracks ({span:.1f} ms) to {drawn.path}")
    return 0


def _trace_threads(args: argparse.Namespace) -> int:
    from ckptlab.analysis.reports import print_writer_threads
    from ckptlab.analysis.stragglers import thread_totals, writer_stragglers

    table = _open_trace(args.trace, "trace threads")
    if table is None:
        return 2
    checkpoints, threads = writer_stragglers(table)
    totals = thread_totals(threads)
    if args.plot is not None and checkpoints:
        from ckptlab.analysis.straggler_plot import plot_writer_report

        failed = _draw("ckptlab trace threads", args.plot,
                       lambda: plot_writer_report(table, args.plot, title=os.path.basename(args.trace)))
        if failed is not None:
            return failed
    if args.json:
        print(json.dumps({"checkpoints": checkpoints, "threads": threads, "totals": totals}, indent=2))
        return 0
    if not checkpoints:
        print(f"{args.trace}: no engine writes in this trace (a pccheck run with --trace records them)")
        return 0
    print_writer_threads(checkpoints, totals)
    if args.plot is not None:
        print(f"figure: {args.plot}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    """One experiment directory without --out: its table, as before; else the report."""
    if len(args.paths) == 1 and os.path.isdir(args.paths[0]) and args.out is None:
        return _analyze_experiment_table(args, args.paths[0])
    if args.plot is not None:
        print("ckptlab analyze: --plot draws the table of one experiment directory; with --out the report's "
              "figures go to DIR", file=sys.stderr)
        return 2
    return _analyze_report(args)


def _analyze_report(args: argparse.Namespace) -> int:
    from ckptlab.analysis.report import combined, load, write_report

    prog = "ckptlab analyze"
    inputs = []
    for path in args.paths:
        try:
            inputs.append(load(path))
        except (OSError, ValueError) as e:  # json.JSONDecodeError and pyarrow.ArrowInvalid are ValueErrors
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
    report = None
    if args.out is not None:
        try:
            report = write_report(inputs, args.out)
        except ImportError as e:
            print(f"{prog}: the report's figures need matplotlib, seaborn and pandas ({e}); "
                  f"pip install 'ckptlab[analysis]'", file=sys.stderr)
            return EXIT_TOOL_MISSING
        except OSError as e:
            print(f"{prog}: cannot write the report to {args.out}: {e}", file=sys.stderr)
            return 2
    doc = combined(inputs)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    for sentence in doc["findings"]:
        print(f"- {sentence}")
    if report is not None:
        print(f"report: {report}")
    return 0


def _analyze_experiment_table(args: argparse.Namespace, path: str) -> int:
    from ckptlab.analysis.affinity import load_experiment, plot_experiment, summarise
    from ckptlab.analysis.reports import print_affinity_summary

    prog = "ckptlab analyze"
    try:
        experiment = load_experiment(path)
    except (OSError, ValueError) as e:  # json.JSONDecodeError and pyarrow.ArrowInvalid are ValueErrors
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    summary = summarise(experiment)
    if args.plot is not None:
        failed = _draw(prog, args.plot, lambda: plot_experiment(experiment, args.plot))
        if failed is not None:
            return failed
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print_affinity_summary(summary)
    if args.plot is not None:
        print(f"figure: {args.plot}")
    return 0


def add_trace_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``ckptlab trace ...`` (entry point ``trace`` in the ``ckptlab.commands`` group)."""
    trace = subparsers.add_parser("trace", help="timing-record traces (Arrow): export to Perfetto, summarise, plot, stragglers",
                                  description="Work with trace files written by `--trace FILE` (docs/TRACE.md).")
    tsub = trace.add_subparsers(dest="trace_command", metavar="ACTION")
    tsub.required = True
    p = tsub.add_parser("export", help="write Chrome trace-event JSON (Perfetto UI, chrome://tracing)")
    p.add_argument("trace", help="trace file (Arrow IPC / Feather v2)")
    p.add_argument("--chrome", required=True, metavar="OUT.json", help="output JSON file")
    p.add_argument("--phases", default=None, metavar="P1,P2", help="only these phases (default: all)")
    p.set_defaults(func=_trace_export)
    p = tsub.add_parser("info", help="run metadata and a per-phase summary (count, bytes, durations)")
    p.add_argument("trace", help="trace file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_trace_info)
    p = tsub.add_parser("plot", help="draw a timeline PNG: one track per thread, a colour per phase",
                        description="Draw the trace (or one step's checkpoint, or a time window) as a timeline "
                                    "PNG: one track per thread, nested phases in lanes, a colour per phase.")
    p.add_argument("trace", help="trace file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png", help="output PNG")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--step", type=int, default=None, metavar="N",
                       help="zoom on training step N: from its first record (the save) to its last (the commit)")
    where.add_argument("--window", type=_parse_window, default=None, metavar="START:END",
                       help="seconds from the trace's first record, e.g. 1.5:2.25")
    p.add_argument("--phases", default=None, metavar="P1,P2", help="only these phases (default: all)")
    p.add_argument("--title", default=None, help="figure title (default: the file name and step)")
    p.set_defaults(func=_trace_plot)
    p = tsub.add_parser("threads", help="writer-thread stragglers and CPU migrations per checkpoint",
                        description="Per checkpoint: makespan, last/median finish, imbalance, the slowest "
                                    "writer thread and why (started late / worked slowly), outliers, "
                                    "CPU migrations; then per thread over all checkpoints.")
    p.add_argument("trace", help="trace file")
    p.add_argument("--json", action="store_true", help="machine-readable output (every row)")
    p.add_argument("--plot", default=None, metavar="OUT.png",
                   help="also draw latency ECDFs, work, finish per checkpoint and CPUs per writer thread")
    p.set_defaults(func=_trace_threads)
    return trace


def add_analyze_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``ckptlab analyze PATH... [--out DIR]`` (entry point ``analyze`` in the ``ckptlab.commands`` group)."""
    p = subparsers.add_parser("analyze", help="findings in words: stragglers and their causes, the fastest placement",
                              description="For traces and experiment directories (the --out of `ckptlab "
                                          "experiment affinity`): which writer thread straggled in each checkpoint, "
                                          "by how much and why (cpu-wait, blocked, on-cpu, late-start), the makespan "
                                          "at the median thread's speed, and for an experiment the fastest placement "
                                          "with its interval; --out DIR writes DIR/report.md and its figures. One "
                                          "experiment directory without --out prints its per-cell table instead "
                                          "(--json: summary.json's content, --plot: the box plots). Reads only.")
    p.add_argument("paths", nargs="+", metavar="TRACE_OR_EXPERIMENT",
                   help="trace files (.arrow) and experiment directories (hold runs.jsonl, traces/, manifest.json)")
    p.add_argument("--out", default=None, metavar="DIR", help="write DIR/report.md and its PNGs")
    p.add_argument("--json", action="store_true",
                   help="print the findings as JSON ({\"checkpoints\": [...], \"findings\": [...]}); for one "
                        "experiment directory without --out, the summary.json content")
    p.add_argument("--plot", default=None, metavar="OUT.png",
                   help="one experiment directory without --out: also draw the per-cell box plots to OUT.png")
    p.set_defaults(func=_analyze)
    return p


def run(args: argparse.Namespace) -> int:
    return int(args.func(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ckptlab.analysis.cli trace export ...`` (same as the console script)."""
    parser = argparse.ArgumentParser(prog="ckptlab")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_trace_parser(sub)
    add_analyze_parser(sub)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
