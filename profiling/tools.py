"""Run a command under Nsight Systems or py-spy with the settings ckptlab users need.

``nsys``: ``nsys profile --trace=cuda,nvtx,osrt --sample=cpu --cpuctxsw=process-tree`` (NVTX
ranges of the engine and the Python side, CUDA copies and kernels, OS-runtime calls such as
pwrite/fsync, CPU samples and context switches), then ``nsys stats`` for the NVTX summary.
``py-spy``: ``py-spy record --format speedscope`` of the Python side.

Both set ``CKPTLAB_RUN_ID`` for the child (unless already set) and name their output after
it, so a ``--trace FILE`` written by the same run carries the same run id as the profile.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from ckptlab.profiling.metadata import RUN_ID_ENV, new_run_id

NSYS_TRACE = "cuda,nvtx,osrt"
_NSYS_GLOBS = ("/usr/local/cuda*/bin/nsys", "/opt/nvidia/nsight-systems*/*/bin/nsys",
               "/opt/nvidia/nsight-systems/*/bin/nsys", "/usr/local/cuda*/nsight-systems*/bin/nsys",
               "/usr/lib/nsight-systems/bin/nsys")


class ToolMissing(RuntimeError):
    """The profiler is not installed here; the message says what to install."""


def find_nsys() -> str | None:
    """``$NSYS``, else ``nsys`` on PATH, else the usual install locations."""
    env = os.environ.get("NSYS")
    if env and os.access(env, os.X_OK):
        return env
    found = shutil.which("nsys")
    if found:
        return found
    for pattern in _NSYS_GLOBS:
        for path in sorted(glob.glob(pattern), reverse=True):  # newest version first
            if os.access(path, os.X_OK):
                return path
    return None


def nsys_missing_message() -> str:
    return ("NVIDIA Nsight Systems (`nsys`) is not installed here: not at $NSYS, not on PATH, and not under "
            "/usr/local/cuda*/bin or /opt/nvidia/nsight-systems/*/bin. It is not on PyPI: install Nsight Systems "
            "from NVIDIA (or the CUDA toolkit's nsight-systems package) and put `nsys` on PATH or set NSYS=/path/to/nsys. "
            "Without it: `ckptlab profile py-spy -- CMD` profiles the Python side, and a run's `--trace FILE` plus "
            "`ckptlab trace export FILE --chrome out.json` shows every engine phase per thread in Perfetto UI.")


def find_py_spy() -> str | None:
    """``py-spy`` next to this Python (a venv's bin), else on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.access(local, os.X_OK):
        return local
    return shutil.which("py-spy")


def py_spy_missing_message() -> str:
    return ("py-spy is not installed here (looked next to this Python and on PATH): "
            "`pip install py-spy`, or `pip install 'ckptlab[profile]'`.")


@dataclass(frozen=True)
class NsysOptions:
    output: str
    trace: str = NSYS_TRACE
    sample: str = "cpu"               # "none" lowers overhead
    cpuctxsw: str = "process-tree"    # context switches of our threads
    stats: bool = True
    extra: tuple[str, ...] = ()       # passed to `nsys profile` before the command


def nsys_profile_command(nsys: str, cmd: Sequence[str], opts: NsysOptions) -> list[str]:
    return [nsys, "profile", f"--trace={opts.trace}", f"--sample={opts.sample}", f"--cpuctxsw={opts.cpuctxsw}",
            f"--output={opts.output}", "--force-overwrite=true", "--stats=false", *opts.extra, *cmd]


def nsys_stats_command(nsys: str, report: str, report_name: str = "nvtx_sum") -> list[str]:
    return [nsys, "stats", f"--report={report_name}", "--format=table", report]


def run_id_for_child() -> str:
    """The run id the profiled command gets: the inherited ``$CKPTLAB_RUN_ID`` or a new one."""
    return os.environ.get(RUN_ID_ENV) or new_run_id()


def _child_env(run_id: str) -> dict[str, str]:
    env = dict(os.environ)
    env[RUN_ID_ENV] = run_id
    return env


def default_output(tool: str, run_id: str) -> str:
    return f"ckptlab-{tool}-{run_id}"


def run_nsys(cmd: Sequence[str], opts: NsysOptions, dry_run: bool = False, run_id: str | None = None) -> int:
    """Profile ``cmd`` with nsys, then print the NVTX summary; returns the command's exit code.
    Raises ToolMissing when nsys is not installed (dry runs print the commands regardless)."""
    nsys = find_nsys()
    if nsys is None and not dry_run:
        raise ToolMissing(nsys_missing_message())
    nsys = nsys or "nsys"
    run_id = run_id or run_id_for_child()
    env = _child_env(run_id)
    profile = nsys_profile_command(nsys, cmd, opts)
    report = opts.output if opts.output.endswith(".nsys-rep") else opts.output + ".nsys-rep"
    stats = nsys_stats_command(nsys, report)
    if dry_run:
        print(f"{RUN_ID_ENV}={run_id} " + subprocess.list2cmdline(profile))
        if opts.stats:
            print(subprocess.list2cmdline(stats))
        return 0
    rc = subprocess.call(profile, env=env)
    if not os.path.exists(report):
        print(f"ckptlab profile nsys: no report at {report} (nsys exited {rc})", file=sys.stderr)
        return rc or 1
    print(f"ckptlab profile nsys: report {report} (run id {run_id}); open it in Nsight Systems", file=sys.stderr)
    if opts.stats and subprocess.call(stats) != 0:  # nsys before 2023 named the report "nvtxsum"
        subprocess.call(nsys_stats_command(nsys, report, "nvtxsum"))
    return rc


@dataclass(frozen=True)
class PySpyOptions:
    output: str
    rate: int = 100
    native: bool = False        # unwind into C/C++ (the engine, torch)
    idle: bool = False          # include sleeping threads (blocked in fsync, waits)
    subprocesses: bool = False
    gil: bool = False           # only samples holding the GIL


def py_spy_record_command(py_spy: str, cmd: Sequence[str], opts: PySpyOptions) -> list[str]:
    out = [py_spy, "record", "--format", "speedscope", "--output", opts.output, "--rate", str(opts.rate), "--threads"]
    for flag, on in (("--native", opts.native), ("--idle", opts.idle), ("--subprocesses", opts.subprocesses),
                     ("--gil", opts.gil)):
        if on:
            out.append(flag)
    return [*out, "--", *cmd]


def run_py_spy(cmd: Sequence[str], opts: PySpyOptions, dry_run: bool = False, run_id: str | None = None) -> int:
    """Record a speedscope profile of ``cmd``; returns py-spy's exit code (the command's, when
    it ran). Raises ToolMissing when py-spy is not installed."""
    py_spy = find_py_spy()
    if py_spy is None and not dry_run:
        raise ToolMissing(py_spy_missing_message())
    run_id = run_id or run_id_for_child()
    env = _child_env(run_id)
    record = py_spy_record_command(py_spy or "py-spy", cmd, opts)
    if dry_run:
        print(f"{RUN_ID_ENV}={run_id} " + subprocess.list2cmdline(record))
        return 0
    rc = subprocess.call(record, env=env)
    if os.path.exists(opts.output):
        print(f"ckptlab profile py-spy: speedscope profile {opts.output} (run id {run_id}); "
              f"open it at speedscope.app or with `npx speedscope {opts.output}`", file=sys.stderr)
    else:
        print(f"ckptlab profile py-spy: no profile written (py-spy exited {rc}). If it reported a permission "
              f"error, the container needs ptrace rights (CAP_SYS_PTRACE, or kernel.yama.ptrace_scope=0)",
              file=sys.stderr)
        return rc or 1
    return rc
