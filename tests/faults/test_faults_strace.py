"""The I/O log is complete: strace sees no file-system mutation under the checkpoint
directory that the writer did not record (the cross-check of docs/FAULTS.md), for the
engine's saver and for the torchsave child (core/writer_io.py)."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from ckptlab.faults.iolog import read_io_log
from ckptlab.faults.tiers.common import WRITERS, Context, session, torchsave_point_setup, write_child_config
from faults_helpers import small_setup

SYSCALLS = "openat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,fsync,fdatasync,pwrite64,write," \
           "fallocate,ftruncate,truncate"
LINE = re.compile(r"^(?:\[pid\s+\d+\]\s+|\d+\s+)?(\w+)\((.*)$")


def _strace_ops(path: str, root: str) -> set[tuple[str, str]]:
    ops = set()
    with open(path) as f:
        lines = f.read().splitlines()
    for line in lines:
        m = LINE.match(line.strip())
        if not m:
            continue
        call, args = m.groups()
        fd_path = re.match(r"-?\d+<([^>]*)>", args)
        strings = re.findall(r'"((?:[^"\\]|\\.)*)"', args)
        if call == "openat":
            if "O_CREAT" in args and strings:
                ops.add(("create", strings[0]))
            continue
        if call in ("pwrite64", "write", "fsync", "fdatasync", "fallocate", "ftruncate") and fd_path:
            kind = {"pwrite64": "write", "fsync": "fsync"}.get(call, call)
            ops.add((kind, fd_path.group(1)))
        elif call in ("mkdir", "mkdirat") and strings:
            ops.add(("mkdir", strings[0]))
        elif call.startswith("rename") and strings:
            ops.add(("rename", strings[0]))
        elif call == "unlinkat" and strings:
            ops.add(("rmdir" if "AT_REMOVEDIR" in args else "unlink", strings[0]))
        elif call in ("unlink", "rmdir", "truncate") and strings:
            ops.add((call, strings[0]))
    return {(k, os.path.normpath(p)) for k, p in ops if os.path.normpath(p).startswith(root)}


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.parametrize("writer", ["pccheck", "torchsave"])
def test_every_mutation_under_the_directory_is_recorded(tmp_path, writer):
    setup = small_setup(keep_last=1)
    if writer == "torchsave":
        setup = torchsave_point_setup()
        setup.engine["keep_last"] = 1
    ctx = Context(work=str(tmp_path), states=str(tmp_path))
    log = str(tmp_path / "io.log")
    cfg = write_child_config(str(tmp_path), setup, [session(setup, ctx, io_log=log, io_log_data=False)])
    with open(cfg) as f:
        ckdir = json.load(f)["dir"]
    trace = str(tmp_path / "strace.txt")
    r = subprocess.run(["strace", "-f", "-qq", "-y", "-e", f"trace={SYSCALLS}", "-o", trace, sys.executable, "-m",
                        WRITERS[writer], cfg], capture_output=True, text=True, timeout=300, check=False)
    if r.returncode != 0 and "ptrace" in r.stderr:
        pytest.skip(f"strace cannot trace here: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr[-2000:]
    seen = _strace_ops(trace, os.path.normpath(ckdir))
    recorded = set()
    for rec in read_io_log(log):
        if rec.is_mark:
            continue
        kind = {"open_create": "create", "fsync_dir": "fsync"}.get(rec.op, rec.op)
        recorded.add((kind, os.path.normpath(rec.path)))
    assert seen, "strace saw nothing: the check is not working"
    data_sync = "fdatasync" if writer == "pccheck" else "fsync"  # torchsave fsyncs state.pt
    assert {k for k, _ in seen} >= {"create", "write", data_sync, "fsync", "mkdir", "rename", "unlink", "rmdir"}
    missing = seen - recorded
    assert not missing, f"engine I/O not in the log: {sorted(missing)[:10]}"
