"""The writer-thread affinity experiment: where should the engine's writer threads run, and
how many should there be? (The statistics: ``ckptlab.analysis.affinity``.)

One *cell* of the matrix is a writer-thread count and a placement:

- ``unpinned``: wherever the kernel puts them;
- ``compact``: pinned to the first N CPUs this process may use;
- ``spread``: pinned to N CPUs spaced evenly over them (stride = CPUs / N);
- ``disjoint``: pinned to the last N CPUs, with training kept off them (training 0-63,
  checkpointing 64-71 on a Grace node).

A run opens a fresh pccheck checkpointer for the cell, saves one warm-up checkpoint (dropped)
and ``saves`` measured ones of a ``size_mb`` state, each waited until durable, while
``load_procs`` CPU-bound processes stand in for the training job's threads. The *training
CPUs* are every CPU, or with ``disjoint`` those the writers leave free: the load processes and
the thread that saves (the training loop's, which stages the chunks) run there, and so does
the engine's commit thread, which inherits the saving thread's CPUs. Every run records a
trace. Runs are made ``repeats`` times per cell, in a seeded random order, so drift on the
machine falls on every cell alike. Output directory::

    manifest.json     the machine and the experiment (kernel, CPUs, lscpu, numactl -H, mount)
    runs.jsonl        one line per finished run (appended as runs finish)
    traces/*.arrow    each run's trace (ckptlab trace threads / plot / export work on them)
    summary.json      per cell: medians, quartiles, comparison with unpinned (ckptlab analyze OUT)
    affinity.png      makespan, straggler ratio, CPU wait and migrations per cell
"""
from __future__ import annotations

import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from ckptlab.core.config import available_cpus, check_cpus_available
from ckptlab.profiling.files import atomic_write_bytes
from ckptlab.profiling.metadata import cpu_list_string

PLACEMENTS = ("unpinned", "compact", "spread", "disjoint")
MiB = 1 << 20


class Unplaceable(ValueError):
    """A cell that cannot be placed on the CPUs this process may use."""


@dataclass(frozen=True)
class Cell:
    threads: int
    placement: str
    writer_cpus: tuple[int, ...]  # () = unpinned
    training_cpus: tuple[int, ...]  # the saving thread, the commit thread and the load processes

    @property
    def name(self) -> str:
        return f"{self.placement}-t{self.threads}"

    def describe(self) -> str:
        writers = f"writers on {cpu_list_string(self.writer_cpus)}" if self.writer_cpus else "writers unpinned"
        return f"{self.placement}: {writers}, training on {cpu_list_string(self.training_cpus)}"


