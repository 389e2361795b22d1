"""Runs the bench's schedule: each run, and each round's raw-disk probe, in its own process
(training/bench/child.py), one after the other; returns the records and the aggregate."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from ckptlab.training.bench.interrupt import BenchInterrupted, stop_on_signals
from ckptlab.training.bench.metrics import aggregate, run_figures, spread, targets
from ckptlab.training.bench.spec import SHAPE_FLAGS, BenchSpec, Run, schedule, vocab_for_state

__all__ = ["BenchError", "BenchInterrupted", "STOP_GRACE_S", "train_flags", "shape_flags", "run_bench"]

_CHILD = "ckptlab.training.bench.child"
STOP_GRACE_S = 5.0  # a stopped child's time to exit on SIGTERM before SIGKILL


class BenchError(RuntimeError):
    """A measured run failed; the message carries the end of its stderr."""


def shape_flags(spec: BenchSpec) -> list[str]:
    """The model flags of every run: the preset, overrides, and the vocabulary --state-mb asks for."""
    shape = dict(spec.shape)
    if spec.state_mb is not None:
        from ckptlab.training.presets import get_preset

        model = get_preset(spec.preset).model.replace(**{k: v for k, v in shape.items() if k in SHAPE_FLAGS})
        per_row = model.dim * (1 if model.tie_embeddings else 2)
        rest = model.replace(vocab_size=1).num_params() - per_row
        shape["vocab_size"] = vocab_for_state(spec.state_mb, rest, per_row, 4 if spec.model_dtype == "fp32" else 2)
    flags = ["--preset", spec.preset, "--model-dtype", spec.model_dtype]
    for name, value in shape.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def train_flags(spec: BenchSpec, run: Run, ckpt_dir: Path) -> list[str]:
    flags = [*shape_flags(spec), "--device", spec.device, "--seed", str(spec.seed),
             "--training-steps", str(spec.steps), "--checkpoint-freq", str(run.every or 0),
             "--ckpt-dir", str(ckpt_dir), "--keep-last", "1", "--no-progress"]
    if spec.threads:
        flags += ["--threads", str(spec.threads)]
    if spec.writer_threads:
        flags += ["--writer-threads", str(spec.writer_threads)]
    return [*flags, *spec.kind_flags(run.kind)]  # last: a variant's settings win over the bench's


def _child(args: list[str], what: str, timeout: float) -> None:
    cmd = [sys.executable, "-m", _CHILD, *args]
    proc: subprocess.Popen[str] | None = None
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} ran over {timeout:g} s") from None
    finally:  # a timeout, a signal (BenchInterrupted) or any error: the child does not outlive this
        if proc is not None:
            _stop(proc)
    if proc.returncode != 0:
        raise BenchError(f"{what} failed (exit {proc.returncode}):\n{stderr[-3000:]}")


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE_S; returns once the child is reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _remove(path: Path) -> None:
    """rmtree that finishes even if a stop signal lands inside it (the handler raises only once)."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except BenchInterrupted:
        shutil.rmtree(path, ignore_errors=True)
        raise


def run_bench(spec: BenchSpec, progress: Callable[[str], None] = lambda what: None) -> dict[str, Any]:
    """Every run of ``schedule(spec)`` plus one disk probe per round; the aggregate document
    (without machine and versions, which report.py adds). SIGTERM/SIGINT meanwhile stop the
    running child, remove the work dir and raise BenchInterrupted (its ``work_dir`` set)."""
    with stop_on_signals():
        return _run_all(spec, progress)


def _run_all(spec: BenchSpec, progress: Callable[[str], None]) -> dict[str, Any]:
    runs_dir = spec.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ckptlab-bench-", dir=spec.dir or spec.out))
    records: list[dict[str, Any]] = []
    disk: list[dict[str, Any]] = []
    try:
        plan = schedule(spec)
        for i, run in enumerate(plan):
            progress(f"round {run.round + 1}/{spec.repeats}: {run.name}")
            record = runs_dir / f"r{run.round}-{run.name}.json"
            ckpt = work / f"ckpt-{run.name}"
            try:
                _child(["run", str(record), "--", *train_flags(spec, run, ckpt)], run.name, spec.timeout_s)
            finally:
                _remove(ckpt)
            records.append(json.loads(record.read_text()) | {"kind": run.kind, "every": run.every,
                                                              "round": run.round})
            if i + 1 == len(plan) or plan[i + 1].round != run.round:
                nbytes = max((r.get("checkpoint_bytes") or 0 for r in records), default=0)
                if nbytes:
                    progress(f"round {run.round + 1}/{spec.repeats}: raw disk")
                    probe = runs_dir / f"r{run.round}-raw-disk.json"
                    _child(["disk", str(probe), "--dir", str(work / "raw"), "--bytes", str(nbytes),
                            *(["--d2h"] if spec.device == "cuda" else [])], "raw disk probe", spec.timeout_s)
                    disk.append(json.loads(probe.read_text()) | {"bytes": nbytes, "round": run.round})
    except BenchInterrupted as exc:
        exc.work_dir = work
        raise
    finally:
        _remove(work)
    results = aggregate(records)
    raw = _raw_disk(disk)
    return {"runs": [run_figures(r) for r in records], "results": results, "raw_disk": raw,
            "targets": gpu_targets(results, raw, _pinned_budget()) if spec.device == "cuda"
            else targets(results, raw["best_write_s"]["median"])}


def _pinned_budget() -> int:
    """The page-locked memory pccheck may use with the default config: its staging cap (the
    staging pool is registered with CUDA) plus the load's pinned batches."""
    from ckptlab.core import CheckpointConfig

    c = CheckpointConfig()
    return c.max_auto_staging_bytes + c.load_buffer_bytes


def _raw_disk(probes: list[dict[str, Any]]) -> dict[str, Any]:
    best = [min(v for v in (p["buffered_write_s"], p["direct_write_s"]) if v is not None) for p in probes]
    nbytes = max((p["bytes"] for p in probes), default=0)
    med = spread(best)["median"]
    read = spread(p["read_s"] for p in probes)
    return {"bytes": nbytes, "rounds": len(probes),
            "direct_write_s": spread(p["direct_write_s"] for p in probes),
            "buffered_write_s": spread(p["buffered_write_s"] for p in probes),
            "best_write_s": spread(best),
            "write_gbps": nbytes / med / 1e9 if med else None,
            "read_s": read, "read_gbps": nbytes / read["median"] / 1e9 if read["median"] else None,
            "read_resident": spread(p["read_resident"] for p in probes),
            "d2h_gbps": spread(p["d2h_gbps"] for p in probes)}
