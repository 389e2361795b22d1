"""Python-side phases: one NVTX range and, while a trace session is recording, one timing record.

``phase`` is what the training loop and the checkpointer's Python stages wrap their work in:

    from ckptlab.profiling import phase

    with phase("forward", step=k):
        loss = model(x, y)

It pushes an NVTX range in domain "ckptlab" (a no-op unless a tool collects NVTX) and, when a
``TraceSession`` is active in this process, appends a record with the same columns as the
engine's (thread = gettid, cpu at begin/end, CLOCK_MONOTONIC ns), so Python phases and engine
operations share one timeline. With neither, it costs a few attribute checks.

This module imports nothing heavy (no numpy, pyarrow or torch), so ``ckptlab.core`` can use it;
a record's fields are ``schema.Record``'s, by name.
"""
from __future__ import annotations

import functools
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

from ckptlab.profiling.nvtx_ranges import ENGINE_PHASES, PYTHON_PHASES, pop, push
from ckptlab.profiling.schema import UNMEASURED, Record
from ckptlab.profiling.sources import active_sinks
from ckptlab.profiling.sources import add_engine_records as add_engine_records  # re-exported for core
from ckptlab.profiling.sources import recording as recording  # re-exported for core

try:
    from ckptlab._engine import current_cpu as _current_cpu
except ImportError:  # pragma: no cover - engine not built
    def _current_cpu() -> int:
        return -1

_native_id = threading.get_native_id
_monotonic_ns = time.monotonic_ns  # CLOCK_MONOTONIC on Linux, the engine's clock
_UNMEASURED = (UNMEASURED,) * 4  # run_ns, wait_ns, ctx_vol, ctx_invol


class _SchedFile:
    """This thread's schedstat file, opened once and closed with the thread's local data."""

    __slots__ = ("fd",)

    def __init__(self) -> None:
        try:
            self.fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = -1

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


_thread_local = threading.local()


def sched_sample() -> tuple[int, int, int, int]:
    """(on-CPU ns, run-queue wait ns, voluntary, involuntary context switches) of the calling
    thread so far; -1 for what the kernel does not expose. Columns run_ns..ctx_invol of a record
    are differences of two samples."""
    f = getattr(_thread_local, "schedstat", None)
    if f is None:
        f = _thread_local.schedstat = _SchedFile()
    run = time.thread_time_ns()  # precise; schedstat's run field lags by up to a tick
    wait = -1
    if f.fd >= 0:
        try:
            wait = int(os.pread(f.fd, 96, 0).split()[1])
        except (OSError, ValueError, IndexError):
            pass
    ru = resource.getrusage(resource.RUSAGE_THREAD)
    return run, wait, ru.ru_nvcsw, ru.ru_nivcsw


def sched_delta(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(-1 if x < 0 or y < 0 else y - x for x, y in zip(a, b, strict=True))

# Phase name -> code (the Arrow `phase` dictionary index). Engine codes come first, in the
# engine's order; Python names follow; new names are appended on first use.
_phase_lock = threading.Lock()
PHASES: list[str] = list(ENGINE_PHASES + PYTHON_PHASES)
_PHASE_CODES: dict[str, int] = {n: i for i, n in enumerate(PHASES)}


def phase_code(name: str) -> int:
    code = _PHASE_CODES.get(name)
    if code is None:
        with _phase_lock:
            code = _PHASE_CODES.get(name)
            if code is None:
                code = _PHASE_CODES[name] = len(PHASES)
                PHASES.append(name)
    return code


def record(name: str, t_begin_ns: int, t_end_ns: int, *, step: int = -1, ckpt_id: int = 0, chunk: int = -1,
           offset: int = 0, nbytes: int = 0, cpu_begin: int = -1, cpu_end: int = -1,
           thread: int | None = None) -> None:
    """Add one already-timed record (e.g. a D2H copy timed with CUDA events converted to
    CLOCK_MONOTONIC ns) to every active session. No NVTX range is emitted."""
    sinks = active_sinks()
    if not sinks:
        return
    rec = Record(phase=phase_code(name), ckpt_id=ckpt_id, step=step, chunk=chunk, offset=offset, nbytes=nbytes,
                 t_begin_ns=t_begin_ns, t_end_ns=t_end_ns, thread=_native_id() if thread is None else thread,
                 cpu_begin=cpu_begin, cpu_end=cpu_end, run_ns=UNMEASURED, wait_ns=UNMEASURED, ctx_vol=UNMEASURED,
                 ctx_invol=UNMEASURED)
    tname = threading.current_thread().name
    for s in sinks:
        s.add_python_record(rec, tname)


class phase:  # noqa: N801 - used like a function (context manager / decorator)
    """NVTX range + timing record for a Python-side phase (see module doc).

    ``payload`` (shown by nsys) defaults to ``nbytes`` when given, else ``step``.
    """

    __slots__ = ("name", "step", "ckpt_id", "chunk", "offset", "nbytes", "payload", "category",
                 "_pushed", "_t0", "_cpu0", "_sched0")

    def __init__(self, name: str, *, step: int = -1, ckpt_id: int = 0, chunk: int = -1, offset: int = 0,
                 nbytes: int = 0, payload: int | float | None = None, category: str | None = None) -> None:
        self.name = name
        self.step = step
        self.ckpt_id = ckpt_id
        self.chunk = chunk
        self.offset = offset
        self.nbytes = nbytes
        self.payload = payload
        self.category = category
        self._pushed = False
        self._t0 = 0
        self._cpu0 = -1
        self._sched0 = _UNMEASURED

    def _payload(self) -> int | float | None:
        if self.payload is not None:
            return self.payload
        if self.nbytes:
            return self.nbytes
        return self.step if self.step >= 0 else None

    def __enter__(self) -> "phase":
        self._pushed = push(self.name, self.category, self._payload())
        if active_sinks():
            self._cpu0 = _current_cpu()
            self._t0 = _monotonic_ns()
            self._sched0 = sched_sample()  # inside [t0, t1], like the engine
        return self

    def __exit__(self, *exc: object) -> None:
        if self._t0:
            run_ns, wait_ns, ctx_vol, ctx_invol = sched_delta(self._sched0, sched_sample())
            t1 = _monotonic_ns()
            rec = Record(phase=phase_code(self.name), ckpt_id=self.ckpt_id, step=self.step, chunk=self.chunk,
                         offset=self.offset, nbytes=self.nbytes, t_begin_ns=self._t0, t_end_ns=t1,
                         thread=_native_id(), cpu_begin=self._cpu0, cpu_end=_current_cpu(), run_ns=run_ns,
                         wait_ns=wait_ns, ctx_vol=ctx_vol, ctx_invol=ctx_invol)
            self._t0 = 0
            tname = threading.current_thread().name
            for s in active_sinks():
                s.add_python_record(rec, tname)
        pop(self._pushed)

    def __call__(self, func: Callable) -> Callable:
        kwargs = {k: getattr(self, k) for k in ("step", "ckpt_id", "chunk", "offset", "nbytes", "payload",
                                                  "category")}
        name = self.name

        @functools.wraps(func)
        def wrapper(*args: Any, **kw: Any) -> Any:
            with phase(name, **kwargs):
                return func(*args, **kw)

        return wrapper
