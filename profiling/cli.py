"""``ckptlab trace ...`` and ``ckptlab profile ...`` subcommands.

    ckptlab trace export TRACE --chrome out.json [--phases write,fsync]
    ckptlab trace info TRACE [--json]
    ckptlab trace plot TRACE -o timeline.png [--step N | --window A:B] [--phases P1,P2]
    ckptlab trace threads TRACE [--json] [--plot OUT.png]
    ckptlab profile nsys [-o NAME] [--sample none] [--no-stats] [--dry-run] -- CMD ...
    ckptlab profile py-spy [-o FILE] [--rate HZ] [--native] [--idle] [--dry-run] -- CMD ...
    ckptlab profile affinity --dir DIR --out OUT [--threads 1,2,4] [--placements ...] [--repeats N] ...

``add_trace_parser`` / ``add_profile_parser`` register them on the ``ckptlab`` console script
(entry points ``trace`` and ``profile``, pyproject.toml);
each leaf sets ``func`` to a function of the parsed args returning the exit code, and
``run(args)`` dispatches to it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

EXIT_TOOL_MISSING = 127  # like a shell's "command not found"
NAMED_STRAGGLER_RATIO = 1.1  # `trace threads` says why the last writer was last from this last/median on


def _command(args: argparse.Namespace, prog: str) -> list[str] | None:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print(f"ckptlab {prog}: give the command to run after `--`, e.g. "
              f"`ckptlab {prog} -- python -m training.train_pccheck --preset tiny`", file=sys.stderr)
        return None
    return cmd


def _open_trace(path: str, prog: str):
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


def _trace_export(args: argparse.Namespace) -> int:
    from ckptlab.profiling.chrome import UnknownPhases, export_chrome

    if not os.path.isfile(args.trace):
        print(f"ckptlab trace export: {args.trace}: no such trace file", file=sys.stderr)
        return 2
    phases = {p.strip() for p in args.phases.split(",") if p.strip()} if args.phases else None
    try:
        n = export_chrome(args.trace, args.chrome, phases)
    except UnknownPhases as e:
        print(f"ckptlab trace export: --phases: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        print(f"ckptlab trace export: cannot read {args.trace} as a ckptlab trace: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} events to {args.chrome}; open it in Perfetto UI (ui.perfetto.dev) or chrome://tracing")
    return 0


def _trace_info(args: argparse.Namespace) -> int:
    from ckptlab.profiling.schema import read_trace, trace_metadata
    from ckptlab.profiling.summary import summarize

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
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(f"[bold]{args.trace}[/bold]: {table.num_rows} records, run {meta.get('run_id')} on "
                  f"{meta.get('host')} ({meta.get('arch')}, {meta.get('cpu_model')}, {meta.get('cpu_count')} CPUs, "
                  f"allowed {meta.get('cpus_allowed')}), dropped {meta.get('dropped_records', '0')}")
    threads = meta.get("threads") or {}
    console.print("threads: " + ", ".join(f"{n} ({t})" for t, n in threads.items()))
    out = Table(title="per phase")
    for col in ("phase", "records", "threads", "bytes", "busy s", "mean ms", "p50 ms", "p99 ms", "max ms", "GB/s"):
        out.add_column(col, justify="left" if col == "phase" else "right")
    for r in rows:
        out.add_row(r["phase"], str(r["records"]), str(r["threads"]), f"{r['bytes']:,}", f"{r['busy_s']:.3f}",
                    f"{r['mean_ms']:.3f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['max_ms']:.3f}",
                    "" if r["gb_per_s"] is None else f"{r['gb_per_s']:.2f}")
    console.print(out)
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
    from ckptlab.profiling.tables import column
    from ckptlab.profiling.timeline import plot_timeline

    table = _open_trace(args.trace, "trace plot")
    if table is None:
        return 2
    window = None
    if args.window is not None and table.num_rows:
        t0 = int(column(table, "t_begin_ns").min())
        window = (t0 + int(args.window[0] * 1e9), t0 + int(args.window[1] * 1e9))
    phases = {p.strip() for p in args.phases.split(",") if p.strip()} if args.phases else None
    title = args.title or f"{os.path.basename(args.trace)}" + (f", step {args.step}" if args.step is not None else "")
    try:
        drawn = plot_timeline(table, args.output, window_ns=window, step=args.step, phases=phases, title=title)
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
    from ckptlab.profiling.metadata import cpu_list_string
    from ckptlab.profiling.stragglers import thread_totals, writer_stragglers

    table = _open_trace(args.trace, "trace threads")
    if table is None:
        return 2
    checkpoints, threads = writer_stragglers(table)
    totals = thread_totals(threads)
    if args.plot is not None and checkpoints:
        from ckptlab.profiling.straggler_plot import plot_writer_report

        try:
            plot_writer_report(table, args.plot, title=os.path.basename(args.trace))
        except ImportError as e:
            print(f"ckptlab trace threads: --plot needs matplotlib, seaborn and pandas ({e}); "
                  f"pip install 'ckptlab[analysis]'", file=sys.stderr)
            return EXIT_TOOL_MISSING
        except OSError as e:
            print(f"ckptlab trace threads: cannot write {args.plot}: {e}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps({"checkpoints": checkpoints, "threads": threads, "totals": totals}, indent=2))
        return 0
    if not checkpoints:
        print(f"{args.trace}: no engine writes in this trace (a pccheck run with --trace records them)")
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    out = Table(title="writer threads per checkpoint (times from the checkpoint's first engine record)")
    for col in ("step", "threads", "MB", "makespan ms", "last/median", "imbalance %", "slowest", "why",
                "outliers", "migrations"):
        out.add_column(col, justify="left" if col in ("slowest", "why", "outliers") else "right")
    for c in checkpoints:
        out.add_row(str(c["step"]), str(c["threads"]), f"{c['bytes'] / 1e6:.1f}", f"{c['makespan_s'] * 1e3:.2f}",
                    f"{c['straggler_ratio']:.2f}", f"{c['imbalance_pct']:.0f}", c["slowest"],
                    c["slowest_cause"] if c["straggler_ratio"] >= NAMED_STRAGGLER_RATIO else "-",
                    ", ".join(c["outliers"]) or "-", str(c["migrations"]))
    console.print(out)
    measured = [c for c in checkpoints if c["blocked_s"] is not None]
    if measured:
        out = Table(title="where the writers' time went per checkpoint (sum over threads; what-if = makespan "
                          "estimate without that part)")
        for col in ("step", "on CPU ms", "CPU wait ms", "blocked ms", "idle ms", "preempted", "makespan ms",
                    "if no CPU wait", "if never blocked"):
            out.add_column(col, justify="right")
        for c in measured:
            out.add_row(str(c["step"]), *(f"{c[k] * 1e3:.2f}" for k in ("on_cpu_s", "runq_wait_s", "blocked_s",
                                                                           "idle_s")),
                        str(c["ctx_invol"]), f"{c['makespan_s'] * 1e3:.2f}", f"{c['if_no_runq_wait_s'] * 1e3:.2f}",
                        f"{c['if_no_blocked_s'] * 1e3:.2f}")
        console.print(out)
    out = Table(title="per writer thread, all checkpoints (% of its active time)")
    for col in ("thread", "checkpoints", "chunks", "MB", "busy s", "median finish ms", "last", "on CPU %",
                "CPU wait %", "blocked %", "idle %", "preempted", "migrations", "CPUs"):
        out.add_column(col, justify="left" if col in ("thread", "CPUs") else "right", no_wrap=col == "thread")
    for r in totals:
        out.add_row(r["thread_name"], str(r["checkpoints"]), str(r["chunks"]), f"{r['bytes'] / 1e6:.1f}",
                    f"{r['busy_s']:.3f}", f"{r['median_finish_s'] * 1e3:.2f}", str(r["times_last"]),
                    *_percent_parts(r), "-" if r["ctx_invol"] is None else str(r["ctx_invol"]),
                    str(r["migrations"]), cpu_list_string(r["cpus"]) or "?")
    console.print(out)
    if args.plot is not None:
        console.print(f"figure: {args.plot}")
    return 0


def _percent_parts(row: dict) -> list[str]:
    """A thread's on-CPU / CPU-wait / blocked / idle shares as table cells, '-' when unmeasured."""
    from ckptlab.profiling.stragglers import TIME_PARTS

    values = [row[key] for key, _ in TIME_PARTS]
    if any(v is None for v in values) or sum(values) <= 0:
        return ["-"] * len(values)
    return [f"{100 * v / sum(values):.0f}" for v in values]


