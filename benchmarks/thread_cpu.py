"""Where a run's CPU goes, thread by thread: user and system time and page faults.

Runs a command (e.g. ``ckptlab train ...``) and samples ``/proc/PID/task/*/stat`` of it and of
its child processes every ``--interval`` seconds, so the figures of a thread that exits early
(a writer the engine stops at close) are kept from its last sample. At the end it prints, per
thread name, the user and system seconds and the minor/major faults, and writes them as JSON
with ``--json``. The engine names its threads with pthread_setname_np, cut to 15 characters:
``ckptlab-writer-`` (every writer), ``ckptlab-commit``, ``ckpt-prefault``. Python threads show
as the process's name; its main thread, where the training steps run, as ``NAME [main]``.

Why: on the 2-core VM the writers' system time (O_DIRECT, page faults in fresh staging) is a
guess for the training time a checkpoint costs beyond its stall; this measures it.

    python benchmarks/thread_cpu.py --json out.json -- ckptlab train --checkpointer pccheck ...
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class ThreadSample:
    pid: int
    tid: int
    name: str
    user_s: float
    sys_s: float
    minflt: int
    majflt: int


def read_stat(pid: int, tid: int) -> ThreadSample | None:
    """One thread's counters from /proc (None if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the name is in parentheses and may hold spaces or parentheses itself: split at the last ')'
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    # fields from "state" (field 3 of proc(5)): minflt 10, majflt 12, utime 14, stime 15
    return ThreadSample(pid, tid, name, int(fields[11]) / TICK, int(fields[12]) / TICK, int(fields[7]), int(fields[9]))


def descendants(root: int) -> list[int]:
    """root and every process below it (read from /proc/*/stat's ppid)."""
    parents: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        parents[ppid].append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def sample(root: int) -> list[ThreadSample]:
    got = []
    for pid in descendants(root):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        got.extend(s for s in (read_stat(pid, tid) for tid in tids) if s is not None)
    return got


def by_name(last: dict[tuple[int, int], ThreadSample]) -> list[dict[str, object]]:
    """Per thread name: threads, user s, sys s, faults; the busiest first."""
    groups: dict[str, list[ThreadSample]] = defaultdict(list)
    for s in last.values():
        groups[f"{s.name} [main]" if s.tid == s.pid else s.name].append(s)  # the main thread runs the steps
    rows = [{"name": name, "threads": len(g), "user_s": sum(s.user_s for s in g), "sys_s": sum(s.sys_s for s in g),
             "minflt": sum(s.minflt for s in g), "majflt": sum(s.majflt for s in g)} for name, g in groups.items()]
    return sorted(rows, key=lambda r: -(r["user_s"] + r["sys_s"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between samples (default 0.1)")
    ap.add_argument("--json", type=Path, help="write per-thread and per-name figures here")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    if args.interval <= 0:
        ap.error("--interval must be > 0")
    t0 = time.perf_counter()
    child = subprocess.Popen(command)
    last: dict[tuple[int, int], ThreadSample] = {}
    while child.poll() is None:
        for s in sample(child.pid):
            last[(s.pid, s.tid)] = s
        time.sleep(args.interval)
    wall = time.perf_counter() - t0
    rows = by_name(last)
    print(f"{'thread':<18} {'n':>3} {'user s':>8} {'sys s':>8} {'minflt':>9} {'majflt':>7}", file=sys.stderr)
    for r in rows:
        print(f"{r['name']:<18} {r['threads']:>3} {r['user_s']:>8.2f} {r['sys_s']:>8.2f} {r['minflt']:>9} "
              f"{r['majflt']:>7}", file=sys.stderr)
    print(f"wall {wall:.2f} s, exit {child.returncode}; a thread's figures are from its last sample "
          f"(every {args.interval:g} s)", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"command": command, "wall_s": wall, "exit_code": child.returncode,
                                         "interval_s": args.interval, "by_name": rows,
                                         "threads": [asdict(s) for s in last.values()]}, indent=1) + "\n")
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