def place(placement: str, threads: int, allowed: Sequence[int]) -> Cell:
    """The cell for ``threads`` writers placed by ``placement`` on the CPUs ``allowed``."""
    cpus = sorted(set(allowed))
    m = len(cpus)
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r} (known: {', '.join(PLACEMENTS)})")
    if threads < 1:
        raise ValueError(f"writer threads must be >= 1, got {threads}")
    if placement == "unpinned":
        return Cell(threads, placement, (), tuple(cpus))
    if placement == "disjoint":
        if threads >= m:
            raise Unplaceable(f"disjoint with {threads} writers needs more than {threads} CPUs "
                              f"(this process may use {m}: {cpu_list_string(cpus)})")
        return Cell(threads, placement, tuple(cpus[m - threads:]), tuple(cpus[:m - threads]))
    if threads > m:
        raise Unplaceable(f"{placement} with {threads} writers needs {threads} CPUs "
                          f"(this process may use {m}: {cpu_list_string(cpus)})")
    if placement == "compact":
        return Cell(threads, placement, tuple(cpus[:threads]), tuple(cpus))
    return Cell(threads, placement, tuple(cpus[(i * m) // threads] for i in range(threads)), tuple(cpus))


@dataclass
class ExperimentSpec:
    directory: str                 # checkpoints go here: the file system under test
    out: str                       # results directory
    threads: tuple[int, ...] = (1, 2, 4)
    placements: tuple[str, ...] = PLACEMENTS
    repeats: int = 5
    saves: int = 3                 # measured checkpoints per run, after one warm-up
    size_mb: int = 256
    chunk_mb: int = 16
    load_procs: int = 0
    io_mode: str = "auto"
    seed: int = 0
    cpus: tuple[int, ...] = field(default_factory=lambda: tuple(sorted(available_cpus())))

    def validate(self) -> None:
        for name in ("repeats", "saves", "size_mb", "chunk_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.load_procs < 0:
            raise ValueError(f"load-procs must be >= 0, got {self.load_procs}")
        if not self.threads or any(t < 1 for t in self.threads):
            raise ValueError(f"thread counts must be >= 1, got {list(self.threads)}")
        unknown = [p for p in self.placements if p not in PLACEMENTS]
        if unknown or not self.placements:
            raise ValueError(f"unknown placement(s) {unknown} (known: {', '.join(PLACEMENTS)})")
        if self.io_mode not in ("auto", "direct", "buffered"):
            raise ValueError(f"io-mode must be auto, direct or buffered, got {self.io_mode!r}")
        if not self.cpus:
            raise ValueError("cpus: no CPUs given")
        check_cpus_available(self.cpus, "cpus")


def plan(spec: ExperimentSpec) -> tuple[list[Cell], list[dict[str, Any]]]:
    """The cells to run, and those skipped with the reason (e.g. disjoint with every CPU)."""
    cells, skipped = [], []
    for t in spec.threads:
        for p in spec.placements:
            try:
                cells.append(place(p, t, spec.cpus))
            except Unplaceable as e:
                skipped.append({"cell": f"{p}-t{t}", "reason": str(e)})
    return cells, skipped


# A stand-in for training threads: a process that spins on the CPUs it is given.
_SPIN = ("import os, sys\n"
         "os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')})\n"
         "print('ready', flush=True)\n"
         "while True:\n"
         "    pass\n")


@contextmanager
def cpu_load(procs: int, cpus: Sequence[int]) -> Iterator[list[int]]:
    """``procs`` spinning processes allowed on ``cpus``; killed on exit. Yields their pids."""
    children: list[subprocess.Popen] = []
    try:
        for _ in range(procs):
            children.append(subprocess.Popen([sys.executable, "-c", _SPIN, ",".join(map(str, cpus))],
                                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True))
        for c in children:
            if c.stdout.readline().strip() != "ready":
                raise RuntimeError(f"load process {c.pid} did not start (exit {c.poll()})")
        yield [c.pid for c in children]
    finally:
        for c in children:
            c.kill()
        for c in children:
            c.wait()
            c.stdout.close()


def machine_manifest(spec: ExperimentSpec) -> dict[str, Any]:
    """What a reader of the results needs to know about the machine (kernel, CPUs, memory
    layout, the file system under test)."""
    from ckptlab.profiling.metadata import run_metadata

    def command(*argv: str) -> str | None:
        if shutil.which(argv[0]) is None:
            return None
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None

    meta = {k.removeprefix("ckptlab."): v for k, v in run_metadata(run_id="affinity").items()
            if k not in ("ckptlab.run_id", "ckptlab.created_unix", "ckptlab.config", "ckptlab.affinity_policy")}
    return {
        "spec": asdict(spec), "started_unix": time.time(), "machine": meta,
        "glibc": " ".join(platform.libc_ver()), "lscpu": command("lscpu"), "numactl": command("numactl", "-H"),
        "mount": _mount_of(spec.directory), "irq_affinity_note": "NVMe IRQ placement not probed",
    }


def _mount_of(path: str) -> dict[str, str] | None:
    """The mount (device, mount point, file system, options) holding ``path``."""
    path = os.path.realpath(path)
    best: dict[str, str] | None = None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                dev, mnt, fs, opts = line.split()[:4]
                mnt = mnt.replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and (
                        best is None or len(mnt) > len(best["mount_point"])):
                    best = {"device": dev, "mount_point": mnt, "fs": fs, "options": opts}
    except OSError:
        return None
    return best


def run_cell(spec: ExperimentSpec, cell: Cell, repeat: int, state: dict, trace_path: str) -> dict[str, Any]:
    """One run of ``cell``: a fresh checkpointer, a warm-up save, ``spec.saves`` measured ones."""
    from ckptlab.analysis.affinity import run_metrics
    from ckptlab.core import CheckpointConfig, open_checkpointer
    from ckptlab.profiling import read_trace, start_trace

    cfg = CheckpointConfig(writer_threads=cell.threads, writer_cpus=cell.writer_cpus, chunk_bytes=spec.chunk_mb * MiB,
                           io_mode=spec.io_mode, keep_last=1, trace=True)
    ckpt_dir = tempfile.mkdtemp(prefix=f".affinity-{cell.name}-", dir=spec.directory)
    caller_cpus = os.sched_getaffinity(0)  # this thread's (Linux: pid 0 = the calling thread)
    try:
        os.sched_setaffinity(0, cell.training_cpus)
        with cpu_load(spec.load_procs, cell.training_cpus):
            ck = open_checkpointer("pccheck", ckpt_dir, cfg)
            try:
                with start_trace(trace_path, ck, affinity_policy=f"experiment cell {cell.describe()}",
                                 config={"experiment": "affinity", "cell": cell.name, "repeat": repeat}):
                    for step in range(1, spec.saves + 2):
                        state["step"] = step
                        ck.save(step, state)
                        ck.wait()
            finally:
                ck.close()
    finally:
        os.sched_setaffinity(0, caller_cpus)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return {"cell": cell.name, "threads": cell.threads, "placement": cell.placement,
            "writer_cpus": cpu_list_string(cell.writer_cpus), "training_cpus": cpu_list_string(cell.training_cpus),
            "repeat": repeat, "trace": os.path.relpath(trace_path, spec.out),
            **run_metrics(read_trace(trace_path))}


def _state(size_mb: int, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"weights": torch.rand(size_mb * MiB // 4, generator=g), "step": 0}


def run_experiment(spec: ExperimentSpec, progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Run the matrix (see the module doc), then summarise it (``analysis.affinity``) into
    summary.json and affinity.png; returns the summary."""
    from ckptlab.analysis.affinity import load_experiment, plot_experiment, summarise

    spec.validate()
    cells, skipped = plan(spec)
    if not cells:
        raise ValueError("no cell of the matrix can be placed here: " + "; ".join(s["reason"] for s in skipped))
    runs_path = os.path.join(spec.out, "runs.jsonl")
    if os.path.exists(runs_path):
        raise FileExistsError(f"{spec.out} already holds an experiment ({runs_path}); choose another output "
                              f"directory or remove it")
    os.makedirs(spec.directory, exist_ok=True)
    os.makedirs(os.path.join(spec.out, "traces"), exist_ok=True)
    atomic_write_bytes(os.path.join(spec.out, "manifest.json"),
                       json.dumps(machine_manifest(spec) | {"skipped": skipped}, indent=2).encode())
    order = [(cell, r) for cell in cells for r in range(spec.repeats)]
    random.Random(spec.seed).shuffle(order)
    state = _state(spec.size_mb, spec.seed)
    with open(runs_path, "x") as log:
        for i, (cell, r) in enumerate(order):
            if progress:
                progress(i, len(order), f"{cell.name} #{r + 1}")
            trace = os.path.join(spec.out, "traces", f"{cell.name}-r{r}.arrow")
            log.write(json.dumps(run_cell(spec, cell, r, state, trace)) + "\n")
            log.flush()
        if progress:
            progress(len(order), len(order), "done")
    experiment = load_experiment(spec.out)
    summary = summarise(experiment) | {"figure": None}
    try:
        plot_experiment(experiment, os.path.join(spec.out, "affinity.png"))
        summary["figure"] = "affinity.png"
    except ImportError as e:  # matplotlib / seaborn / pandas are the analysis extra
        summary["figure_missing"] = f"no figure: {e} (pip install 'ckptlab[analysis]')"
    atomic_write_bytes(os.path.join(spec.out, "summary.json"), json.dumps(summary, indent=2).encode())
    return summary
