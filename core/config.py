"""Checkpointer configuration: one validated dataclass shared by every checkpointer kind."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ckptlab.core.fault_spec import FAULTS_ENV, IO_LOG_DATA_ENV, IO_LOG_ENV

if TYPE_CHECKING:
    from ckptlab.core.storage_probe import StorageProfile

MiB = 1 << 20
GiB = 1 << 30


def _default_staging_cap() -> int:
    """Automatic staging holds one whole checkpoint, up to 16 GiB or a quarter of the machine's
    memory: a 12.85 GB seed-2048 checkpoint is staged whole on a 128 GiB GPU node (so a
    deferred snapshot's barrier never waits for the disk), while a 24 GiB machine keeps 6 GiB."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 4 * GiB
    return max(256 * MiB, min(16 * GiB, ram // 4) // (64 << 10) * (64 << 10))


DEFAULT_MAX_AUTO_STAGING_BYTES = _default_staging_cap()
# Two batches of 128 MiB: eight 16 MiB chunks per batch keep 4 reader threads busy, and a
# batch copies to the GPU (~2.5 ms at 50 GB/s) far faster than it is read from an NVMe
# (~20 ms at 7 GB/s), so more pinned memory would buy no more overlap (docs/API.md "Loading").
DEFAULT_LOAD_BUFFER_BYTES = 256 * MiB

IO_MODES = ("auto", "direct", "buffered")
SNAPSHOT_MODES = ("sync", "deferred", "gpu", "auto")  # core/snapshot.py
CHUNK_ASSIGNMENTS = ("queue", "static")  # csrc/engine.hpp, EngineOptions::chunk_assignment


@dataclass(frozen=True)
class CheckpointConfig:
    """How checkpoints are taken, persisted, retained and loaded.

    max_inflight: checkpoints persisting at once (PCcheck's N); a save beyond waits.
    writer_threads: engine threads that checksum, write and fsync chunks.
    chunk_bytes: unit of staging, writing and checksumming (multiple of 64 KiB).
    staging_bytes: host staging memory, allocated once and reused. None sizes it at the first
        save to hold one whole checkpoint (capped by max_auto_staging_bytes), which keeps
        the stall to one memcpy; smaller values make save() wait for writers (back-pressure).
    prefault_staging: touch the staging pages on a background thread from the engine's
        opening (a free buffer at a time). Off by default: buffers are reused last-in
        first-out, so without it the saves fault in only the buffers in flight at once (less
        resident memory). In same-run A/Bs on 2 cores it cost more training time than it
        saved in two runs of three; the third was within the noise (docs/PERFORMANCE.md,
        "Staging prefault"). A buffer a save reaches before the thread does is faulted by its
        own fill.
    keep_last: committed checkpoints to keep (0 keeps all); never deletes the newest.
    io_mode: "auto" uses O_DIRECT where the filesystem accepts it, else buffered I/O.
    shards: data files per checkpoint (0 = writer_threads).
    reader_threads: parallel reads when loading.
    load_buffer_bytes: a load reads chunks in batches of at most half of this; onto a CUDA
        device through two pinned host buffers of that size (pinned memory <= this, or twice
        the largest chunk if that is more), each batch's host-to-device copy overlapping the
        next batch's read (docs/API.md "Loading").
    faults: fault spec (docs/FAULTS.md); the CKPTLAB_FAULTS environment variable is appended.
        Honoured by the engine (pccheck) and by the Python writers (core/writer_io.py:
        torchsave at every point, dcp at the commit protocol's).
    trace: keep per-thread timing records (drain with Checkpointer.drain_trace()).
    allow_pickle: extra "module.QualName" types allowed in pickled leaves on load.
    pinned_host_copies: page-locked device-to-host copies: pccheck copies CUDA tensors
        straight into its staging pool, registered with CUDA (no host memory beyond staging);
        torchsave into page-locked buffers kept across saves. False: pageable copies.
    snapshot: when save() may return (pccheck; docs/API.md "Snapshot modes"). "sync": after
        every tensor is on the host. "deferred": once the copies are enqueued (D2H on a side
        stream; the state may change only after checkpointer.barrier(), which
        checkpointer.guard(optimizer) runs before each optimizer.step()). "gpu": after a
        device-to-device copy into a GPU snapshot buffer (GPU memory equal to the state).
        "auto": "gpu" when the free GPU memory holds the snapshot buffer with room to spare,
        else "deferred" (decided at the first save; core/snapshot.py choose_mode).
    io_log: record the writer's file-system operations (the engine's, or torchsave's and dcp's
        through core/writer_io.py, same format) to this file for crash-state replay
        (docs/FAULTS.md); the CKPTLAB_IO_LOG environment variable sets it for child processes.
    writer_cpus: CPUs the engine's writer threads may run on, e.g. "6-7" or (6, 7): cores kept
        free of training threads and NVMe interrupts. Empty: wherever the kernel puts them.
        CPUs this process may not use are refused when the engine starts.
    coordination_timeout_s: multi-rank checkpoints (docs/DISTRIBUTED.md): how long a rank's
        coordinator waits for its own part to be durable and for the other ranks to arrive
        before the step fails with a CheckpointError (never a hang). Off the training thread.
    chunk_assignment: which writer thread writes which chunk (pccheck). "queue": the next free
        writer takes the next staged chunk (a slow writer simply takes fewer). "static": chunk
        i goes to writer i mod writer_threads, each writer its fixed share as in PCcheck's own
        artifact; an experiment axis, and what makes a slowed writer's effect on the makespan
        deterministic.
    """

    max_inflight: int = 2
    writer_threads: int = 4
    chunk_bytes: int = 16 * MiB
    staging_bytes: int | None = None
    max_auto_staging_bytes: int = DEFAULT_MAX_AUTO_STAGING_BYTES
    keep_last: int = 2
    io_mode: str = "auto"
    shards: int = 0
    reader_threads: int = 4
    load_buffer_bytes: int = DEFAULT_LOAD_BUFFER_BYTES
    faults: str = ""
    trace: bool = False
    trace_capacity: int = 1 << 16
    prefault_staging: bool = False
    allow_pickle: tuple[str, ...] = ()
    io_log: str = ""
    pinned_host_copies: bool = True
    snapshot: str = "sync"
    writer_cpus: tuple[int, ...] | str = ()
    coordination_timeout_s: float = 600.0
    chunk_assignment: str = "queue"

    def __post_init__(self) -> None:
        def positive(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"CheckpointConfig.{name} must be an integer >= {minimum}, got {value!r}")

        for name in ("max_inflight", "writer_threads", "reader_threads", "trace_capacity"):
            positive(name)
        positive("keep_last", 0)
        positive("shards", 0)
        positive("chunk_bytes", 64 * 1024)
        positive("load_buffer_bytes", 128 * 1024)
        if self.chunk_bytes % (64 * 1024):
            raise ValueError(f"CheckpointConfig.chunk_bytes must be a multiple of 65536 (64 KiB), got {self.chunk_bytes}")
        if self.staging_bytes is not None:
            positive("staging_bytes", self.chunk_bytes)
        positive("max_auto_staging_bytes", self.chunk_bytes)
        if self.io_mode not in IO_MODES:
            raise ValueError(f"CheckpointConfig.io_mode must be one of {IO_MODES}, got {self.io_mode!r}")
        if self.snapshot not in SNAPSHOT_MODES:
            raise ValueError(f"CheckpointConfig.snapshot must be one of {SNAPSHOT_MODES}, got {self.snapshot!r}")
        if self.snapshot != "sync" and not self.pinned_host_copies:
            raise ValueError(f"CheckpointConfig.snapshot={self.snapshot!r} copies to pinned host buffers; "
                             f"it needs pinned_host_copies=True")
        t = self.coordination_timeout_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"CheckpointConfig.coordination_timeout_s must be a number of seconds > 0, got {t!r}")
        if self.chunk_assignment not in CHUNK_ASSIGNMENTS:
            raise ValueError(f"CheckpointConfig.chunk_assignment must be one of {CHUNK_ASSIGNMENTS}, "
                             f"got {self.chunk_assignment!r}")
        if not isinstance(self.faults, str):
            raise ValueError("CheckpointConfig.faults must be a fault spec string")
        object.__setattr__(self, "writer_cpus", parse_cpu_list(self.writer_cpus, "CheckpointConfig.writer_cpus"))
        object.__setattr__(self, "allow_pickle", tuple(self.allow_pickle))

    def effective_faults(self) -> str:
        """The configured spec plus the one inherited through CKPTLAB_FAULTS (child processes)."""
        parts = [p for p in (self.faults, os.environ.get(FAULTS_ENV, "")) if p.strip()]
        return ";".join(parts)

    def effective_io_log(self) -> tuple[str, bool]:
        """(path, record written bytes) of the I/O log: io_log, else CKPTLAB_IO_LOG."""
        path = self.io_log or os.environ.get(IO_LOG_ENV, "")
        return path, os.environ.get(IO_LOG_DATA_ENV, "1") != "0"

    def engine_options(self) -> dict[str, object]:
        """The ``ckptlab._engine.Engine`` keyword arguments this config sets (pccheck adds the
        staging size, the effective fault spec and whether records are kept, which are known
        only when the engine opens). A new engine knob is a field here plus its line below."""
        io_log, io_log_data = self.effective_io_log()
        return dict(writer_threads=self.writer_threads, max_inflight=self.max_inflight, shards=self.shards,
                    chunk_bytes=self.chunk_bytes, keep_last=self.keep_last, io_mode=self.io_mode,
                    trace_capacity=self.trace_capacity, prefault=self.prefault_staging, io_log=io_log,
                    io_log_data=io_log_data, writer_cpus=list(self.writer_cpus),
                    chunk_assignment=self.chunk_assignment)

    def replace(self, **changes) -> "CheckpointConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def auto(cls, directory: str | os.PathLike, state_bytes: int, iteration_s: float, budget: float = 0.01,
             probe: "str | os.PathLike | StorageProfile | None" = None, *, staging_budget_bytes: int | None = None,
             probe_bytes: int = 256 * MiB, probe_threads: tuple[int, ...] = (1, 2, 4, 8), probe_repeats: int = 1,
             **overrides) -> "CheckpointConfig":
        """The config core/tuning.py recommends for ``directory`` (docs/API.md, "Tuned
        configuration"): writer_threads, io_mode, chunk_bytes, max_inflight and staging_bytes.

        probe: None measures ``directory`` now (core/storage_probe.py, up to ``probe_bytes`` per
        write, ``probe_repeats`` interleaved rounds whose medians count; it creates the
        directory); a path reads a saved ``ckptlab tune --save`` JSON instead (no probing); a StorageProfile is used as it is. ``overrides`` are other
        fields (or replace recommended ones), validated like any config. The recommended
        checkpoint interval is core.tuning.recommend(...).interval_steps."""
        from ckptlab.core.storage_probe import MIN_PROBE_BYTES, StorageProfile, probe_storage
        from ckptlab.core.tuning import TuningInputs, read_profile, recommend

        inputs = TuningInputs(state_bytes=state_bytes, iteration_s=iteration_s, budget=budget,
                              staging_budget_bytes=staging_budget_bytes)
        if isinstance(probe, StorageProfile):
            profile = probe
        elif probe is not None:
            profile = read_profile(probe)
        else:
            os.makedirs(directory, exist_ok=True)
            nbytes = max(MIN_PROBE_BYTES, min(probe_bytes, state_bytes)) // MIN_PROBE_BYTES * MIN_PROBE_BYTES
            profile = probe_storage(directory, nbytes, threads=probe_threads, repeats=probe_repeats)
        return cls(**(recommend(inputs, profile).config_fields() | overrides))


def parse_cpu_list(value: str | tuple[int, ...] | list[int], what: str = "CPU list") -> tuple[int, ...]:
    """"0-3,6" or (0, 1, 2, 3, 6) -> (0, 1, 2, 3, 6), sorted, without repeats (the form of
    taskset -c and /proc's Cpus_allowed_list)."""
    cpus: list[int] = []
    if isinstance(value, str):
        for part in filter(None, (p.strip() for p in value.split(","))):
            lo, sep, hi = part.partition("-")
            try:
                a, b = int(lo), int(hi) if sep else int(lo)
            except ValueError:
                raise ValueError(f"{what}: {part!r} is not a CPU or a range like 2-5") from None
            if a > b:
                raise ValueError(f"{what}: range {part!r} runs backwards")
            cpus += range(a, b + 1)
    else:
        for c in value:
            if not isinstance(c, int) or isinstance(c, bool):
                raise ValueError(f"{what}: {c!r} is not a CPU number")
            cpus.append(c)
    if any(c < 0 for c in cpus):
        raise ValueError(f"{what}: CPU numbers are >= 0, got {min(cpus)}")
    return tuple(sorted(set(cpus)))


def check_cpus_available(cpus: tuple[int, ...], what: str) -> None:
    """Raise ValueError naming the CPUs of ``cpus`` no thread of this process may use (its
    cpuset: a Slurm or container allocation). The calling thread's own affinity does not limit
    them: a training thread pinned to cores 0-63 may put the writers on 64-71."""
    from ckptlab.profiling.metadata import cpu_list_string

    refused = set(cpus) - (allowed := available_cpus())
    if refused:
        raise ValueError(f"{what}: CPU {cpu_list_string(refused)} not available to this process "
                         f"(it may use {cpu_list_string(allowed)})")


def available_cpus() -> set[int]:
    """CPUs a thread of this process may be pinned to (the engine probes the kernel; without
    the engine, the calling thread's affinity)."""
    try:
        from ckptlab._engine import allowed_cpus
    except ImportError:  # pragma: no cover - engine not built
        return set(os.sched_getaffinity(0))
    return set(allowed_cpus())