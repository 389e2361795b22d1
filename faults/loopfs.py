"""Real file systems on loop devices for the ``realfs`` tier: make an image, attach it, mount
it, and always take it all down again (unmount, detach, delete the image), even when the trial
inside fails or is interrupted.

    why_not(fs)               -> None if ``fs`` can be made and mounted here, else the reason
    mounted(fs, where, opts)  context manager: the mount point of a fresh ``fs`` image in ``where``

Needs root (losetup, mount); ``mkfs.ext4`` comes from Debian's e2fsprogs, ``mkfs.xfs`` from
xfsprogs. Images are sparse files, so an "empty" 320 MiB xfs costs a few MiB of disk.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class FileSystem:
    mkfs: str            # the command
    package: str         # the Debian package that has it
    args: tuple[str, ...]
    size: int            # image bytes: small enough to fill, large enough for mkfs
    reserve: int = 0     # free bytes below which even mkdir/create fail (the fs's own reservations)


# ext4: no blocks reserved for root (the campaign runs as root: reserved blocks would hide a
# full disk). xfs: 300 MiB is the smallest file system recent mkfs.xfs makes; it refuses a
# mkdir or create once fewer than ~170 KiB are free (its transaction reservations; measured
# on a 320 MiB image), so a full-disk trial leaves that much on top of what it means to leave.
FILESYSTEMS = {
    "ext4": FileSystem("mkfs.ext4", "e2fsprogs", ("-q", "-F", "-m", "0"), 64 * MiB),
    "xfs": FileSystem("mkfs.xfs", "xfsprogs", ("-q", "-f"), 320 * MiB, reserve=192 * 1024),
}


def _run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if r.returncode != 0:
        raise OSError(f"{' '.join(cmd)} failed (rc={r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")
    return r.stdout.strip()


def why_not(fs: str) -> str | None:
    """Why a loop-mounted ``fs`` cannot be made here (not root, a tool or the kernel module
    missing), or None."""
    if fs not in FILESYSTEMS:
        return f"unknown file system {fs!r} (known: {', '.join(FILESYSTEMS)})"
    if os.geteuid() != 0:
        return "needs root (losetup and mount of a loop device)"
    for tool, package in (("losetup", "mount"), ("mount", "mount"), (FILESYSTEMS[fs].mkfs, FILESYSTEMS[fs].package)):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    if not _have_loop_devices():
        return "no loop devices (/dev/loop-control is missing)"
    return None


def _have_loop_devices() -> bool:
    return os.path.exists("/dev/loop-control") or os.path.exists("/dev/loop0")


@contextlib.contextmanager
def mounted(fs: str, where: str, options: str = "") -> Iterator[str]:
    """A fresh ``fs`` mounted (with ``mount -o options``) in a new directory under ``where``;
    on exit it is unmounted, its loop device detached and the image deleted, whatever happened."""
    spec = FILESYSTEMS[fs]
    base = tempfile.mkdtemp(prefix=f"{fs}-", dir=where)
    image, mnt = os.path.join(base, "image"), os.path.join(base, "mnt")
    os.makedirs(mnt)
    dev = None
    mounted_ = False
    try:
        with open(image, "wb") as f:
            f.truncate(spec.size)
        _run(spec.mkfs, *spec.args, image)
        dev = _run("losetup", "--find", "--show", image)
        _run("mount", *(["-o", options] if options else []), "-t", fs, dev, mnt)
        mounted_ = True
        yield mnt
    finally:
        errors = []
        if mounted_:
            try:
                _run("umount", mnt)
            except OSError as e:  # busy (a child still inside): detach lazily, never leave it mounted
                errors.append(str(e))
                subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
        if dev:
            try:
                _run("losetup", "-d", dev)
            except OSError as e:
                errors.append(str(e))
        shutil.rmtree(base, ignore_errors=True)
        if errors and sys.exc_info()[0] is None:  # never mask the trial's own exception
            raise OSError("; ".join(errors))
