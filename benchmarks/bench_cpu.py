"""Stall and time-to-durable against torch.save, DCP and the raw disk: now ``ckptlab bench``
(training/bench/, docs/PERFORMANCE.md), which measures them inside real training, every kind in
one run. This wrapper keeps the old flags working:

    python benchmarks/bench_cpu.py --size-mb 1024 --repeats 3 --out benchmarks/results/bench_cpu_1gib
      = ckptlab bench --state-mb 1024 --repeats 3 --out benchmarks/results/bench_cpu_1gib
"""
from __future__ import annotations

import argparse
import sys

from ckptlab.training.bench.cli import main as bench_main
from ckptlab.training.bench.spec import CPU_KINDS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--writer-threads", type=int, default=None)
    ap.add_argument("--no-dcp", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True, help="results directory")
    args, rest = ap.parse_known_args(argv)
    kinds = [k for k in CPU_KINDS if not (args.no_dcp and k.startswith("dcp"))]
    forwarded = ["--state-mb", str(args.size_mb), "--repeats", str(args.repeats), "--device", args.device,
                 "--kinds", ",".join(kinds), "--out", args.out, *rest]
    if args.dir:
        forwarded += ["--dir", args.dir]
    if args.writer_threads:
        forwarded += ["--writer-threads", str(args.writer_threads)]
    return bench_main(forwarded)


if __name__ == "__main__":
    sys.exit(main())
