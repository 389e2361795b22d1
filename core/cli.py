"""The `ckptlab` console script. Subcommands live next to what they drive; this module
only dispatches (inspect is here because it is core's)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ckptlab.core.recovery import list_checkpoints

# (module, function) pairs that add subcommands to the subparsers object; each subcommand
# sets `func(args) -> int`. Imported lazily so a missing optional part (e.g. pyarrow for
# tracing) only removes its own subcommand.
_EXTENSIONS: tuple[tuple[str, str], ...] = (
    ("ckptlab.training.cli", "add_train_subcommand"),
    ("ckptlab.faults.cli", "add_parser"),
    ("ckptlab.profiling.cli", "add_parsers"),
)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _inspect(args: argparse.Namespace) -> int:
    import os

    if not os.path.isdir(args.dir):
        print(f"ckptlab inspect: {args.dir} is not a directory", file=sys.stderr)
        return 2
    infos = list_checkpoints(args.dir, verify=args.verify, threads=args.threads)
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"checkpoints in {args.dir}" + (" (verified)" if args.verify else ""))
        for col in ("step", "writer", "size", "status", "problem"):
            table.add_column(col, justify="right" if col in ("step", "size") else "left")
        for i in infos:
            style = {"ok": "green", "unverified": "yellow", "corrupt": "red"}[i.status]
            table.add_row(str(i.step), i.writer, _human(i.nbytes), f"[{style}]{i.status}[/{style}]", i.problem or "")
        Console().print(table)
        if not infos:
            print("no committed checkpoints")
    return 1 if any(i.status == "corrupt" for i in infos) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckptlab", description="Persistent concurrent checkpointing for PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("inspect", help="list committed checkpoints with step, size and status")
    p.add_argument("dir", help="checkpoint directory")
    p.add_argument("--verify", action="store_true", help="read every chunk and check its CRC32C")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--threads", type=int, default=4, help="parallel readers for --verify (default 4)")
    p.set_defaults(func=_inspect)
    for module, fn in _EXTENSIONS:
        try:
            mod = __import__(module, fromlist=[fn])
        except ImportError:
            continue
        register = getattr(mod, fn, None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
