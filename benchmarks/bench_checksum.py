"""Checksum speed on one core: the engine's CRC32C vs XXH3-64 (PyPI xxhash) vs zlib CRC-32,
over one buffer, with the disk's bandwidth for scale. Why the engine uses CRC32C: it needs
no third-party C code and one core checksums far faster than any of our disks write.

    python benchmarks/bench_checksum.py --size-mb 256 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import zlib

import numpy as np

from ckptlab import _engine


def rate(fn, data, repeats: int) -> float:
    fn(data)  # warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(data)
        best = min(best, time.perf_counter() - t0)
    return len(data) / best / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.size_mb < 1 or args.repeats < 1:
        ap.error("--size-mb and --repeats must be >= 1")
    data = np.random.default_rng(0).integers(0, 256, args.size_mb << 20, dtype=np.uint8).tobytes()
    results = {f"crc32c ({_engine.crc32c_implementation()}, ckptlab engine)": rate(_engine.crc32c, data, args.repeats),
               "crc32 (zlib)": rate(zlib.crc32, data, args.repeats)}
    try:
        import xxhash

        results["xxh3_64 (PyPI xxhash)"] = rate(xxhash.xxh3_64_intdigest, data, args.repeats)
    except ImportError:
        print("xxhash not installed: pip install xxhash to compare XXH3")
    for name, gbps in results.items():
        print(f"{name:40s} {gbps:6.2f} GB/s per core")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "bench_checksum.json")
        with open(path, "w") as f:
            json.dump({"host": platform.node(), "machine": platform.machine(), "size_mb": args.size_mb,
                       "gb_per_s": results}, f, indent=2)
        print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
