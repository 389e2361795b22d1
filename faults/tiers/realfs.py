"""The ``realfs`` tier: the crash trials on real file systems, ext4 and xfs images on loop
devices (faults/loopfs.py; root only), where fallocate, O_DIRECT, rename and fsync are the
kernel's and not tmpfs's. Per file system and mount variant (:data:`VARIANTS`), for both
writers:

    kill    SIGKILL at a fault point (the ``points`` tier's trial, run on the image)
    ioerr   a one-off injected error at an erroring point (the ``ioerr`` tier's trial)
    dying   a dying disk (``mode=persist``): from a failing operation on, every write, fsync
            and rename fails (the ``ioerr`` tier's persistent trial)
    enospc  a real full disk: a ballast file leaves room for less than the next checkpoint,
            so the kernel fails it (torchsave: in the middle of writing state.pt; the engine
            reserves its data files first, so there: at fallocate); then the space is freed
            and the next save must succeed

Each trial gets a fresh image, mounted in its own directory and always unmounted, detached and
deleted afterwards. A file system whose mkfs is missing is left out, its reason in the
campaign's skipped list (:func:`skipped`).
"""
from __future__ import annotations

import errno
import os
import random
import shutil
from collections.abc import Callable

from ckptlab.core.fault_spec import ERROR_ACTIONS, ERROR_POINTS, fault_points
from ckptlab.faults import loopfs
from ckptlab.faults.iolog import read_io_log
from ckptlab.faults.tiers import ioerr, points
from ckptlab.faults.tiers.common import (
    KiB, Context, Setup, crash_checks, failed_row, failed_step_checks, numbered, point_setup, random_setup, row,
    run_saver, session, setup_of, torchsave_point_setup, torchsave_setup, verdict,
)

# (file system, mount options). ext4's default data=ordered, and data=writeback (metadata may
# reach the journal before the file data it points to: the weakest ordering ext4 offers, where
# only our own fsyncs order anything); xfs's defaults. No ``-o sync``: it makes every write
# synchronous and so would hide a missing fsync instead of exposing it.
VARIANTS: tuple[tuple[str, str], ...] = (("ext4", "data=ordered"), ("ext4", "data=writeback"), ("xfs", ""))
KINDS = ("enospc", "kill", "ioerr", "dying")
WRITERS = ("pccheck", "torchsave")
# Free space left by the ballast, in checkpoints: the 1st, 2nd or 3rd save finds the disk full
# (keep_last=2, one save in flight: at most 3 checkpoints on disk at once).
FREE_CKPTS = (0.5, 1.5, 2.5)


def variant_name(fs: str, options: str) -> str:
    return f"{fs} {options}".strip()


def skipped() -> dict[str, str]:
    """File systems this machine cannot loop-mount, with the reason (e.g. mkfs missing)."""
    return {fs: why for fs in dict.fromkeys(fs for fs, _ in VARIANTS) if (why := loopfs.why_not(fs))}


def available() -> tuple[bool, str]:
    left_out = skipped()
    if len(left_out) == len({fs for fs, _ in VARIANTS}):
        return False, "; ".join(f"{fs}: {why}" for fs, why in left_out.items())
    return True, ""


def _cases(fs: str, options: str, writer: str, kind: str) -> list[dict]:
    """Every trial of one (variant, writer, kind) group."""
    base = {"fs": fs, "mount": options, "kind": kind}
    if writer == "torchsave":
        base |= {"writer": "torchsave"}
    shape_ref = "torchsave" if writer == "torchsave" else 0
    shape = torchsave_point_setup() if writer == "torchsave" else point_setup(0)
    out = []
    if kind == "kill":  # each fault point, first occurrence in checkpoint 2 (or the last that passes it)
        for point in fault_points():
            ck = 2 if shape.point_count(point, 2) else len(shape.steps)
            if shape.point_count(point, ck):
                out.append(base | {"setup": shape_ref, "point": point, "ckpt": ck, "hit": 1})
    elif kind == "ioerr":  # each erroring point x each error action, in checkpoint 2 (a previous one to keep)
        for point in ERROR_POINTS:
            for action in ERROR_ACTIONS:
                if action != "short" or point == "before_chunk_write":
                    out.append(base | {"setup": shape_ref, "point": point, "hit": shape.point_count(point, 1) + 1,
                                       "action": action})
    elif kind == "dying":  # each erroring point, as the ioerr tier's persistent trials choose the checkpoint
        for i, point in enumerate(ERROR_POINTS):
            ck = ioerr.persist_ckpt(point) if writer == "pccheck" else 2
            out.append(base | {"setup": shape_ref, "point": point, "ckpt": ck, "action": ERROR_ACTIONS[i % 3],
                               "persist": True})
    else:
        rng = random.Random(f"realfs-enospc-{writer}")
        for free in FREE_CKPTS:
            out.append(base | {"setup": _full_disk_setup(rng, writer).as_json(), "free_ckpts": free})
    return out


def _full_disk_setup(rng: random.Random, writer: str) -> Setup:
    if writer == "torchsave":
        return torchsave_setup(rng, 300 * KiB, [1, 2, 3, 4, 5], chunk_bytes=64 * KiB, keep_last=2)
    setup = random_setup(rng, small=True)
    setup.steps = [1, 2, 3, 4, 5]
    setup.engine.update(keep_last=2, max_inflight=1)
    return setup


