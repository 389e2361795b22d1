# Type stub of ckptlab._engine, the pybind11 module built from csrc/bindings.cpp.
#
# Installed beside the extension module with the PEP 561 marker py.typed (CMakeLists.txt:
# install(FILES ... DESTINATION ckptlab)), so both land in <site-packages>/ckptlab/ in a wheel
# and in the redirect-mode editable install alike: there CMake's installed files go to
# site-packages and only the Python sources are redirected to the work tree by an import hook.
# A type checker run with the environment's Python (mypy --python-executable .venv/bin/python,
# or mypy installed in .venv) finds ckptlab/_engine.pyi there; without py.typed mypy would skip
# the installed package. (The hook-redirected Python parts are invisible to mypy in an
# editable install; it checks those from the work tree.)
#
# csrc/_engine.pyi is the source of truth; tests/csrc/test_engine_stub.py fails when it and the
# module drift (names, parameter names and defaults, TypedDict keys, the types of the values
# real calls return) or when the installed copy is stale.
#
# The TypedDicts are type-only (@type_check_only): the module returns plain dicts with exactly
# these keys, in this order. Import them for annotations only, under `if TYPE_CHECKING:`.
from collections.abc import Sequence
from typing import Literal, TypedDict, type_check_only

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

FORMAT_VERSION: int
MANIFEST_NAME: str

@type_check_only
class TraceColumns(TypedDict):
    """Timing records as numpy columns, one array per column, in trace_columns() order."""

    ckpt_id: npt.NDArray[np.uint64]
    step: npt.NDArray[np.int64]
    thread: npt.NDArray[np.int32]
    cpu_begin: npt.NDArray[np.int32]
    cpu_end: npt.NDArray[np.int32]
    phase: npt.NDArray[np.int16]
    chunk: npt.NDArray[np.int64]
    offset: npt.NDArray[np.uint64]
    nbytes: npt.NDArray[np.uint64]
    t_begin_ns: npt.NDArray[np.uint64]
    t_end_ns: npt.NDArray[np.uint64]
    run_ns: npt.NDArray[np.int64]
    wait_ns: npt.NDArray[np.int64]
    ctx_vol: npt.NDArray[np.int32]
    ctx_invol: npt.NDArray[np.int32]

@type_check_only
class CheckpointFailure(TypedDict):
    """Engine.take_failure(): the oldest failed checkpoint not yet reported."""

    ckpt_id: int
    step: int
    op: str
    path: str
    errno: int  # 0 for failures that are not an OS error
    message: str

@type_check_only
class CommitRecord(TypedDict):
    """Engine.commit_records(): one per checkpoint that was committed or failed."""

    ckpt_id: int
    step: int
    total_bytes: int
    t_submit_ns: int
    t_staged_ns: int
    t_done_ns: int
    ok: bool
    path: str

@type_check_only
class ReadFailure(TypedDict):
    """A chunk read_verified() refused; its pieces were not copied out."""

    chunk: int
    path: str
    offset: int
    kind: Literal["truncated", "checksum", "io"]
    detail: str

@type_check_only
class ReadResult(TypedDict):
    """read_verified()."""

    failures: list[ReadFailure]
    bytes_read: int
    records: TraceColumns
    thread_names: list[tuple[int, str]]

# (path, file_offset, nbytes, crc32c, chunk, [(chunk_offset, dst_ptr, nbytes), ...])
_ReadTask = tuple[str, int, int, int, int, Sequence[tuple[int, int, int]]]

def crc32c(data: Buffer, crc: int = 0) -> int:
    """CRC32C of a contiguous buffer, continuing from `crc`."""

def crc32c_ptr(ptr: int, nbytes: int, crc: int = 0) -> int: ...
def crc32c_implementation() -> Literal["sse4.2", "armv8-crc", "table"]: ...
def fault_points() -> list[str]: ...
def coordinator_fault_points() -> list[str]:
    """The multi-rank coordinator's fault points (core/distributed.py), in protocol order."""

def io_op_names() -> list[str]:
    """Operation names used in I/O logs (Engine(io_log=PATH)), see faults/iolog.py."""

def validate_fault_spec(spec: str) -> None:
    """Raises ValueError naming the bad token if the spec does not parse."""

def phase_names() -> list[str]: ...
def trace_columns() -> list[tuple[str, str]]:
    """(name, numpy dtype) of each timing-record column, in trace-file order (drain_trace() keys)."""

def durability_mutations() -> tuple[str, ...]:
    """Names Engine(unsafe=[...]) accepts: each removes one step of the commit protocol."""

def probe_direct_io(dir: str) -> tuple[bool, str]:
    """(supported, reason): whether O_DIRECT writes work in `dir`; reason is empty when they do."""

def monotonic_ns() -> int: ...
def current_cpu() -> int:
    """sched_getcpu() of the calling thread (timing records' cpu columns)."""

def allowed_cpus() -> list[int]:
    """CPUs a thread of this process may be pinned to (its cpuset, probed), ascending."""

def current_tid() -> int:
    """gettid() of the calling thread (timing records' thread column)."""

