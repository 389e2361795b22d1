"""The ``ckptlab`` console script: a dispatcher that names no other part.

``inspect`` is core's own. Every other subcommand is registered by the part that owns it,
through an entry point in the group ``ckptlab.commands`` (``pyproject.toml``): the entry
point's name is the subcommand, its object a function ``register(subparsers)`` that adds it
and sets ``func(args) -> int`` on the parsed arguments. A subcommand whose module fails to
import stays listed as unavailable, and running it is an error that names the entry point
and the import error (a missing optional package says what to install); it never silently
disappears.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points

COMMANDS_GROUP = "ckptlab.commands"
Register = Callable[[argparse._SubParsersAction], object]


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _inspect(args: argparse.Namespace) -> int:
    from ckptlab.core.recovery import list_checkpoints

    if not os.path.isdir(args.dir):
        print(f"ckptlab inspect: {args.dir} is not a directory", file=sys.stderr)
        return 2
    from ckptlab.core.global_inspect import is_multi_rank

    if is_multi_rank(args.dir):
        return _inspect_global(args)
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


_STYLE = {"ok": "green", "unverified": "yellow", "corrupt": "red", "missing": "red"}


def _inspect_global(args: argparse.Namespace) -> int:
    """A multi-rank directory: world size, globally committed steps with their parts, parts
    without a global record; exit 1 if any committed step is corrupt (as for one rank)."""
    from ckptlab.core.global_inspect import inspect_global

    found = inspect_global(args.dir, verify=args.verify, threads=args.threads)
    if args.json:
        print(json.dumps(found.as_dict(), indent=2))
        return 1 if found.corrupt else 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    print(f"multi-rank checkpoints in {args.dir}: world size {found.world_size}, "
          f"{len(found.steps)} globally committed step(s)" + (" (verified)" if args.verify else ""))
    table = Table(title="globally committed (global/step_N.json)")
    for col in ("step", "rank", "size", "manifest", "status", "problem"):
        table.add_column(col, justify="right" if col in ("step", "rank", "size") else "left")
    for s in found.steps:
        style = _STYLE[s.status]
        table.add_row(str(s.step), "all", _human(sum(p.nbytes for p in s.parts)), "",
                      f"[{style}]{s.status}[/{style}]", s.problem or "")
        for p in s.parts:
            ident = {True: "matches record", False: "differs", None: ""}[p.identity_matches]
            style = _STYLE[p.status]
            table.add_row("", str(p.rank), _human(p.nbytes), ident, f"[{style}]{p.status}[/{style}]", p.problem or "")
    console.print(table)
    if found.uncommitted:
        extra = Table(title="uncommitted parts (no global record: a step in flight or never agreed)")
        for col in ("step", "rank", "size", "status", "problem"):
            extra.add_column(col, justify="right" if col in ("step", "rank", "size") else "left")
        for p in found.uncommitted:
            style = _STYLE[p.status]
            extra.add_row(str(p.step), str(p.rank), _human(p.nbytes), f"[{style}]{p.status}[/{style}]", p.problem or "")
        console.print(extra)
    if not found.steps:
        print("no globally committed checkpoints")
    return 1 if found.corrupt else 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="list committed checkpoints with step, size and status")
    p.add_argument("dir", help="checkpoint directory")
    p.add_argument("--verify", action="store_true", help="read every chunk and check its CRC32C")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--threads", type=int, default=4, help="parallel readers for --verify (default 4)")
    p.set_defaults(func=_inspect)


def command_entry_points() -> list[EntryPoint]:
    """The installed ``ckptlab.commands`` entry points, by name."""
    return sorted(entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.name)


def _import_problem(ep: EntryPoint, exc: BaseException) -> str:
    what = f"the '{ep.name}' command ({ep.value}) cannot be loaded: {type(exc).__name__}: {exc}"
    missing = getattr(exc, "name", None)
    if isinstance(exc, ModuleNotFoundError) and missing and not missing.startswith("ckptlab"):
        what += f"; install the package {missing.split('.')[0]!r} (see the extras in pyproject.toml)"
    return what


def build_parser(plugins: Sequence[EntryPoint] | None = None) -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The parser with every command; also {name: problem} of the commands that failed to load."""
    parser = argparse.ArgumentParser(prog="ckptlab", description="Persistent concurrent checkpointing for PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_inspect(sub)
    broken: dict[str, str] = {}
    for ep in command_entry_points() if plugins is None else plugins:
        if ep.name in sub.choices:
            raise RuntimeError(f"entry point {ep.name} = {ep.value} in {COMMANDS_GROUP}: "
                               f"the command {ep.name!r} is registered twice")
        try:
            register: Register = ep.load()
            register(sub)
        except Exception as exc:  # noqa: BLE001 - reported as the command's error, below
            if ep.name in sub.choices:
                raise  # it registered and then failed: a bug to see in full
            broken[ep.name] = _import_problem(ep, exc)
            sub.add_parser(ep.name, help=f"[unavailable: {type(exc).__name__}]", add_help=False)
            continue
        if ep.name not in sub.choices:
            raise RuntimeError(f"entry point {ep.name} = {ep.value} in {COMMANDS_GROUP} did not "
                               f"register a command named {ep.name!r}")
    return parser, broken


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, broken = build_parser()
    if argv and argv[0] in broken:
        print(f"ckptlab: {broken[argv[0]]}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
