"""The writer-thread affinity experiment: where should the engine's writer threads run, and
how many should there be? (The statistics: ``ckptlab.analysis.affinity``.)

One *cell* of the matrix is a writer-thread count, a placement and an I/O mode (the engine's
``io_mode``: ``auto``, ``direct`` = O_DIRECT, ``buffered``). The placements of N writers on the
CPUs this process may use (the *allowed* CPUs):

- ``unpinned``: wherever the kernel puts them;
- ``compact``: pinned to the first N allowed CPUs;
- ``spread``: pinned to N allowed CPUs spaced evenly over them (stride = CPUs / N);
- ``disjoint``: pinned to the last N allowed CPUs, with training kept off them (training 0-63,
  checkpointing 64-71 on a Grace node);
- ``numa-local``: the allowed CPUs of the NVMe's NUMA node (the node of the device under
  ``--dir``, from sysfs: ``topology.read_topology``), one writer per physical core before any
  SMT sibling: the first CPU of each core, in CPU order, N of them spaced evenly over the
  cores; past one per core, the cores' second CPUs the same way, and so on;
- ``numa-local-noirq``: ``numa-local`` on the node's CPUs minus every core one of whose CPUs
  receives an interrupt of the NVMe's I/O queues (``proc/irq/N/effective_affinity_list``);
- ``numa-remote`` (the control): ``numa-local``'s rule on the lowest-numbered *other* node
  that has allowed CPUs.

The ``numa-*`` placements keep training on every allowed CPU, as ``compact`` and ``spread`` do.
They degrade rather than guess, with the reason in the cell's ``note``: with the NVMe's node
unknown (no NVMe under ``--dir``, ``numa_node`` -1) and exactly one node with allowed CPUs,
``numa-local`` uses that node (on a 2-core VM: ``compact``); with no NVMe queue interrupts
found, ``numa-local-noirq`` is ``numa-local``; otherwise the cell is unplaceable (skipped,
with the reason), as is ``numa-remote`` without a second node.

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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ckptlab.core.config import available_cpus, check_cpus_available
from ckptlab.profiling.files import atomic_write_bytes
from ckptlab.profiling.metadata import cpu_list_string
from ckptlab.training.experiments.topology import Topology, read_topology

BASIC_PLACEMENTS = ("unpinned", "compact", "spread", "disjoint")
NUMA_PLACEMENTS = ("numa-local", "numa-local-noirq", "numa-remote")
PLACEMENTS = BASIC_PLACEMENTS + NUMA_PLACEMENTS
IO_MODES = ("auto", "direct", "buffered")
MiB = 1 << 20


class Unplaceable(ValueError):
    """A cell that cannot be placed on the CPUs this process may use."""


@dataclass(frozen=True)
class Cell:
    threads: int
    placement: str
    writer_cpus: tuple[int, ...]  # () = unpinned
    training_cpus: tuple[int, ...]  # the saving thread, the commit thread and the load processes
    io_mode: str = "auto"
    note: str = ""                # how a numa-* placement degraded here, "" when it did not

    @property
    def name(self) -> str:
        """``PLACEMENT-tN``, with ``-direct`` / ``-buffered`` for those I/O modes (``auto``
        keeps the name cells had before I/O mode was an axis)."""
        return f"{self.placement}-t{self.threads}" + ("" if self.io_mode == "auto" else f"-{self.io_mode}")

    def describe(self) -> str:
        writers = f"writers on {cpu_list_string(self.writer_cpus)}" if self.writer_cpus else "writers unpinned"
        io = "" if self.io_mode == "auto" else f", io {self.io_mode}"
        note = f" ({self.note})" if self.note else ""
        return f"{self.placement}: {writers}, training on {cpu_list_string(self.training_cpus)}{io}{note}"


def one_per_core(cpus: Sequence[int], topology: Topology) -> list[list[int]]:
    """``cpus`` in levels: level 0 holds the first of them on each physical core (in CPU
    order), level 1 the second, and so on (SMT siblings come after every core has one)."""
    allowed = set(cpus)
    levels: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    for c in sorted(allowed):
        core = tuple(sorted(set(topology.siblings(c)) | {c}))
        if core in seen:
            continue
        seen.add(core)
        for level, cpu in enumerate(x for x in core if x in allowed):
            if level == len(levels):
                levels.append([])
            levels[level].append(cpu)
    return levels


def spread_over_cores(threads: int, cpus: Sequence[int], topology: Topology) -> tuple[int, ...]:
    """``threads`` of ``cpus``: whole levels of ``one_per_core`` while they fit, then the
    rest spaced evenly over the next level."""
    picked: list[int] = []
    for level in one_per_core(cpus, topology):
        need = threads - len(picked)
        if need <= 0:
            break
        if need >= len(level):
            picked += level
        else:
            picked += [level[(i * len(level)) // need] for i in range(need)]
    return tuple(sorted(picked))


def _numa_cpus(placement: str, allowed: Sequence[int], topology: Topology) -> tuple[list[int], str]:
    """The CPUs a numa-* placement chooses from, and the note when it degraded."""
    allowed_set = set(allowed)
    nodes = {n: [c for c in cpus if c in allowed_set] for n, cpus in topology.nodes.items()}
    with_cpus = [n for n, cpus in sorted(nodes.items()) if cpus]
    storage = topology.storage
    node = None if storage is None else storage.numa_node
    why = ("no directory was probed" if storage is None else
           "; ".join(storage.notes) or f"{storage.device}: NUMA node unknown")
    note = ""
    if node is None:
        if len(with_cpus) != 1:
            raise Unplaceable(f"{placement}: the NVMe's NUMA node is unknown ({why}) and "
                              f"{len(with_cpus)} NUMA nodes have allowed CPUs")
        if placement == "numa-remote":
            raise Unplaceable(f"numa-remote: one NUMA node has allowed CPUs (node {with_cpus[0]}); "
                              f"there is no remote node")
        node = with_cpus[0]
        note = f"NVMe NUMA node unknown ({why}); node {node} is the only one with allowed CPUs"
    if placement == "numa-remote":
        others = [n for n in with_cpus if n != node]
        if not others:
            empty = [n for n in sorted(nodes) if not nodes[n] and n != node]
            raise Unplaceable(f"numa-remote: no NUMA node other than the NVMe's node {node} has allowed CPUs"
                              + (f" (node(s) {cpu_list_string(empty)} have none)" if empty else ""))
        return nodes[others[0]], note
    cpus = nodes.get(node, [])
    if not cpus:
        raise Unplaceable(f"{placement}: the NVMe's NUMA node {node} has no allowed CPUs")
    if placement == "numa-local-noirq":
        irq = set(storage.irq_cpus) if storage is not None else set()
        if not irq:
            irq_why = "no directory was probed" if storage is None else (
                "; ".join(n for n in storage.notes if "interrupt" in n) or "none found")
            note = "; ".join(filter(None, [note, f"no NVMe queue interrupt CPUs known ({irq_why}), so "
                                                  f"numa-local-noirq = numa-local"]))
        busy = {s for c in irq for s in topology.siblings(c)} | irq
        left = [c for c in cpus if c not in busy]
        if not left:
            raise Unplaceable(f"numa-local-noirq: every allowed CPU of node {node} shares a core with a CPU that "
                              f"receives NVMe queue interrupts ({cpu_list_string(irq)})")
        cpus = left
    return cpus, note


def place(placement: str, threads: int, allowed: Sequence[int], topology: Topology | None = None,
          io_mode: str = "auto") -> Cell:
    """The cell for ``threads`` writers placed by ``placement`` on the CPUs ``allowed``
    (``topology``: for the numa-* placements; default this machine's, without storage)."""
    cpus = sorted(set(allowed))
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r} (known: {', '.join(PLACEMENTS)})")
    if threads < 1:
        raise ValueError(f"writer threads must be >= 1, got {threads}")
    if placement in NUMA_PLACEMENTS:
        topo = topology if topology is not None else read_topology("/")
        candidates, note = _numa_cpus(placement, cpus, topo)
        if threads > len(candidates):
            raise Unplaceable(f"{placement} with {threads} writers needs {threads} CPUs (it may use "
                              f"{len(candidates)}: {cpu_list_string(candidates)})")
        return Cell(threads, placement, spread_over_cores(threads, candidates, topo), tuple(cpus), io_mode, note)
    return replace(_basic_place(placement, threads, cpus), io_mode=io_mode)


