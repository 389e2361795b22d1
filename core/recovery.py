"""Recovery: find the newest checkpoint that verifies, read it in parallel, restore it.

A checkpoint counts only if its directory has a committed name, its MANIFEST decodes (own
checksum included), every data file has the size the manifest says, and every chunk's
CRC32C matches. Anything else is reported (one ``CorruptCheckpointWarning``) and skipped: the loader falls back to the next
older checkpoint and never loads a corrupt one silently. The loader only reads.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ckptlab.core.errors import (CheckpointError, CorruptCheckpointError, CorruptCheckpointWarning, ManifestError,
                                 NoCheckpointError)
from ckptlab.core.commit import committed_step_dirs
from ckptlab.core.config import DEFAULT_LOAD_BUFFER_BYTES
from ckptlab.core.load_pipeline import Target, read_into
from ckptlab.core.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, TensorEntry, decode_manifest
from ckptlab.core.restore import restore
from ckptlab.core.state import stored_bytes, to_device, unpickle_skeleton, views_on
from ckptlab.profiling.phases import phase


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint directory as found on disk."""

    step: int
    path: str
    nbytes: int
    writer: str = ""
    status: str = "ok"  # "ok", "unverified" (manifest only) or "corrupt"
    problem: str | None = None


def read_manifest(path: str) -> Manifest:
    mpath = os.path.join(path, MANIFEST_NAME)
    try:
        size = os.path.getsize(mpath)
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(mpath, f"manifest of {size} bytes is implausibly large")
        with open(mpath, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ManifestError(path, "no MANIFEST (not a committed ckptlab checkpoint)") from None
    except IsADirectoryError:
        raise ManifestError(mpath, "MANIFEST is a directory") from None
    manifest = decode_manifest(data, source=mpath)
    for f in manifest.files:
        fpath = os.path.join(path, f.name)
        try:
            actual = os.path.getsize(fpath)
        except FileNotFoundError:
            raise CorruptCheckpointError(fpath, "data file is missing") from None
        if actual != f.nbytes:
            raise CorruptCheckpointError(fpath, f"data file is {actual} bytes, the manifest says {f.nbytes} (truncated?)")
    return manifest


def verify_checkpoint(path: str, threads: int = 4) -> Manifest:
    """Read every chunk and check its CRC32C; raises CorruptCheckpointError on the first problem."""
    m = read_manifest(path)
    read_into(path, m, [], threads, buffer_bytes=None)  # no targets: nothing to bound, one batch
    return m


def read_checkpoint(path: str, threads: int = 4, allow_pickle: tuple[str, ...] = (),
                    device: torch.device | None = None,
                    buffer_bytes: int | None = DEFAULT_LOAD_BUFFER_BYTES) -> tuple[Manifest, Any, list[torch.Tensor]]:
    """Read and verify one checkpoint: (manifest, skeleton tree, tensors on `device`, default CPU).

    Onto a CUDA device the storages are fresh device allocations filled batch by batch
    through at most `buffer_bytes` of pinned host memory, each batch's copy overlapping the
    next batch's read (core/load_pipeline.py); onto the host they are read into directly.
    """
    m = read_manifest(path)
    if m.writer == "torchsave":
        m, tree, tensors = _read_torchsave(path, m, threads, allow_pickle)
        return m, tree, _moved(tensors, device, m.step)
    staged = device is not None and device.type == "cuda"
    storages = []  # each read once; the tensors are views of them, shared as they were saved
    targets = []
    for s in m.storages:
        dst = torch.empty(s.nbytes, dtype=torch.uint8, device=device if staged else None)
        storages.append(dst)
        if s.nbytes:
            targets.append(Target(s.offset, dst, staged=staged))
    objects = torch.empty(m.objects[1], dtype=torch.uint8)
    if m.objects[1]:
        targets.append(Target(m.objects[0], objects))
    read_into(path, m, targets, threads, buffer_bytes)
    tree = unpickle_skeleton(objects.numpy().tobytes(), allow_pickle, source=path)
    tensors = views_on(storages, list(m.tensors))
    return m, tree, tensors if staged else _moved(tensors, device, m.step)


def _moved(tensors: list[torch.Tensor], device: torch.device | None, step: int) -> list[torch.Tensor]:
    """Tensors read to the host, moved to a non-CPU `device` (each storage once: ties stay ties)."""
    if device is None or device.type == "cpu":
        return tensors
    with phase("h2d", step=step, nbytes=stored_bytes(tensors)):
        return to_device(tensors, device)


def _read_torchsave(path: str, m: Manifest, threads: int, allow_pickle: tuple[str, ...]):
    buf = torch.empty(m.total_bytes, dtype=torch.uint8)
    read_into(path, m, [Target(0, buf)] if m.total_bytes else [], threads, buffer_bytes=None)
    try:
        payload = torch.load(io.BytesIO(buf.numpy().data), map_location="cpu", weights_only=True)
        skeleton = payload["skeleton"]
        if "storages" in payload:  # format 2: byte storages and the views on them (core/torchsave.py)
            views = [TensorEntry(*v) for v in payload["views"]]
            tensors = views_on(list(payload["storages"]), views)
        else:  # format 1: the tensors themselves
            tensors = list(payload["tensors"])
    except Exception as e:
        raise CorruptCheckpointError(path, f"torch.load failed: {type(e).__name__}: {e}") from None
    return m, unpickle_skeleton(skeleton, allow_pickle, source=path), tensors


def list_checkpoints(directory: str | os.PathLike, verify: bool = False, threads: int = 4) -> list[CheckpointInfo]:
    """Every committed-looking checkpoint, oldest first, with its status.

    Without `verify` only the manifest and file sizes are checked ("unverified" when they
    pass); with it every chunk's checksum is read and checked too ("ok").
    """
    out = []
    for step, path in committed_step_dirs(directory):
        try:
            m = verify_checkpoint(path, threads) if verify else read_manifest(path)
            nbytes = sum(f.nbytes for f in m.files)
            out.append(CheckpointInfo(m.step, path, nbytes, m.writer, "ok" if verify else "unverified"))
            if m.step != step:
                out[-1] = CheckpointInfo(step, path, nbytes, m.writer, "corrupt",
                                         f"directory says step {step}, manifest says {m.step}")
        except CorruptCheckpointError as e:
            out.append(CheckpointInfo(step, path, _dir_bytes(path), "", "corrupt", str(e)))
    return out


def _dir_bytes(path: str) -> int:
    try:
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    except OSError:
        return 0


def latest_valid(directory: str | os.PathLike) -> CheckpointInfo | None:
    """Newest checkpoint whose manifest and file sizes check out (chunks are checked on load)."""
    for info in reversed(list_checkpoints(directory)):
        if info.status != "corrupt":
            return info
    return None


def cuda_device(map_location: str | torch.device | None) -> torch.device | None:
    """The CUDA device a load reads onto through pinned batches, None for any other target;
    a clear error where CUDA is asked for and this machine has none."""
    device = torch.device(map_location) if map_location is not None else None
    if device is None or device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        raise CheckpointError(f"map_location={str(map_location)!r} but this machine has no usable CUDA device; "
                              "load with map_location='cpu'")
    return device


def load_latest(
    directory: str | os.PathLike,
    state: Mapping[str, Any] | None = None,
    map_location: str | torch.device | None = None,
    threads: int = 4,
    allow_pickle: tuple[str, ...] = (),
    step: int | None = None,
    load_buffer_bytes: int = DEFAULT_LOAD_BUFFER_BYTES,
) -> tuple[int, dict[str, Any]]:
    """Load the newest valid checkpoint (or exactly `step`), falling back past corrupt ones.

    With `state`, objects in it are restored in place (load_state_dict, tensor copy_); the
    plain loaded state is returned either way, its tensors on `map_location` (default CPU).
    Chunks are read in batches of at most load_buffer_bytes / 2; onto a CUDA device through
    that much pinned host memory, each batch's copy overlapping the next batch's read.
    Raises NoCheckpointError when nothing valid exists, listing what was skipped.
    """
    directory = os.fspath(directory)
    cuda_device(map_location)  # a clear error before anything is read
    device = torch.device(map_location) if map_location is not None else None
    skipped = []
    candidates = committed_step_dirs(directory)
    if step is not None:
        candidates = [(s, p) for s, p in candidates if s == step]
    for s, path in reversed(candidates):
        try:
            with phase("load", step=s):
                m, tree, tensors = read_checkpoint(path, threads, allow_pickle, device, load_buffer_bytes)
        except CorruptCheckpointError as e:
            skipped.append(str(e))
            warnings.warn(CorruptCheckpointWarning(path, s, e.reason), stacklevel=2)  # the one report
            continue
        if m.step != s:
            skipped.append(f"{path}: directory says step {s}, manifest says {m.step}")
            continue
        with phase("restore", step=m.step):
            loaded = restore(state, tree, tensors)
        return m.step, loaded
    what = f"step {step}" if step is not None else "checkpoint"
    detail = ("; skipped: " + "; ".join(skipped)) if skipped else ""
    raise NoCheckpointError(f"no valid {what} in {directory}{detail}")
