"""``ckptlab profile ...``: run a command under a profiler.

    ckptlab profile nsys [-o NAME] [--sample none] [--no-stats] [--dry-run] -- CMD ...
    ckptlab profile py-spy [-o FILE] [--rate HZ] [--native] [--idle] [--dry-run] -- CMD ...

``add_profile_parser`` registers them on the ``ckptlab`` console script (entry point
``profile``, pyproject.toml); each leaf sets ``func`` to a function of the parsed args
returning the exit code (127 when the profiler is not installed). The trace commands are
``ckptlab trace ...`` (ckptlab.analysis), the writer-placement experiment is
``ckptlab experiment affinity``; ``ckptlab profile affinity`` says so.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

EXIT_TOOL_MISSING = 127  # like a shell's "command not found"
EXIT_MOVED = 2


def _command(args: argparse.Namespace, prog: str) -> list[str] | None:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print(f"ckptlab {prog}: give the command to run after `--`, e.g. "
              f"`ckptlab {prog} -- python -m training.train_pccheck --preset tiny`", file=sys.stderr)
        return None
    return cmd


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


def _profile_affinity_moved(args: argparse.Namespace) -> int:
    """The old spelling of the experiment: say where it went, with the caller's own flags."""
    flags = " ".join(shlex.quote(a) for a in args.flags)
    print("ckptlab profile affinity: the writer-placement experiment is now `ckptlab experiment affinity` "
          f"(same flags); run:\n  ckptlab experiment affinity {flags}".rstrip()
          + "\nand re-summarise a results directory with `ckptlab analyze OUT`.", file=sys.stderr)
    return EXIT_MOVED


def add_profile_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``ckptlab profile ...`` (entry point ``profile`` in the ``ckptlab.commands`` group)."""
    prof = subparsers.add_parser("profile", help="run a command under nsys or py-spy",
                                 description="Profile a command (docs/PROFILING.md; put it after `--`).")
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
    p = psub.add_parser("affinity", help="moved: use `ckptlab experiment affinity` (same flags)", add_help=False,
                        prefix_chars="\0")  # takes every flag as it comes, to echo it in the message
    p.add_argument("flags", nargs="*")
    p.set_defaults(func=_profile_affinity_moved)
    return prof


def run(args: argparse.Namespace) -> int:
    return int(args.func(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ckptlab.profiling.cli profile nsys ...`` (same as the console script)."""
    parser = argparse.ArgumentParser(prog="ckptlab")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_profile_parser(sub)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