def _basic_place(placement: str, threads: int, cpus: list[int]) -> Cell:
    m = len(cpus)
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
    placements: tuple[str, ...] = BASIC_PLACEMENTS   # the numa-* ones are asked for by name
    repeats: int = 5
    saves: int = 3                 # measured checkpoints per run, after one warm-up
    size_mb: int = 256
    chunk_mb: int = 16
    load_procs: int = 0
    io_modes: tuple[str, ...] = ("auto",)
    seed: int = 0
    cpus: tuple[int, ...] = field(default_factory=lambda: tuple(sorted(available_cpus())))
    topology_root: str = "/"       # where sysfs and procfs are read (a recorded tree in tests)

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
        bad = [m for m in self.io_modes if m not in IO_MODES]
        if bad or not self.io_modes or len(set(self.io_modes)) < len(self.io_modes):
            raise ValueError(f"io-modes must be distinct values of {', '.join(IO_MODES)}, got {list(self.io_modes)}")
        if not self.cpus:
            raise ValueError("cpus: no CPUs given")
        check_cpus_available(self.cpus, "cpus")


def spec_topology(spec: ExperimentSpec) -> Topology:
    """The topology the spec's placements use: nodes, cores and the storage under ``directory``."""
    return read_topology(spec.topology_root, spec.directory)


