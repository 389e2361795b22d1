"""CPU benchmark: stall and time-to-durable of ckptlab (pccheck) vs torch.save+fsync vs
PyTorch DCP vs the raw disk, for one state of --size-mb, all measured in the same run.

    python benchmarks/bench_cpu.py --size-mb 1024 --repeats 3 --out benchmarks/results

stall      = time save() blocks the caller
durable    = time from calling save() until the checkpoint is durable (acknowledged)
raw disk   = a plain sequential write of the same bytes, fsynced: the faster of buffered
             write + fsync and O_DIRECT + fdatasync (the ceiling for any checkpointer)
Targets (issue 2): pccheck stall >= 10x shorter than torchsave; durable <= 1.25x raw disk.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

from ckptlab.core import CheckpointConfig, open_checkpointer
from ckptlab.profiling.files import fsync_dir

MiB = 1 << 20
BLOCK = 16 * MiB


@dataclass
class Result:
    method: str
    stall_s: list[float]
    durable_s: list[float]

    @property
    def stall(self) -> float:
        return statistics.median(self.stall_s)

    @property
    def durable(self) -> float:
        return statistics.median(self.durable_s)


def make_state(size_mb: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A model-like state: 64 fp32 tensors of equal size, random contents."""
    n = size_mb * MiB // 4 // 64
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.randn(n, generator=g).to(device) for i in range(64)}


