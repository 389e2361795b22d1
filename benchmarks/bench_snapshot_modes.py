"""Snapshot modes side by side in real training: what a checkpoint costs the training loop.

Runs the same training (preset, device, steps, checkpoint frequency) once per kind —
``none`` (no checkpoints: the baseline), ``torchsave`` (torch.save + fsync), and pccheck
with ``--snapshot sync``, ``deferred`` and ``gpu`` — each in its own process, one after the
other, and compares:

stall            mean time save() blocked the loop
after-ckpt iter  mean iteration time of the steps right after a checkpoint (a deferred
                 snapshot's barrier, and writer threads competing for memory bandwidth,
                 show up here)
cost/ckpt        stall + (after-ckpt iter - median of the other iterations): the training
                 time one checkpoint really costs
total            sum of iterations and stalls, and its ratio to the ``none`` run
durable          mean save-to-durable time (engine acknowledgement)
d2h overlap      with --trace: share of the D2H copy time (CUDA-event timed, on the host
                 clock) that overlaps a training step of the loop

    python benchmarks/bench_snapshot_modes.py --preset seed-1024 --device cuda --steps 40 --freq 10 --trace
    python benchmarks/bench_snapshot_modes.py --preset tiny --device cpu --steps 60 --freq 10   # CPU smoke

Writes benchmarks/results/snapshot_modes_<device>_<preset>.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = {  # name -> training flags
    "none": ["--checkpointer", "none"],
    "torchsave": ["--checkpointer", "torchsave"],
    "pccheck-sync": ["--checkpointer", "pccheck", "--snapshot", "sync"],
    "pccheck-deferred": ["--checkpointer", "pccheck", "--snapshot", "deferred"],
    "pccheck-gpu": ["--checkpointer", "pccheck", "--snapshot", "gpu"],
}


def _run(name: str, args: argparse.Namespace, root: Path) -> dict:
    summary = root / f"{name}.json"
    trace = root / f"{name}.arrow"
    cmd = [sys.executable, "-m", "ckptlab.training.cli", *RUNS[name], "--preset", args.preset,
           "--device", args.device, "--model-dtype", args.model_dtype,
           "--training-steps", str(args.steps), "--checkpoint-freq", str(args.freq),
           "--ckpt-dir", str(root / f"ckpt-{name}"), "--summary-json", str(summary), "--no-progress",
           "--keep-last", "1", *args.train_args]
    if args.trace and name.startswith("pccheck"):
        cmd += ["--trace", str(trace)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(summary.read_text())
    out = _figures(result)
    out.update(name=name, wall_s=wall)
    if args.trace and trace.exists():
        out.update(_overlaps(trace))
    shutil.rmtree(root / f"ckpt-{name}", ignore_errors=True)  # the GPU boxes' disk is small
    return out


def _figures(r: dict) -> dict:
    iters = r["iter_s"]
    first = r["first_step"]
    after = {s + 1 for s in r["ckpt_steps"]}
    after_ckpt = [t for i, t in enumerate(iters, start=first) if i in after]
    others = [t for i, t in enumerate(iters, start=first) if i not in after and i != first]
    median = statistics.median(others) if others else 0.0
    stall = statistics.fmean(r["stall_s"]) if r["stall_s"] else 0.0
    after_mean = statistics.fmean(after_ckpt) if after_ckpt else median
    return {
        "iter_median_s": median,
        "after_ckpt_iter_s": after_mean,
        "stall_mean_s": stall,
        "stall_max_s": max(r["stall_s"], default=0.0),
        "cost_per_ckpt_s": stall + (after_mean - median) if r["ckpt_steps"] else 0.0,
        "total_s": sum(iters[1:]) + sum(r["stall_s"]),
        "checkpoints": len(r["ckpt_steps"]),
        "durable_mean_s": statistics.fmean(r["time_to_durable_s"]) if r["time_to_durable_s"] else None,
        "snapshot_wait_s": r.get("snapshot_wait_s", 0.0),
        "peak_gpu_bytes": r.get("peak_gpu_bytes"),
    }


def _overlaps(trace: Path) -> dict:
    try:
        from ckptlab.analysis import overlap, read_trace
    except ImportError as e:  # pyarrow missing
        return {"overlap_note": f"not computed: {e}"}
    table = read_trace(trace)
    out = {}
    for key, phases, with_phases in [("d2h_vs_train_step", "d2h", "train_step"),
                                     ("d2h_vs_fwd_bwd_host", "d2h", {"forward", "backward"}),
                                     ("persist_vs_train_step", {"write", "checksum", "fsync"}, "train_step")]:
        o = overlap(table, phases, with_phases)
        out[key] = {"busy_s": o["busy_s"], "overlap_s": o["overlap_s"], "fraction": o["fraction"]}
    return out


def _print(rows: list[dict], base: dict | None, peer: dict | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="checkpoint cost in training")
    for col in ("run", "iter med ms", "stall ms", "after-ckpt iter ms", "cost/ckpt ms", "total s",
                "vs none", "durable s", "d2h∩step", "peak GPU GB"):
        table.add_column(col, justify="right")
    for r in rows:
        ov = r.get("d2h_vs_train_step")
        table.add_row(
            r["name"], f"{r['iter_median_s'] * 1e3:.1f}", f"{r['stall_mean_s'] * 1e3:.1f}",
            f"{r['after_ckpt_iter_s'] * 1e3:.1f}", f"{r['cost_per_ckpt_s'] * 1e3:.1f}", f"{r['total_s']:.2f}",
            f"{r['total_s'] / base['total_s']:.3f}x" if base else "-",
            f"{r['durable_mean_s']:.2f}" if r["durable_mean_s"] is not None else "-",
            f"{ov['fraction'] * 100:.0f} %" if ov and ov["busy_s"] else "-",
            f"{r['peak_gpu_bytes'] / 1e9:.1f}" if r.get("peak_gpu_bytes") else "-")
    Console(width=max(150, shutil.get_terminal_size().columns)).print(table)
    if peer:
        for r in rows:
            if r["name"].startswith("pccheck") and r["cost_per_ckpt_s"] > 0:
                print(f"{r['name']}: cost per checkpoint {peer['cost_per_ckpt_s'] / r['cost_per_ckpt_s']:.1f}x "
                      f"lower than torchsave (stall {peer['stall_mean_s'] / max(r['stall_mean_s'], 1e-9):.1f}x)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--model-dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--freq", type=int, default=10)
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    p.add_argument("--trace", action="store_true", help="record traces of the pccheck runs (d2h overlap)")
    p.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="after '--': more training flags")
    args = p.parse_args(argv)
    args.train_args = [a for a in args.train_args if a != "--"]
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        p.error(f"unknown run(s) {unknown}; known: {', '.join(RUNS)}")
    if args.steps < 2 * args.freq or args.freq < 2:
        p.error("need --freq >= 2 and --steps >= 2 * --freq (steps after checkpoints are measured)")
    root = Path(tempfile.mkdtemp(prefix="ckptlab-snapmodes-", dir=args.dir))
    rows = []
    try:
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows.append(_run(name, args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    by_name = {r["name"]: r for r in rows}
    _print(rows, by_name.get("none"), by_name.get("torchsave"))
    device = args.device if args.device != "auto" else ("cuda" if _has_cuda() else "cpu")
    out = args.out or RESULTS / f"snapshot_modes_{device}_{args.preset}_{args.model_dtype}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "host": platform.node(), "machine": platform.machine(), "device": device, "gpu": _gpu_name(),
        "preset": args.preset, "model_dtype": args.model_dtype, "steps": args.steps, "freq": args.freq,
        "train_args": args.train_args, "runs": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