def plan(spec: ExperimentSpec, topology: Topology | None = None) -> tuple[list[Cell], list[dict[str, Any]]]:
    """The cells to run, and those skipped with the reason (e.g. disjoint with every CPU)."""
    topo = topology if topology is not None else spec_topology(spec)
    cells, skipped = [], []
    for t in spec.threads:
        for p in spec.placements:
            for io in spec.io_modes:
                try:
                    cells.append(place(p, t, spec.cpus, topo, io))
                except Unplaceable as e:
                    skipped.append({"cell": Cell(t, p, (), (), io).name, "reason": str(e)})
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


def machine_manifest(spec: ExperimentSpec, topology: Topology | None = None) -> dict[str, Any]:
    """What a reader of the results needs to know about the machine (kernel, CPUs, memory
    layout, the file system under test, the topology the placements read)."""
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
        "mount": _mount_of(spec.directory),
        "topology": (topology if topology is not None else spec_topology(spec)).to_dict(),
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
                           io_mode=cell.io_mode, keep_last=1, trace=True)
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
                io_mode_used = ck.stats().get("io_mode")  # what auto resolved to
            finally:
                ck.close()
    finally:
        os.sched_setaffinity(0, caller_cpus)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return {"cell": cell.name, "threads": cell.threads, "placement": cell.placement, "io_mode": cell.io_mode,
            "writer_cpus": cpu_list_string(cell.writer_cpus), "training_cpus": cpu_list_string(cell.training_cpus),
            "io_mode_used": io_mode_used, "placement_note": cell.note, "repeat": repeat, "trace": os.path.relpath(trace_path, spec.out),
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
    topology = spec_topology(spec)
    cells, skipped = plan(spec, topology)
    if not cells:
        raise ValueError("no cell of the matrix can be placed here: " + "; ".join(s["reason"] for s in skipped))
    runs_path = os.path.join(spec.out, "runs.jsonl")
    if os.path.exists(runs_path):
        raise FileExistsError(f"{spec.out} already holds an experiment ({runs_path}); choose another output "
                              f"directory or remove it")
    os.makedirs(spec.directory, exist_ok=True)
    os.makedirs(os.path.join(spec.out, "traces"), exist_ok=True)
    atomic_write_bytes(os.path.join(spec.out, "manifest.json"),
                       json.dumps(machine_manifest(spec, topology) | {"skipped": skipped,
                       "notes": {c.name: c.note for c in cells if c.note}}, indent=2).encode())
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