def _profile_nsys(args: argparse.Namespace) -> int:
    from ckptlab.profiling.tools import NsysOptions, ToolMissing, default_output, run_id_for_child, run_nsys

    cmd = _command(args, "profile nsys")
    if cmd is None:
        return 2
    run_id = run_id_for_child()
    opts = NsysOptions(output=args.output or default_output("nsys", run_id), trace=args.trace, sample=args.sample,
                       stats=not args.no_stats, extra=tuple(args.nsys_arg or ()))
    try:
        return run_nsys(cmd, opts, dry_run=args.dry_run, run_id=run_id)
    except ToolMissing as e:
        print(f"ckptlab profile nsys: {e}", file=sys.stderr)
        return EXIT_TOOL_MISSING


def _profile_py_spy(args: argparse.Namespace) -> int:
    from ckptlab.profiling.tools import PySpyOptions, ToolMissing, default_output, run_id_for_child, run_py_spy

    cmd = _command(args, "profile py-spy")
    if cmd is None:
        return 2
    run_id = run_id_for_child()
    opts = PySpyOptions(output=args.output or default_output("py-spy", run_id) + ".speedscope.json", rate=args.rate,
                        native=args.native, idle=args.idle, subprocesses=args.subprocesses, gil=args.gil)
    try:
        return run_py_spy(cmd, opts, dry_run=args.dry_run, run_id=run_id)
    except ToolMissing as e:
        print(f"ckptlab profile py-spy: {e}", file=sys.stderr)
        return EXIT_TOOL_MISSING


