"""``ckptlab experiment affinity``: run the writer-placement matrix, then print its summary.

    ckptlab experiment affinity --dir DIR --out OUT [--threads 1,2,4] [--placements ...]
        [--io-modes direct,buffered] [--repeats N] ...

Entry point ``experiment`` (group ``ckptlab.commands``, pyproject.toml). The summary at the end
is ``ckptlab analyze OUT``'s, which re-summarises the directory later without running anything.
Exit codes: 0; 2 for bad flags or an output directory that already holds an experiment; 1 when
a run fails on I/O.
"""
from __future__ import annotations

import argparse
import sys


def _int_list(value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {value!r}")
    return out


def _affinity(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ckptlab.analysis.reports import print_affinity_summary
    from ckptlab.core.config import parse_cpu_list
    from ckptlab.training.experiments.affinity import ExperimentSpec, plan, run_experiment

    prog = "ckptlab experiment affinity"
    try:
        spec = ExperimentSpec(directory=args.dir, out=args.out, threads=args.threads,
                              placements=tuple(p.strip() for p in args.placements.split(",") if p.strip()),
                              repeats=args.repeats, saves=args.saves, size_mb=args.size_mb, chunk_mb=args.chunk_mb,
                              load_procs=args.load_procs, seed=args.seed,
                              io_modes=tuple(m.strip() for m in args.io_modes.split(",") if m.strip()))
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
    print_affinity_summary(summary)
    figure = f", {summary['figure']}" if summary.get("figure") else f" ({summary.get('figure_missing')})"
    print(f"results: {args.out}/summary.json, runs.jsonl, traces/, manifest.json{figure}; "
          f"re-summarise with `ckptlab analyze {args.out}`")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The experiment's flags."""
    p.add_argument("--dir", required=True, help="directory for the checkpoints (the file system under test)")
    p.add_argument("--out", required=True, help="results directory (must not hold an experiment already)")
    p.add_argument("--threads", type=_int_list, default=(1, 2, 4), metavar="N1,N2",
                   help="writer-thread counts (default 1,2,4)")
    p.add_argument("--placements", default="unpinned,compact,spread,disjoint", metavar="P1,P2",
                   help="placements (default unpinned,compact,spread,disjoint; also numa-local, "
                        "numa-local-noirq, numa-remote, from sysfs: docs/PROFILING.md)")
    p.add_argument("--cpus", default=None, metavar="LIST",
                   help="CPUs the placements use, e.g. 0-15 (default: every CPU this process may use)")
    p.add_argument("--repeats", type=int, default=5, help="runs per cell (default 5)")
    p.add_argument("--saves", type=int, default=3, help="measured checkpoints per run, after a warm-up (default 3)")
    p.add_argument("--size-mb", type=int, default=256, help="checkpoint size in MiB (default 256)")
    p.add_argument("--chunk-mb", type=int, default=16, help="engine chunk size in MiB (default 16)")
    p.add_argument("--load-procs", type=int, default=0,
                   help="CPU-bound processes standing in for training threads (default 0)")
    p.add_argument("--io-modes", "--io-mode", dest="io_modes", default="auto", metavar="M1,M2",
                   help="engine I/O modes, an axis of the matrix: auto, direct (O_DIRECT), buffered (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run order, state and bootstrap (default 0)")
    p.add_argument("--dry-run", action="store_true", help="print the cells and exit")


def add_experiment_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``ckptlab experiment ...`` (entry point ``experiment`` in the ``ckptlab.commands`` group)."""
    exp = subparsers.add_parser("experiment", help="experiments that run checkpointers: the writer-placement matrix",
                                description="Run an experiment on this machine and summarise it (docs/PROFILING.md).")
    esub = exp.add_subparsers(dest="experiment_command", metavar="EXPERIMENT")
    esub.required = True
    p = esub.add_parser("affinity", help="writer-thread count x CPU placement, repeated, compared with unpinned",
                        description="For each writer-thread count, placement (unpinned, compact, spread, "
                                    "disjoint from the load, numa-local, numa-local-noirq, numa-remote) and I/O "
                                    "mode, save checkpoints with a traced pccheck engine, "
                                    "repeatedly, in random order; report makespan, stragglers, CPU wait and "
                                    "migrations per cell against unpinned (docs/PROFILING.md).")
    add_arguments(p)
    p.set_defaults(func=_affinity)
    return exp


def main(argv: list[str] | None = None) -> int:
    """``python -m ckptlab.training.experiments.cli experiment affinity ...`` (same as the console script)."""
    parser = argparse.ArgumentParser(prog="ckptlab")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_experiment_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
