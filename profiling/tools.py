"""Run a command under Nsight Systems or py-spy with the settings ckptlab users need.

``nsys``: ``nsys profile --trace=cuda,nvtx,osrt --sample=cpu --cpuctxsw=process-tree`` (NVTX
ranges of the engine and the Python side, CUDA copies and kernels, OS-runtime calls such as
pwrite/fsync, CPU samples and context switches), then ``nsys stats`` for the NVTX summary.
``py-spy``: ``py-spy record --format speedscope --pid`` of the command ckptlab started (its
exit status is the command's).

Both set ``CKPTLAB_RUN_ID`` for the child (unless already set) and name their output after
it, so a ``--trace FILE`` written by the same run carries the same run id as the profile.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
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


PY_SPY_ENV = "PY_SPY"


def find_py_spy() -> str | None:
    """``$PY_SPY`` (as given, checked by ``check_py_spy``), else ``py-spy`` next to this
    Python (a venv's bin), else on PATH."""
    env = os.environ.get(PY_SPY_ENV)
    if env:
        return env
    local = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.access(local, os.X_OK):
        return local
    return shutil.which("py-spy")


def py_spy_missing_message() -> str:
    return ("py-spy is not installed here (looked at $PY_SPY, next to this Python and on PATH): "
            "`pip install py-spy`, or `pip install 'ckptlab[profile]'`.")


def check_py_spy(py_spy: str) -> None:
    """Raise ToolMissing unless ``py_spy --version`` runs: a py-spy that cannot run at all is
    the user's to fix before anything is started, unlike one that cannot sample a command."""
    where = f"{PY_SPY_ENV}={py_spy}" if os.environ.get(PY_SPY_ENV) == py_spy else py_spy
    if not (os.path.isfile(py_spy) and os.access(py_spy, os.X_OK)):
        raise ToolMissing(f"py-spy not found: {where} is not an executable file. " + py_spy_missing_message())
    try:
        probe = subprocess.run([py_spy, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolMissing(f"py-spy at {where} does not run: {e}") from None
    if probe.returncode != 0:
        said = (probe.stderr or probe.stdout).strip()[-300:]
        raise ToolMissing(f"py-spy at {where} does not run (`--version` exited {probe.returncode}"
                          + (f": {said}" if said else "") + "); reinstall it: `pip install --force-reinstall py-spy`")


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


def py_spy_record_command(py_spy: str, pid: int | str, opts: PySpyOptions) -> list[str]:
    """``py-spy record`` attached to the running command ``pid`` (see ``run_py_spy`` for why)."""
    out = [py_spy, "record", "--format", "speedscope", "--output", opts.output, "--rate", str(opts.rate), "--threads"]
    for flag, on in (("--native", opts.native), ("--idle", opts.idle), ("--subprocesses", opts.subprocesses),
                     ("--gil", opts.gil)):
        if on:
            out.append(flag)
    return [*out, "--pid", str(pid)]


_PR_SET_PTRACER = 0x59616D61  # prctl: let a named process (and its descendants) ptrace the caller


def _let_parent_trace() -> None:
    """In the command's process before exec: under Yama ptrace_scope 1 only an ancestor may
    attach; naming our process keeps py-spy, our child and the command's sibling, allowed as
    when py-spy launched the command itself. Without Yama the call fails, harmlessly."""
    import ctypes

    with contextlib.suppress(Exception):
        ulong = ctypes.c_ulong
        ctypes.CDLL(None, use_errno=True).prctl(ctypes.c_int(_PR_SET_PTRACER), ulong(os.getppid()), ulong(0),
                                                ulong(0), ulong(0))


def _wait(proc: subprocess.Popen) -> int:
    """The exit status, waiting through Ctrl-C (the command and py-spy get it too and stop)."""
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


def _status(rc: int) -> int:
    return rc if rc >= 0 else 128 - rc  # killed by signal N: 128 + N, as a shell says it


def _py_spy_said(log: str) -> str:
    """py-spy's error and its causes, without the Rust backtrace it prints after them."""
    lines = []
    for line in log.splitlines():
        if line.startswith("Stack backtrace"):
            break
        if line.strip() and not line.startswith("py-spy> "):
            lines.append(line.strip())
    return " ".join(lines)[-600:] or "(nothing on stderr)"


def run_py_spy(cmd: Sequence[str], opts: PySpyOptions, dry_run: bool = False, run_id: str | None = None) -> int:
    """Record a speedscope profile of ``cmd``; returns the command's own exit status.

    ckptlab starts the command and attaches ``py-spy record --pid`` to it, rather than
    having py-spy launch it: py-spy's exit code says only whether sampling worked (0 for a
    command that exited 3, 1 for one that ended before py-spy could attach, and it kills
    the command when it fails). A py-spy problem is a warning; the command's status stands.
    Raises ToolMissing when py-spy is not installed or does not run."""
    py_spy = find_py_spy()
    if py_spy is None and not dry_run:
        raise ToolMissing(py_spy_missing_message())
    run_id = run_id or run_id_for_child()
    if dry_run:
        print(f"{RUN_ID_ENV}={run_id} " + subprocess.list2cmdline(list(cmd)) + " &")
        print(subprocess.list2cmdline(py_spy_record_command(py_spy or "py-spy", "$!", opts)))
        return 0
    assert py_spy is not None  # not a dry run: ToolMissing above otherwise
    check_py_spy(py_spy)
    before = _mtime(opts.output)
    try:
        command = subprocess.Popen(list(cmd), env=_child_env(run_id), preexec_fn=_let_parent_trace)
    except OSError as e:  # as a shell says it: 127 not found, 126 not executable
        print(f"ckptlab profile py-spy: cannot run {cmd[0]}: {e.strerror}", file=sys.stderr)
        return 127 if isinstance(e, FileNotFoundError) else 126
    with tempfile.TemporaryFile("w+") as log:
        try:
            spy = subprocess.Popen(py_spy_record_command(py_spy, command.pid, opts), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=log)
        except OSError as e:
            spy, said = None, str(e)
        status = _status(_wait(command))
        if spy is not None:
            spy_rc = _wait(spy)
            log.seek(0)
            said = _py_spy_said(log.read())
    wrote = _mtime(opts.output) not in (None, before)
    if spy is not None and spy_rc == 0 and wrote:
        print(f"ckptlab profile py-spy: speedscope profile {opts.output} (run id {run_id}); "
              f"open it at speedscope.app or with `npx speedscope {opts.output}`", file=sys.stderr)
    else:
        hint = (" If it is a permission error, py-spy needs ptrace rights over the command (CAP_SYS_PTRACE in a "
                "container, or kernel.yama.ptrace_scope 0 or 1)." if "ermission" in said else
                " A command that ends within a fraction of a second is often gone before py-spy can attach.")
        print(f"ckptlab profile py-spy: warning: no profile written: py-spy "
              f"{'exited ' + str(spy_rc) if spy is not None else 'did not start'}: {said}; "
              f"the command exited {status} (that is this exit status).{hint}", file=sys.stderr)
    return status


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