def _int_list(value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {value!r}")
    return out


def _profile_affinity(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ckptlab.core.config import parse_cpu_list
    from ckptlab.profiling.affinity import ExperimentSpec, plan, run_experiment

    prog = "ckptlab profile affinity"
    try:
        spec = ExperimentSpec(directory=args.dir, out=args.out, threads=args.threads,
                              placements=tuple(p.strip() for p in args.placements.split(",") if p.strip()),
                              repeats=args.repeats, saves=args.saves, size_mb=args.size_mb, chunk_mb=args.chunk_mb,
                              load_procs=args.load_procs, io_mode=args.io_mode, seed=args.seed)
        if args.cpus:
            spec.cpus = parse_cpu_list(args.cpus, "--cpus")
        spec.validate()
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    cells, skipped = plan(spec)
    for s in skipped:
        print(f"{prog}: skipping {s['cell']}: {s['reason']}", file=sys.stderr)
    if args.dry_run:
        for c in cells:
            print(f"{c.name:16s} {c.describe()}")
        print(f"{len(cells)} cells x {spec.repeats} runs x {spec.saves + 1} saves of {spec.size_mb} MiB")
        return 0
    bar = tqdm(total=len(cells) * spec.repeats, unit="run", desc="affinity", file=sys.stderr, disable=None)

    def progress(done: int, total: int, what: str) -> None:
        bar.n = done
        bar.set_postfix_str(what)
        bar.refresh()

    try:
        summary = run_experiment(spec, progress)
    except (ValueError, FileExistsError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    _print_affinity_summary(summary, args.out)
    return 0


def _print_affinity_summary(summary: dict, out_dir: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def q(m: dict, fmt: str = "{:.1f}") -> str:
        if m["median"] is None:
            return "-"
        return f"{fmt.format(m['median'])} [{fmt.format(m['q1'])}-{fmt.format(m['q3'])}]"

    console = Console(width=None if sys.stdout.isatty() else 170)
    table = Table(title="writer placement: median [IQR] over runs; vs unpinned = ratio of median makespans, "
                        "95 % bootstrap CI, Mann-Whitney p")
    for col in ("cell", "writers on", "training on", "runs", "makespan ms", "vs unpinned", "p", "last/median",
                "CPU wait ms", "preempted", "migrations"):
        table.add_column(col, justify="left" if col in ("cell", "writers on", "training on") else "right")
    for c in summary["cells"]:
        vs = c["vs_unpinned"]
        ratio = "-" if vs is None else f"{vs['makespan_ratio']:.2f} ({vs['ci95'][0]:.2f}-{vs['ci95'][1]:.2f})"
        p = "-" if vs is None or vs["mann_whitney_p"] is None else f"{vs['mann_whitney_p']:.3f}"
        table.add_row(c["cell"], c["writer_cpus"] or "any", c["training_cpus"], str(c["runs"]), q(c["makespan_ms"]),
                      ratio, p, q(c["straggler_ratio"], "{:.2f}"), q(c["runq_wait_ms"]), q(c["ctx_invol"], "{:.0f}"),
                      q(c["migrations"], "{:.0f}"))
    console.print(table)
    console.print(f"results: {out_dir}/summary.json, runs.jsonl, traces/, manifest.json"
                  + (f", {summary['figure']}" if summary.get("figure") else f" ({summary.get('figure_missing')})"))


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``trace`` and ``profile`` (this module's own ``main``)."""
    add_trace_parser(subparsers)
    add_profile_parser(subparsers)


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


def add_profile_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``ckptlab profile ...`` (entry point ``profile`` in the ``ckptlab.commands`` group)."""
    prof = subparsers.add_parser("profile", help="run a command under nsys or py-spy; the writer-placement experiment",
                                 description="Profile a command (docs/PROFILING.md; put it after `--`), or run "
                                             "the writer-thread affinity experiment.")
    psub = prof.add_subparsers(dest="profile_command", metavar="TOOL")
    psub.required = True
    p = psub.add_parser("nsys", help="Nsight Systems: CUDA + NVTX + OS runtime, then the NVTX summary",
                        description="nsys profile --trace=cuda,nvtx,osrt --sample=cpu --cpuctxsw=process-tree, "
                                    "then nsys stats --report=nvtx_sum.")
    p.add_argument("-o", "--output", default=None, metavar="NAME",
                   help="report name (nsys adds .nsys-rep; default ckptlab-nsys-<run id>)")
    p.add_argument("--trace", default="cuda,nvtx,osrt", help="nsys --trace list (default cuda,nvtx,osrt)")
    p.add_argument("--sample", choices=("cpu", "none"), default="cpu", help="CPU sampling (default cpu)")
    p.add_argument("--no-stats", action="store_true", help="skip `nsys stats` afterwards")
    p.add_argument("--nsys-arg", action="append", metavar="ARG",
                   help="extra argument for `nsys profile` (repeatable), e.g. --nsys-arg=--duration=60")
    p.add_argument("--dry-run", action="store_true", help="print the nsys commands instead of running them")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command to profile")
    p.set_defaults(func=_profile_nsys)
    p = psub.add_parser("py-spy", help="py-spy: sampled Python stacks as a speedscope profile",
                        description="py-spy record --format speedscope --threads [--native] [--idle] -- CMD")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="profile file (default ckptlab-py-spy-<run id>.speedscope.json)")
    p.add_argument("--rate", type=int, default=100, help="samples per second (default 100)")
    p.add_argument("--native", action="store_true", help="include C/C++ frames (engine, torch)")
    p.add_argument("--idle", action="store_true", help="include idle threads (blocked in fsync, waits)")
    p.add_argument("--subprocesses", action="store_true", help="also profile child processes")
    p.add_argument("--gil", action="store_true", help="only samples that hold the GIL")
    p.add_argument("--dry-run", action="store_true", help="print the py-spy command instead of running it")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command to profile")
    p.set_defaults(func=_profile_py_spy)
    p = psub.add_parser("affinity", help="experiment: writer-thread count x CPU placement, repeated, compared",
                        description="For each writer-thread count and placement (unpinned, compact, spread, "
                                    "disjoint from the load), save checkpoints with a traced pccheck engine, "
                                    "repeatedly, in random order; report makespan, stragglers, CPU wait and "
                                    "migrations per cell against unpinned (docs/PROFILING.md).")
    p.add_argument("--dir", required=True, help="directory for the checkpoints (the file system under test)")
    p.add_argument("--out", required=True, help="results directory (must not hold an experiment already)")
    p.add_argument("--threads", type=_int_list, default=(1, 2, 4), metavar="N1,N2",
                   help="writer-thread counts (default 1,2,4)")
    p.add_argument("--placements", default="unpinned,compact,spread,disjoint", metavar="P1,P2",
                   help="placements (default all: unpinned,compact,spread,disjoint)")
    p.add_argument("--cpus", default=None, metavar="LIST",
                   help="CPUs the placements use, e.g. 0-15 (default: every CPU this process may use)")
    p.add_argument("--repeats", type=int, default=5, help="runs per cell (default 5)")
    p.add_argument("--saves", type=int, default=3, help="measured checkpoints per run, after a warm-up (default 3)")
    p.add_argument("--size-mb", type=int, default=256, help="checkpoint size in MiB (default 256)")
    p.add_argument("--chunk-mb", type=int, default=16, help="engine chunk size in MiB (default 16)")
    p.add_argument("--load-procs", type=int, default=0,
                   help="CPU-bound processes standing in for training threads (default 0)")
    p.add_argument("--io-mode", default="auto", help="engine I/O mode: auto, direct, buffered (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run order, state and bootstrap (default 0)")
    p.add_argument("--dry-run", action="store_true", help="print the cells and exit")
    p.set_defaults(func=_profile_affinity)
    return prof


def run(args: argparse.Namespace) -> int:
    return int(args.func(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ckptlab.profiling.cli trace export ...`` (same as the console script)."""
    parser = argparse.ArgumentParser(prog="ckptlab")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_parsers(sub)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
