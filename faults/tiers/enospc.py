"""The ``enospc`` tier: a real full disk. A size-limited tmpfs in a private mount namespace
(``unshare -Urm``, no root needed; the tier is skipped with the reason where that fails),
filled so the 1st...3rd save finds no space; the saver frees space after the first failure and
goes on. The trial's checks run inside the namespace (``campaign --inner-enospc``, :func:`inner`).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess

from ckptlab.core.fault_spec import child_env
from ckptlab.faults.tiers.common import (
    KiB, MiB, Context, crash_checks, failed_row, failed_step_checks, random_setup, row, run_saver, seeded, setup_of,
    tail, verdict,
)

TMPFS_BYTES = 16 * MiB


def namespace_prefix() -> tuple[list[str] | None, str]:
    """The command prefix that gives a private mount namespace, or (None, why not)."""
    if not shutil.which("unshare"):
        return None, "unshare(1) is not installed"
    for prefix in (["unshare", "-Urm"], ["unshare", "-m"]):
        try:
            probe = "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d && rmdir $d"
            r = subprocess.run([*prefix, "sh", "-c", probe], capture_output=True, text=True, timeout=20,
                               check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            last = str(e)
            continue
        if r.returncode == 0:
            return prefix, ""
        last = r.stderr.strip() or f"rc={r.returncode}"
    return None, f"cannot mount a tmpfs in a private mount namespace here ({last})"


def available() -> tuple[bool, str]:
    prefix, why = namespace_prefix()
    return prefix is not None, why


def generate(seed: int, count: int, short: bool) -> list[dict]:
    def params(i: int, rng: random.Random) -> dict:
        setup = random_setup(rng, small=True)
        setup.steps = [1, 2, 3, 4, 5]
        # keep_last=2 and one save in flight: up to 3 checkpoints on disk at once, so every
        # level below 3 checkpoints of free space fills the disk at some save.
        setup.engine.update(keep_last=2, max_inflight=1)
        return {"setup": setup.as_json(), "free_ckpts": [0.4, 0.9, 1.4, 1.9, 2.4, 2.8][i % 6]}

    return seeded("enospc", seed, count, params)


def run(trial: dict, ctx: Context, tdir: str) -> dict:
    prefix, why = namespace_prefix()
    if prefix is None:
        return row(trial, "skipped", checks=0, detail=why)
    mnt = os.path.join(tdir, "mnt")
    os.makedirs(mnt)
    spec_path, result_path = os.path.join(tdir, "inner.json"), os.path.join(tdir, "result.json")
    with open(spec_path, "w") as f:
        json.dump({"trial": trial, "mnt": mnt, "unsafe": list(ctx.unsafe), "work": tdir}, f)
    script = (f"mount -t tmpfs -o size={TMPFS_BYTES} tmpfs '{mnt}' && exec '{ctx.python}' -m ckptlab.faults.campaign "
              f"--inner-enospc '{spec_path}' '{result_path}'")
    r = subprocess.run(prefix + ["sh", "-c", script], capture_output=True, text=True, timeout=300,
                       env=child_env(), check=False)
    if r.returncode != 0 or not os.path.exists(result_path):
        return row(trial, "error", detail=f"namespace run failed rc={r.returncode}: {tail(r.stderr)}")
    with open(result_path) as f:
        return json.load(f)


def _fill(mnt: str, leave: int) -> tuple[str, int]:
    """A filler file that leaves ``leave`` bytes free on ``mnt``; (its path, its size)."""
    st = os.statvfs(mnt)
    fill = max(0, st.f_bavail * st.f_frsize - leave)
    filler = os.path.join(mnt, "filler")
    with open(filler, "wb") as f:
        block = bytes(MiB)
        left = fill
        while left > 0:
            left -= f.write(block[:min(left, MiB)])
    return filler, fill


def inner(spec: dict) -> dict:
    """Runs inside the namespace with the tmpfs mounted at spec['mnt']."""
    trial, mnt = spec["trial"], spec["mnt"]
    ctx = Context(work=spec["work"], states=spec["work"], unsafe=tuple(spec["unsafe"]))
    setup = setup_of(trial)
    # tmpfs charges whole pages: the data files (the stream, padded to 4 KiB) + the MANIFEST.
    ckpt_bytes = max((setup.plan(s)["total_bytes"] + 4095) // 4096 * 4096 for s in setup.steps) + 8 * KiB
    filler, fill = _fill(mnt, int(trial["p"]["free_ckpts"] * ckpt_bytes))
    child = run_saver(ctx, spec["work"], setup, ckdir=os.path.join(mnt, "ck"), filler=filler)
    if child.rc != 0:
        return failed_row(trial, child, "ENOSPC crashed the process")
    hist, v, d = crash_checks(setup, child)
    failed = sorted(hist.failed)
    for step in failed:  # the saver deletes the filler at the first failure: then a later save must succeed
        v += failed_step_checks(step, hist, d, "the disk was full", later_must_succeed=hist.freed)
    errnos = sorted({e for _, e, _ in hist.failures} | {e for _, e in hist.errors})
    return verdict(trial, bool(failed), v, hist, d, extra={"failed_steps": failed, "filled_bytes": fill,
                                                              "errnos": errnos})
