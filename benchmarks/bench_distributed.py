"""Multi-rank benchmark: DDP-style replicated state of --size-mb checkpointed by worlds of
1, 2 and 4 CPU ranks (gloo, torch.multiprocessing), and the raw disk, in one run.

    python benchmarks/bench_distributed.py --size-mb 256 --ranks 1,2,4 --repeats 3 --out benchmarks/results

bytes/rank = bytes each rank's part of a step holds on disk (~1/N of the state each)
durable    = time from save() (every rank starts together, after a barrier) until the step
             is globally durable: the slowest rank's wait() return, i.e. every part durable,
             the global commit record durable and acknowledged everywhere
1 rank     = the world of one: the plain pccheck checkpointer writing the whole state
raw disk   = one sequential write of the whole state, fsynced (benchmarks/bench_cpu.py)
All ranks share this machine's disk and cores, so N ranks cannot beat one disk's bandwidth;
what the split buys is ~1/N of the bytes per rank (and per node, across nodes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import MiB, bench_raw, fresh_dir, make_state  # noqa: E402

from ckptlab.core import CheckpointConfig, open_checkpointer  # noqa: E402


def part_bytes(directory: str, world: int, rank: int, step: int) -> int:
    part = os.path.join(directory, f"rank_{rank:05d}", f"step_{step:012d}") if world > 1 else \
        os.path.join(directory, f"step_{step:012d}")
    return sum(e.stat().st_size for e in os.scandir(part) if e.is_file())


def rank_main(rank: int, world: int, init_file: str, directory: str, size_mb: int, repeats: int, out: str) -> None:
    """One rank: the same (replicated) state on every rank, `repeats` saves, each timed from a
    common start (a barrier) to the rank's wait() return; rank 0 writes the gathered timings."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    state = make_state(size_mb)
    cfg = CheckpointConfig(keep_last=1, max_inflight=1, coordination_timeout_s=600.0)
    durable, nbytes = [], []
    with open_checkpointer("pccheck", directory, cfg) as ck:
        for step in range(1, repeats + 1):
            dist.barrier()
            t0 = time.perf_counter()
            ck.save(step, state)
            ck.wait()
            durable.append(time.perf_counter() - t0)
            nbytes.append(part_bytes(directory, world, rank, step))
    gathered: list = [None] * world
    dist.all_gather_object(gathered, {"durable_s": durable, "part_bytes": nbytes})
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


def bench_world(world: int, root: str, size_mb: int, repeats: int) -> dict:
    directory = fresh_dir(root, f"world{world}")
    out = os.path.join(root, f"world{world}.json")
    init_file = os.path.join(root, f"init{world}")
    if os.path.exists(init_file):
        os.unlink(init_file)
    mp.spawn(rank_main, args=(world, init_file, directory, size_mb, repeats, out), nprocs=world, join=True)
    with open(out) as f:
        ranks = json.load(f)
    per_step = [max(r["durable_s"][i] for r in ranks) for i in range(repeats)]  # the slowest rank
    return {"ranks": world, "durable_s": per_step, "durable_median_s": statistics.median(per_step),
            "part_bytes": [r["part_bytes"][-1] for r in ranks]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--ranks", default="1,2,4", help="world sizes to run, comma separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where checkpoints are written (default: a temp dir)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if args.size_mb < 1 or args.repeats < 1:
        ap.error("--size-mb and --repeats must be at least 1")
    worlds = [int(x) for x in args.ranks.split(",")]
    if any(w < 1 for w in worlds):
        ap.error(f"--ranks {args.ranks!r}: world sizes must be at least 1")
    root = tempfile.mkdtemp(prefix="bench_dist_", dir=args.dir)
    try:
        return run(args, worlds, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, worlds: list[int], root: str) -> int:
    state = make_state(args.size_mb)
    total = sum(t.numel() * t.element_size() for t in state.values())
    raw, raw_detail = bench_raw(state, root, args.repeats)
    del state
    rows = [bench_world(w, root, args.size_mb, args.repeats) for w in worlds]
    one = next((r for r in rows if r["ranks"] == 1), None)

    print(f"state {total / MiB:.0f} MiB replicated on every rank, {args.repeats} repeats, medians")
    head = ("ranks", "MiB/rank (min-max)", "of total", "durable (s)", "vs 1 rank", "vs raw disk")
    print("  ".join(f"{h:>18}" for h in head))
    print("  ".join(f"{x:>18}" for x in ("raw disk", f"{total / MiB:.1f}", "1.00", f"{raw.durable:.3f}", "-", "1.00x")))
    for r in rows:
        lo, hi = min(r["part_bytes"]) / MiB, max(r["part_bytes"]) / MiB
        r["share_of_total"] = [b / total for b in r["part_bytes"]]
        r["vs_one_rank"] = r["durable_median_s"] / one["durable_median_s"] if one else None
        r["vs_raw"] = r["durable_median_s"] / raw.durable
        print("  ".join(f"{x:>18}" for x in (
            r["ranks"], f"{lo:.1f}-{hi:.1f}", f"{max(r['share_of_total']):.2f}", f"{r['durable_median_s']:.3f}",
            f"{r['vs_one_rank']:.2f}x" if one else "-", f"{r['vs_raw']:.2f}x")))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"bench_distributed_{args.size_mb}mb.json")
    with open(path, "w") as f:
        json.dump({"size_bytes": total, "repeats": args.repeats, "raw_disk": {"durable_s": raw.durable_s, **raw_detail},
                   "worlds": rows, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                               "torch": torch.__version__}}, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
