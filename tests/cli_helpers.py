"""Running ``ckptlab`` commands from tests (torch-free; tests/ is on sys.path): through the real
console entry in a subprocess, or one part's command module in this process."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence


def ckptlab(*args: object, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real console entry (core/cli.py dispatching to the part's command), in a subprocess."""
    return subprocess.run([sys.executable, "-m", "ckptlab.core.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def run_in_process(main: Callable[[Sequence[str]], int], capsys, *args: object) -> subprocess.CompletedProcess:
    """A command module's ``main`` in this process (no interpreter start-up); same result shape."""
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)
