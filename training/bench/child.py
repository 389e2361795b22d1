"""One measured run of the bench, in a process of its own (so no run inherits another's heap,
threads or pinned memory):

    python -m ckptlab.training.bench.child run RECORD.json -- <ckptlab train flags>
    python -m ckptlab.training.bench.child disk RECORD.json --dir DIR --bytes N [--d2h]

``run`` trains as ``ckptlab train`` would (same flags, same loop), then drops the checkpoint's
pages from the page cache and times loading it back (cold load), and writes the loop's
records plus peak RSS (before the load), peak pinned bytes (training and load) and the
checkpoint's size to RECORD.json. Before the load the training's objects are collected and
torch's cached GPU memory released, as a restarting job would load into an empty GPU (a
48 GB seed-full state, its GPU snapshot buffer and its load do not fit an H200 together).
``disk`` runs the raw-disk probes (and the D2H one) in the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main"]


def _checkpoint_files(directory: Path) -> list[Path]:
    from ckptlab.core.commit import LOCK_NAME

    return [p for p in directory.rglob("*") if p.is_file() and p.name != LOCK_NAME]


def _peak_pinned_bytes() -> int:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0  # no CUDA: nothing can be page-locked through torch
    try:
        stats = torch.cuda.host_memory_stats()
    except (AttributeError, RuntimeError):
        return 0
    # the key's spelling differs between torch versions
    return int(stats.get("allocated_bytes.all.peak", stats.get("allocated_bytes.peak", 0)))


def _cold_load(kind: str, directory: Path, device: str) -> tuple[float, float]:
    """Seconds to load the latest checkpoint onto the run's `device` (on CUDA through pinned
    batches, each batch's H2D overlapping the next batch's read), and the share still cached."""
    from ckptlab.core import open_checkpointer
    from ckptlab.core.storage_probe import drop_cache, resident_fraction

    files = _checkpoint_files(directory)
    drop_cache(files)
    resident = resident_fraction(files)
    t0 = time.perf_counter()
    with open_checkpointer(kind, directory) as ck:
        ck.load(map_location=device)
    return time.perf_counter() - t0, resident


def _run(record: Path, flags: Sequence[str]) -> int:
    from ckptlab.training.cli import build_parser, config_from_args, flag_message
    from ckptlab.training.loop import TrainError, resolve_device, train

    parser = build_parser(prog="ckptlab bench (run)")
    cfg = config_from_args(parser.parse_args(list(flags)))
    t0 = time.perf_counter()
    try:
        result = train(cfg)
    except (TrainError, ValueError) as exc:
        print(f"ckptlab bench: {cfg.checkpointer} failed: {flag_message(str(exc))}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    out: dict[str, Any] = result.as_dict()
    out.update(wall_s=wall, peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               checkpoint_bytes=None, cold_load_s=None, cold_load_resident=None)
    _release_training_memory()
    latest = None
    if cfg.checkpointer != "none":
        from ckptlab.core import open_checkpointer

        with open_checkpointer(cfg.checkpointer, cfg.ckpt_dir) as ck:
            latest = ck.latest()
    if latest is not None:
        out["checkpoint_bytes"] = sum(p.stat().st_size for p in _checkpoint_files(Path(latest.path)))
        out["cold_load_s"], out["cold_load_resident"] = _cold_load(cfg.checkpointer, Path(cfg.ckpt_dir),
                                                                     str(resolve_device(cfg.device)))
    # torch's page-locked allocations (training and the load's slots) plus pccheck's staging pool
    # registered with CUDA: an upper bound, the pool is unregistered before the load
    out["peak_pinned_bytes"] = _peak_pinned_bytes() + result.pinned_staging_bytes
    record.write_text(json.dumps(out) + "\n")
    return 0


def _release_training_memory() -> None:
    """Free what the finished training still holds (checkpointer/snapshot reference cycles keep
    GPU buffers alive until the cyclic collector runs) and hand torch's cached GPU memory back."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _disk(record: Path, directory: Path, nbytes: int, d2h: bool) -> int:
    from ckptlab.core.storage_probe import d2h_gbps, disk_probe

    out: dict[str, Any] = disk_probe(directory, nbytes)
    out["d2h_gbps"] = d2h_gbps(nbytes) if d2h else None
    record.write_text(json.dumps(out) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ckptlab.training.bench.child", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    run = sub.add_parser("run")
    run.add_argument("record", type=Path)
    run.add_argument("flags", nargs=argparse.REMAINDER)
    disk = sub.add_parser("disk")
    disk.add_argument("record", type=Path)
    disk.add_argument("--dir", type=Path, required=True)
    disk.add_argument("--bytes", type=int, required=True)
    disk.add_argument("--d2h", action="store_true")
    args = p.parse_args(argv)
    if args.what == "run":
        return _run(args.record, [f for f in args.flags if f != "--"])
    return _disk(args.record, args.dir, args.bytes, args.d2h)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
