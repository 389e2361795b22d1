"""``ckptlab tune DIR``: probe a directory's storage and recommend a checkpoint configuration.

The probe is core/storage_probe.py's (the engine writing a synthetic checkpoint per io_mode x
threads, a cold read, D2H on CUDA); the rule is core/tuning.py's (docs/PERFORMANCE.md, "The
tuning rule"). Registered as a ``ckptlab`` subcommand through the ``ckptlab.commands`` entry
point ``tune``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

MiB = 1 << 20


def _positive(kind: type, what: str):
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return value
    return parse


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a fraction in (0, 1) such as 0.01 for 1 %, got {text!r}")
    return value


def _threads(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"comma-separated writer-thread counts >= 1 such as 1,2,4,8, got {text!r}")
    return values


def _io_modes(text: str) -> tuple[str, ...]:
    from ckptlab.core.storage_probe import PROBE_IO_MODES

    values = tuple(p.strip() for p in text.split(","))
    if not values or any(v not in PROBE_IO_MODES for v in values):
        raise argparse.ArgumentTypeError(f"comma-separated among {','.join(PROBE_IO_MODES)}, got {text!r}")
    return values


def add_tune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="measure a directory's bandwidths and recommend max_inflight, chunk size, "
                                    "writer threads and the checkpoint interval",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, help="directory the checkpoints will go to (must exist and be writable)")
    state = p.add_mutually_exclusive_group(required=True)
    state.add_argument("--state-bytes", type=_positive(int, "a whole number of bytes > 0"),
                       help="bytes of one checkpoint (model + optimizer + extras)")
    state.add_argument("--state-mb", type=_positive(float, "MiB > 0"), help="the same in MiB")
    p.add_argument("--iteration-s", type=_positive(float, "seconds > 0"), required=True,
                   help="one training iteration without checkpoints, in seconds")
    p.add_argument("--budget", type=_budget, default=0.01, help="tolerated slowdown (default 0.01 = 1 %%)")
    p.add_argument("--staging-mb", type=_positive(float, "MiB > 0"), default=None,
                   help="host memory for staging (default twice the state, PCcheck's DRAM ratio)")
    p.add_argument("--lost-per-ckpt-s", type=_positive(float, "seconds > 0"), default=None,
                   help="training time lost per checkpoint measured by ckptlab bench (replaces the estimated stall)")
    p.add_argument("--threads", type=_threads, default=(1, 2, 4, 8), help="writer-thread counts to probe (default 1,2,4,8)")
    p.add_argument("--io-modes", type=_io_modes, default=("direct", "buffered"),
                   help="I/O modes to probe (default direct,buffered)")
    p.add_argument("--probe-mb", type=_positive(float, "MiB > 0"), default=256.0,
                   help="bytes written per probe, at most the state (default 256)")
    p.add_argument("--repeats", type=_positive(int, "a whole number of rounds >= 1"), default=3,
                   help="rounds of the probe, interleaved; each figure is their median (default 3)")
    p.add_argument("--json", action="store_true", help="print the ckptlab.tune/1 JSON instead of the table")
    p.add_argument("--save", type=Path, default=None,
                   help="also write the JSON here (CheckpointConfig.auto(probe=FILE) reads it)")
    p.set_defaults(func=_tune)


def _writable(directory: Path) -> str:
    """Why ``directory`` cannot take probe files, or ''."""
    if not directory.is_dir():
        return f"{directory} is not a directory"
    try:  # the real test: os.access says yes to root on a read-only or virtual file system
        os.rmdir(tempfile.mkdtemp(prefix=".ckptlab-tune-check-", dir=directory))
    except OSError as exc:
        return f"cannot write to {directory}: {exc.strerror or exc}"
    return ""


def _print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    rec, measured = doc["recommendation"], doc["measured"]
    console = Console()
    repeats = measured.get("repeats", 1)
    rounds = f", median of {repeats} rounds" if repeats > 1 else ""
    writes = Table(title=f"measured in {measured['directory']} ({measured['probe_bytes'] / MiB:.1f} MiB per probe{rounds})")
    for col in ("io_mode", "threads", "write GB/s", "durable s") + (("fastest-slowest s",) if repeats > 1 else ()):
        writes.add_column(col, justify="left" if col == "io_mode" else "right")
    for w in measured["writes"]:
        spread = (f"{min(w['samples']):.3f}-{max(w['samples']):.3f}",) if repeats > 1 else ()
        writes.add_row(w["io_mode"], str(w["threads"]), f"{w['gbps']:.2f}", f"{w['seconds']:.3f}", *spread)
    console.print(writes)
    d2h = "n/a (no CUDA)" if measured["d2h_gbps"] is None else f"{measured['d2h_gbps']:.2f} GB/s"
    console.print(f"cold read {measured['read_gbps']:.2f} GB/s (resident {measured['read_resident']:.0%}), "
                  f"staging copy {measured['copy_gbps']:.2f} GB/s, D2H {d2h}"
                  + (f"; O_DIRECT not measured: {measured['direct_note']}" if measured["direct_note"] else ""))
    table = Table(title="recommended")
    table.add_column("setting")
    table.add_column("value", justify="right")
    for key in ("writer_threads", "io_mode", "chunk_bytes", "max_inflight", "staging_bytes"):
        value = rec[key]
        table.add_row(key, f"{value / MiB:.1f} MiB" if key.endswith("_bytes") else str(value))
    table.add_row("interval", f"{rec['interval_steps']} iterations ({rec['interval_s']:.3g} s, {rec['bound']}-bound)")
    console.print(table)
    for reason in rec["reasons"]:
        console.print(f"- {reason}", highlight=False)


def _probe(args: argparse.Namespace, probe_bytes: int):
    from rich.console import Console
    from rich.progress import Progress

    from ckptlab.core.storage_probe import probe_storage

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("probing", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=what)

        return probe_storage(args.dir, probe_bytes, threads=args.threads, io_modes=args.io_modes, progress=progress,
                             repeats=args.repeats)


def _tune(args: argparse.Namespace) -> int:
    from ckptlab.core.storage_probe import MIN_PROBE_BYTES
    from ckptlab.core.tuning import TuningInputs, recommend, tune_document
    from ckptlab.profiling.files import atomic_write_bytes

    problem = _writable(args.dir)
    if problem:
        print(f"ckptlab tune: {problem}", file=sys.stderr)
        return 2
    state_bytes = args.state_bytes or max(1, int(args.state_mb * MiB))
    inputs = TuningInputs(state_bytes=state_bytes, iteration_s=args.iteration_s, budget=args.budget,
                          staging_budget_bytes=None if args.staging_mb is None else max(1, int(args.staging_mb * MiB)),
                          lost_per_ckpt_s=args.lost_per_ckpt_s)
    probe_bytes = max(MIN_PROBE_BYTES, min(int(args.probe_mb * MiB), state_bytes)) // MIN_PROBE_BYTES * MIN_PROBE_BYTES
    try:
        profile = _probe(args, probe_bytes)
    except KeyboardInterrupt:
        print("ckptlab tune: interrupted; the probe files were removed", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"ckptlab tune: cannot write to {args.dir}: {exc}", file=sys.stderr)
        return 2
    doc = tune_document(profile, inputs, recommend(inputs, profile))
    text = json.dumps(doc, indent=2) + "\n"
    if args.save is not None:
        atomic_write_bytes(args.save, text.encode())
    if args.json:
        sys.stdout.write(text)
    else:
        _print_table(doc)
    return 0
