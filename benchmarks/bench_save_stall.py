"""Where a deferred save()'s stall goes: the bench's 1 GiB CPU state (`ckptlab bench
--state-mb 1024`), one optimizer step between saves as in training, each part of save()
timed by wrapping it.

    python benchmarks/bench_save_stall.py --state-mb 1024 --saves 12 --out benchmarks/results/bench_cpu_1gib_61214f4/stall_breakdown.json

Parts: the whole save(); lift_tensors (walk the state, state_dict() calls) and inside it the
model's, the optimizer's and the RNG's state_dict() and the per-tensor normalisation; the
pickling of the skeleton when save() does it (0 when the skeleton is frozen: plain values only,
pickled by the snapshot thread, core/state.py LiftedState); Snapshotter.take (version
counters, queueing). Each is the
median over the saves after the first two (the first opens the engine). The same lift is
also timed in a tight loop ("warm"), which shows how much of it is cold caches after the
optimizer step. The optimizer step and the wait for durability are outside every figure; the
wrappers themselves add well under a microsecond per call.
"""
from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch

from ckptlab.core import CheckpointConfig, open_checkpointer
from ckptlab.core import pccheck as pccheck_module
from ckptlab.core import snapshot as snapshot_module
from ckptlab.core import state as state_module
from ckptlab.training.bench.runner import shape_flags
from ckptlab.training.bench.spec import BenchSpec
from ckptlab.training.cli import build_parser, config_from_args
from ckptlab.training.loop import build_state


def _timed(acc: dict[str, float], name: str, fn):
    """`fn`, its time added to acc[name] when the training thread calls it (the snapshot
    thread's calls, such as its pickling of a frozen skeleton, are not part of the stall)."""
    training = threading.main_thread()

    def wrapper(*a, **k):
        if threading.current_thread() is not training:
            return fn(*a, **k)
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[name] += time.perf_counter() - t0
    return wrapper


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--state-mb", type=int, default=1024)
    p.add_argument("--saves", type=int, default=12)
    p.add_argument("--dir", default=None, help="checkpoint directory's parent (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.saves < 3:
        p.error("--saves must be >= 3 (the first two are left out)")

    flags = shape_flags(BenchSpec(out=Path(tempfile.gettempdir()), state_mb=args.state_mb))
    cfg = config_from_args(build_parser().parse_args([*flags, "--device", "cpu", "--ckpt-dir", "unused"]))
    state = build_state(cfg, torch.device("cpu"))
    model, optim = state["model"], state["optim"]
    ids = torch.randint(0, 10, (1, 16))

    def train_step() -> None:
        out = model(ids)
        (out[0] if isinstance(out, tuple) else out).float().mean().backward()
        optim.step()
        optim.zero_grad()

    acc: dict[str, float] = defaultdict(float)
    per_save: list[dict[str, float]] = []
    # wrap the parts where save() looks them up
    pccheck_module.lift_state = _timed(acc, "lift_tensors", state_module.lift_state)
    state_module._normalized = _timed(acc, "normalise tensors", state_module._normalized)
    state_module.pickle = type("TimedPickle", (), {"dumps": staticmethod(_timed(acc, "pickle skeleton", pickle.dumps)),
                                                    "HIGHEST_PROTOCOL": pickle.HIGHEST_PROTOCOL,
                                                    "PicklingError": pickle.PicklingError})
    for key, what in (("model", "model.state_dict()"), ("optim", "optimizer.state_dict()"),
                      ("rng", "RNG state_dict()")):
        obj = state[key]
        obj.state_dict = _timed(acc, what, obj.state_dict)
    take = snapshot_module.Snapshotter.take
    snapshot_module.Snapshotter.take = lambda self, *a, **k: _timed(acc, "Snapshotter.take", take)(self, *a, **k)

    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        with open_checkpointer("pccheck", Path(d) / "ckpt", CheckpointConfig(snapshot="deferred", keep_last=1)) as ck:
            ck.guard(optim)
            for step in range(1, args.saves + 1):
                train_step()
                acc.clear()
                t0 = time.perf_counter()
                ck.save(step, state)
                acc["save()"] = time.perf_counter() - t0
                per_save.append(dict(acc))
                ck.wait()
        warm = []
        for _ in range(50):
            t0 = time.perf_counter()
            state_module.lift_state(state)
            warm.append(time.perf_counter() - t0)

    counted = per_save[2:]
    names = ["save()", "lift_tensors", "model.state_dict()", "optimizer.state_dict()", "RNG state_dict()",
             "normalise tensors", "pickle skeleton", "Snapshotter.take"]
    figures = {n: statistics.median(s.get(n, 0.0) for s in counted) for n in names}
    figures["lift_tensors, warm (tight loop)"] = statistics.median(warm)
    tensors = len(state_module.lift_state(state).tensors)
    print(f"deferred save() of the {args.state_mb} MiB CPU state ({tensors} tensors), median of {len(counted)} saves:")
    for name, value in figures.items():
        print(f"  {name:34s} {value * 1e3:7.3f} ms")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"schema": "ckptlab.save_stall/1", "state_mb": args.state_mb,
                                        "tensors": tensors, "saves": len(counted), "torch": torch.__version__,
                                        "median_s": figures, "per_save_s": counted}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
