"""Snapshot modes side by side in real training: now ``ckptlab bench`` (training/bench/,
docs/PERFORMANCE.md). This wrapper keeps the old flags working:

    python benchmarks/bench_snapshot_modes.py --preset seed-1024 --device cuda --steps 40 --freq 10 --out DIR
      = ckptlab bench --preset seed-1024 --device cuda --steps 40 --every 10 --repeats 1
                      --kinds none,torchsave,pccheck-sync,pccheck-deferred,pccheck-gpu --out DIR

--out names a directory (an old-style FILE.json becomes the directory FILE); --trace (the D2H
overlap from a trace) is not part of the bench: record one with `ckptlab train --trace`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ckptlab.training.bench.cli import main as bench_main

RUNS = "none,torchsave,pccheck-sync,pccheck-deferred,pccheck-gpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--model-dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--freq", type=int, default=10)
    p.add_argument("--runs", default=None)
    p.add_argument("--trace", action="store_true", help="ignored (see the module docstring)")
    p.add_argument("--dir", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    runs = args.runs or (RUNS if device == "cuda" else RUNS.replace(",pccheck-gpu", ""))
    out = args.out.with_suffix("") if args.out.suffix == ".json" else args.out
    forwarded = ["--preset", args.preset, "--device", device, "--model-dtype", args.model_dtype,
                 "--steps", str(args.steps), "--every", str(args.freq), "--repeats", "1", "--kinds", runs,
                 "--out", str(out)]
    if args.dir:
        forwarded += ["--dir", args.dir]
    if args.trace:
        print("bench_snapshot_modes: --trace is ignored; ckptlab bench measures without a trace", file=sys.stderr)
    return bench_main(forwarded)


if __name__ == "__main__":
    sys.exit(main())