def fresh_dir(root: str, name: str) -> str:
    d = os.path.join(root, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def raw_buffered(buf: mmap.mmap, path: str) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    view = memoryview(buf)
    for off in range(0, len(buf), BLOCK):
        os.write(fd, view[off:off + BLOCK])
    os.fsync(fd)
    os.close(fd)
    fsync_dir(os.path.dirname(path))
    return time.perf_counter() - t0


def raw_direct(buf: mmap.mmap, path: str) -> float | None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError:
        return None
    t0 = time.perf_counter()
    view = memoryview(buf)
    try:
        for off in range(0, len(buf), BLOCK):
            os.write(fd, view[off:off + BLOCK])
        os.fdatasync(fd)
    except OSError:
        os.close(fd)
        return None
    os.close(fd)
    fsync_dir(os.path.dirname(path))
    return time.perf_counter() - t0


def bench_raw(state, root, repeats) -> tuple[Result, dict]:
    total = sum(t.numel() * t.element_size() for t in state.values())
    buf = mmap.mmap(-1, (total + 4095) // 4096 * 4096)  # page aligned, as O_DIRECT needs
    off = 0
    for t in state.values():
        b = t.cpu().numpy().tobytes()
        buf[off:off + len(b)] = b
        off += len(b)
    buffered, direct = [], []
    for _ in range(repeats):
        d = fresh_dir(root, "raw")
        buffered.append(raw_buffered(buf, os.path.join(d, "buffered.bin")))
        r = raw_direct(buf, os.path.join(d, "direct.bin"))
        if r is not None:
            direct.append(r)
    detail = {"buffered_fsync_s": statistics.median(buffered),
              "direct_fdatasync_s": statistics.median(direct) if direct else None}
    best = buffered if not direct or statistics.median(buffered) <= statistics.median(direct) else direct
    name = "raw disk (" + ("buffered+fsync" if best is buffered else "O_DIRECT") + ")"
    buf.close()
    return Result(name, [0.0] * len(best), best), detail


def bench_ckptlab(kind, state, root, repeats, cfg) -> Result:
    stalls, durables = [], []
    d = fresh_dir(root, kind)
    with open_checkpointer(kind, d, cfg) as ck:
        for step in range(1, repeats + 1):
            t0 = time.perf_counter()
            ck.save(step, state)
            t1 = time.perf_counter()
            ck.wait()
            t2 = time.perf_counter()
            stalls.append(t1 - t0)
            durables.append(t2 - t0)
    return Result(kind, stalls, durables)


def bench_plain_torch_save(state, root, repeats) -> Result:
    """The seeds' baseline as they wrote it, plus durability: torch.save to a file, fsync,
    rename, directory fsync. No checksums, no manifest (ckptlab's torchsave adds both)."""
    times = []
    d = fresh_dir(root, "plain")
    for step in range(repeats):
        t0 = time.perf_counter()
        tmp = os.path.join(d, f".ckpt{step}.tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(d, f"ckpt{step}.pt"))
        fsync_dir(d)
        times.append(time.perf_counter() - t0)
    return Result("torch.save+fsync (plain)", times, times)


def bench_dcp(state, root, repeats, use_async: bool) -> Result | None:
    try:
        import torch.distributed.checkpoint as dcp
    except ImportError:
        return None
    stalls, durables = [], []
    for step in range(repeats):
        d = fresh_dir(root, f"dcp{step}")
        try:
            t0 = time.perf_counter()
            if use_async:
                fut = dcp.async_save(state, checkpoint_id=d)
                t1 = time.perf_counter()
                fut.result()
            else:
                dcp.save(state, checkpoint_id=d)
                t1 = time.perf_counter()
            fsync_dir(d)  # DCP fsyncs its files but not the directory; count that step for fairness
            t2 = time.perf_counter()
        except Exception as e:  # DCP's single-process support varies by torch version
            print(f"  dcp{'-async' if use_async else ''}: not measured ({type(e).__name__}: {e})", file=sys.stderr)
            return None
        stalls.append(t1 - t0)
        durables.append(t2 - t0)
    return Result("dcp.async_save" if use_async else "dcp.save", stalls, durables)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024, help="state size in MiB (default 1024)")
    ap.add_argument("--repeats", type=int, default=3, help="saves per method; medians are reported")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir under benchmarks/scratch)")
    ap.add_argument("--writer-threads", type=int, default=4)
    ap.add_argument("--chunk-mb", type=int, default=16)
    ap.add_argument("--io-mode", default="auto", choices=["auto", "direct", "buffered"])
    ap.add_argument("--no-dcp", action="store_true", help="skip the DCP peers")
    ap.add_argument("--device", default="cpu", help="where the state lives (cpu, cuda); the raw-disk row always writes host bytes")
    ap.add_argument("--out", default=None, help="directory for results JSON/Markdown")
    args = ap.parse_args(argv)
    if args.size_mb < 1 or args.repeats < 1:
        ap.error("--size-mb and --repeats must be >= 1")

    scratch = args.dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "scratch")
    os.makedirs(scratch, exist_ok=True)
    root = tempfile.mkdtemp(prefix="bench-", dir=scratch)
    free = shutil.disk_usage(root).free
    if free < args.size_mb * MiB * 4:
        ap.error(f"{root} has {free / MiB:.0f} MiB free; need about {4 * args.size_mb} MiB")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is available")
    state = make_state(args.size_mb, args.device)
    total = sum(t.numel() * t.element_size() for t in state.values())
    cfg = CheckpointConfig(writer_threads=args.writer_threads, chunk_bytes=args.chunk_mb * MiB,
                           staging_bytes=(total + args.chunk_mb * MiB - 1) // (args.chunk_mb * MiB) * args.chunk_mb * MiB,
                           max_inflight=2, keep_last=1, io_mode=args.io_mode)
    print(f"state: {total / MiB:.0f} MiB in {len(state)} tensors; writing under {root}")
    results: list[Result] = []
    try:
        raw, raw_detail = bench_raw(state, root, args.repeats)
        results.append(raw)
        print(f"  raw disk: buffered+fsync {raw_detail['buffered_fsync_s']:.3f} s, O_DIRECT {raw_detail['direct_fdatasync_s']}")
        results.append(bench_plain_torch_save(state, root, args.repeats))
        print(f"  {results[-1].method}: stall {results[-1].stall:.3f} s")
        for kind in ("torchsave", "pccheck"):
            results.append(bench_ckptlab(kind, state, root, args.repeats, cfg))
            print(f"  {kind}: stall {results[-1].stall:.3f} s, durable {results[-1].durable:.3f} s")
        if not args.no_dcp:
            for use_async in (False, True):
                r = bench_dcp(state, root, args.repeats, use_async)
                if r:
                    results.append(r)
                    print(f"  {r.method}: stall {r.stall:.3f} s, durable {r.durable:.3f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    by = {r.method: r for r in results}
    ours, base, plain = by["pccheck"], by["torchsave"], by["torch.save+fsync (plain)"]
    stall_ratio = base.stall / ours.stall
    plain_ratio = plain.stall / ours.stall
    durable_ratio = ours.durable / raw.durable
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{total / MiB:.0f} MiB state, median of {args.repeats}, {platform.node()}")
    for col in ("method", "stall (s)", "durable (s)", "GB/s to durable", "stall vs pccheck", "durable vs raw"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in results:
        table.add_row(r.method, f"{r.stall:.4f}", f"{r.durable:.3f}", f"{total / r.durable / 1e9:.2f}",
                      f"{r.stall / ours.stall:.1f}x" if r.stall else "-", f"{r.durable / raw.durable:.2f}x")
    Console().print(table)
    verdict = {
        "stall_torchsave_over_pccheck": stall_ratio, "stall_target_10x": stall_ratio >= 10,
        "stall_plain_torch_save_over_pccheck": plain_ratio,
        "durable_pccheck_over_raw": durable_ratio, "durable_target_1.25x": durable_ratio <= 1.25,
    }
    print(f"stall: torchsave/pccheck = {stall_ratio:.1f}x (target >= 10x: {'MET' if stall_ratio >= 10 else 'MISSED'})")
    print(f"stall: plain torch.save+fsync/pccheck = {plain_ratio:.1f}x")
    print(f"durable: pccheck/raw = {durable_ratio:.2f}x (target <= 1.25x: {'MET' if durable_ratio <= 1.25 else 'MISSED'})")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        record = {
            "host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "size_bytes": total, "repeats": args.repeats, "config": asdict(cfg), "raw_detail": raw_detail,
            "results": [asdict(r) | {"stall_median_s": r.stall, "durable_median_s": r.durable} for r in results],
            "verdict": verdict, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        tag = os.environ.get("CKPTLAB_BENCH_TAG", "cpu")
        path = os.path.join(args.out, f"bench_{tag}_{args.size_mb}mb.json")
        with open(path, "w") as f:
            json.dump(record, f, indent=2, default=str)
        print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
