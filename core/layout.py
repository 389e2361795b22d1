"""Names on disk: committed checkpoints are ``step_<12 digits>`` directories in the
checkpoint directory; anything starting with a dot is in-progress or garbage."""
from __future__ import annotations

import os
import re

_STEP_DIR = re.compile(r"^step_(\d{1,19})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:012d}"


def committed_step_dirs(directory: str | os.PathLike) -> list[tuple[int, str]]:
    """(step, path) of every committed-looking checkpoint directory, oldest first."""
    directory = os.fspath(directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _STEP_DIR.match(name)
        path = os.path.join(directory, name)
        if m and os.path.isdir(path):
            out.append((int(m.group(1)), path))
    out.sort()
    return out