def trace_overhead_ns(iterations: int = 100000, records: bool = True) -> float: ...
def read_verified(
    tasks: Sequence[_ReadTask], threads: int = 4, trace: bool = False, ckpt_id: int = 0, step: int = -1
) -> ReadResult:
    """Reads the tasks in parallel, verifying each chunk before copying its pieces out."""

class IoLog:
    """Append-only I/O log in the engine's format (faults/iolog.py reads it); for the Python
    writers (core/writer_io.py)."""

    def __init__(self, path: str, record_data: bool = True) -> None:
        """Append-only I/O log at `path` (created if missing), as Engine(io_log=...) writes it."""

    def op(self, op: str, path: str, err: int = 0) -> None:
        """One operation on one path: mkdir, create, open_create, fsync, fdatasync, fsync_dir, unlink, rmdir
        (names from io_op_names(); ValueError for another)."""

    def write(self, path: str, offset: int, data: Buffer, err: int = 0) -> None:
        """A write of `data` at `offset` that returned (err 0), or failed (err != 0, data empty)."""

    def fallocate(self, path: str, offset: int, nbytes: int, err: int = 0) -> None: ...
    def rename(self, src: str, dst: str, err: int = 0) -> None: ...
    def mark(self, kind: str, detail: str) -> None:
        """A marker (start, submit, ack, fail, close, ...) with its detail."""

    @property
    def path(self) -> str: ...
    @property
    def records(self) -> int: ...

class FaultInjector:
    """The engine's fault points for the Python writers: the same spec parser and markers."""

    def __init__(self, spec: str) -> None:
        """Arms `spec` (ValueError naming a bad token)."""

    def hit(self, point: str, ckpt: int, step: int, log: IoLog | None = None) -> tuple[int, bool]:
        """Passes `point` of checkpoint `ckpt` (1-based) at `step`; kills or sleeps as armed, else
        returns (errno, short_write): a non-zero errno fails the next operation."""

    @property
    def armed(self) -> bool: ...
    @property
    def spec(self) -> str: ...

class Engine:
    def __init__(
        self,
        dir: str,
        writer_threads: int = 4,
        max_inflight: int = 2,
        shards: int = 0,
        chunk_bytes: int = 16777216,
        staging_bytes: int = 268435456,
        keep_last: int = 2,
        io_mode: Literal["auto", "direct", "buffered"] = "auto",
        faults: str = "",
        trace: bool = False,
        trace_capacity: int = 65536,
        prefault: bool = False,
        unsafe: Sequence[str] = (),
        io_log: str = "",
        io_log_data: bool = True,
        writer_cpus: Sequence[int] = (),
        chunk_assignment: Literal["queue", "static"] = "queue",
    ) -> None: ...
    def submit(self, step: int, meta_json: str, segments: Sequence[tuple[int, int, int]], total_bytes: int) -> int:
        """Copy (ptr, nbytes, stream_offset) segments into staging and queue the checkpoint. Returns its id."""

    def open_stream(self, step: int, meta_json: str, total_bytes: int) -> int:
        """Admit a checkpoint the caller fills chunk by chunk (acquire_chunk, queue_chunk), then
        seal() or abort(); blocks while max_inflight are in flight. Returns its id."""
    def acquire_chunk(self, id: int) -> tuple[int, int, int, int]:
        """The stream's next chunk as (chunk, address, stream_offset, nbytes); blocks while staging is full."""
    def queue_chunk(self, id: int, chunk: int) -> None:
        """Hand a filled chunk to the writer threads."""
    def seal(self, id: int) -> None:
        """Every chunk is queued and the copy is judged: commit once durable."""
    def abort(self, id: int, reason: str) -> None:
        """Fail the stream's checkpoint; nothing of it is committed."""
    def wait(self, timeout: float | None = None) -> bool:
        """True once every submitted checkpoint is committed or failed; False if `timeout` s passed first."""

    def take_failure(self) -> CheckpointFailure | None: ...
    def close(self) -> None: ...
    @property
    def last_committed_step(self) -> int: ...
    @property
    def inflight(self) -> int: ...
    @property
    def io_mode(self) -> Literal["direct", "buffered"]: ...
    @property
    def direct_io_note(self) -> str: ...
    @property
    def writer_cpus(self) -> list[int]: ...
    @property
    def chunk_assignment(self) -> Literal["queue", "static"]: ...
    @property
    def pin_failures(self) -> int: ...
    @property
    def staging_region(self) -> tuple[int, int]:
        """(base address, total bytes) of the staging pool."""

    @property
    def staging_free_buffers(self) -> int: ...
    @property
    def staging_buffers(self) -> int: ...
    @property
    def staging_touched_bytes(self) -> int:
        """Bytes of the staging buffers written at least once (by the prefault or a save)."""
    def commit_records(self) -> list[CommitRecord]: ...
    def drain_trace(self) -> TraceColumns:
        """Timing records since the last drain, as numpy columns."""

    @property
    def trace_dropped(self) -> int: ...
    def thread_names(self) -> list[tuple[int, str]]: ...