def generate(seed: int, count: int, short: bool) -> list[dict]:
    """``count`` trials (all of them when it is larger), taken round-robin over the groups
    (kind x variant x writer) so that a prefix covers each group before repeating one. File
    systems that cannot be mounted here are left out (:func:`skipped`)."""
    left_out = skipped()
    groups = [_cases(fs, opts, w, k) for k in KINDS for fs, opts in VARIANTS for w in WRITERS if fs not in left_out]
    ordered = [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]
    return numbered("realfs", seed, ordered[:count])


def run(trial: dict, ctx: Context, tdir: str) -> dict:
    p = trial["p"]
    why = loopfs.why_not(p["fs"])
    if why:
        return row(trial, "skipped", checks=0, detail=why)
    with loopfs.mounted(p["fs"], tdir, p["mount"]) as mnt:
        r = _full_disk(trial, ctx, tdir, mnt) if p["kind"] == "enospc" else ON_IMAGE[p["kind"]](trial, ctx, mnt)
        if r["violations"] or r["outcome"] == "error":  # keep what was on the image (it is deleted next)
            shutil.copytree(mnt, os.path.join(tdir, "image-contents"), symlinks=True)
    return r


# Trials of other tiers run as they are, with their directory on the image. A further kind of
# trial is one more entry here and in KINDS, and its cases in _cases.
ON_IMAGE: dict[str, Callable[[dict, Context, str], dict]] = {"kill": points.run, "ioerr": ioerr.run,
                                                             "dying": ioerr.run}


def _ballast(mnt: str, leave: int) -> tuple[str, int]:
    """A file that takes all free space on ``mnt`` but ``leave`` bytes, reserved with
    fallocate (nothing written); (its path, the free bytes left)."""
    path = os.path.join(mnt, "ballast")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        st = os.statvfs(mnt)
        size = st.f_bavail * st.f_frsize - leave
        while size > 0:
            try:
                os.posix_fallocate(fd, 0, size)
                break
            except OSError as e:  # the extent tree needs blocks too: ask for a little less
                if e.errno != errno.ENOSPC:
                    raise
                size -= 64 * KiB
        os.fsync(fd)
    finally:
        os.close(fd)
    st = os.statvfs(mnt)
    return path, st.f_bavail * st.f_frsize


def _ckpt_bytes(setup: Setup) -> int:
    """The most disk one checkpoint takes: its data (whole blocks) and its MANIFEST."""
    key = "payload_bytes" if setup.writer == "torchsave" else "total_bytes"
    return max((setup.plan(s)[key] + 4095) // 4096 * 4096 for s in setup.steps) + 8 * KiB


def _failed_ops(log: str) -> list[str]:
    """Which operations the kernel failed, from the I/O log: "write state.pt" (in the middle
    of the data), "fallocate data_000.bin" (the engine's reservation), "create MANIFEST", ..."""
    def name(path: str) -> str:
        base = os.path.basename(path)
        return "(temp dir)" if base.startswith(".step_") else base

    return sorted({f"{r.op} {name(r.path)}" for r in read_io_log(log) if r.err and not r.is_mark})


def _full_disk(trial: dict, ctx: Context, tdir: str, mnt: str) -> dict:
    """Save into a nearly full disk (the ballast stays: every save from the first failure on
    fails), check; free the space, save again, check everything. The ack log and the child
    configs stay in ``tdir``, off the full disk."""
    setup = setup_of(trial)
    ckdir = os.path.join(mnt, "ck")
    os.makedirs(ckdir)  # before the ballast: the checkpoint directory itself is not what is tested
    leave = int(trial["p"]["free_ckpts"] * _ckpt_bytes(setup)) + loopfs.FILESYSTEMS[trial["p"]["fs"]].reserve
    ballast, free = _ballast(mnt, leave)
    log = os.path.join(tdir, "io.log")
    child = run_saver(ctx, tdir, setup, session(setup, ctx, io_log=log, io_log_data=False), ckdir=ckdir)
    if child.rc != 0:
        return failed_row(trial, child, "a full disk crashed the process")
    hist, v, d = crash_checks(setup, child, recover=False)
    failed = sorted(hist.failed)
    extra = {"failed_steps": failed, "free_bytes": free, "failed_ops": _failed_ops(log),
             "errnos": sorted({e for _, e, _ in hist.failures} | {e for _, e in hist.errors})}
    if not failed:
        return verdict(trial, False, v, hist, d, extra)
    wrong = [e for e in extra["errnos"] if e != errno.ENOSPC]
    if wrong:
        v.append(f"a full disk failed the save with errno {wrong}, not ENOSPC")
    for step in failed:
        v += failed_step_checks(step, hist, d, "the disk was full", later_must_succeed=False)
    before = [s for s in hist.acked if s < failed[0]]
    if before and d.loaded_step != max(hist.acked):
        v.append(f"with the disk full the newest acknowledged step {max(hist.acked)} does not load "
                 f"(loaded: {d.loaded_step})")
    leaked = [n for n in os.listdir(ckdir) if n.startswith(".step_") and ".tmp-" in n]
    if leaked:
        v.append(f"a full disk left temp directories behind after a clean close: {leaked}")
    # Free the space: the next saves must succeed, and O1, O2, O4 hold for the whole history.
    os.unlink(ballast)
    later = [max(hist.submitted) + 1, max(hist.submitted) + 2]
    child = run_saver(ctx, tdir, setup, session(setup, ctx, steps=later), ckdir=ckdir)
    if child.rc != 0:
        return failed_row(trial, child, "after freeing space the saver failed")
    hist, v2, d = crash_checks(setup, child)
    v += v2
    if not any(s in hist.acked for s in later):
        v.append(f"after freeing space no save succeeded (steps {later})")
    return verdict(trial, True, v, hist, d, extra)
