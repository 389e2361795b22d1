"""NVTX ranges from Python, in the engine's domain, free when nothing collects them.

Uses the PyPI ``nvtx`` package (Cython over the NVTX3 C API, the same layer the C++ engine
uses). When the package is missing, or no tool (nsys, an injection library) is attached, the
``nvtx`` package hands out a dummy domain and every call here is a no-op: one attribute check.

Categories: the engine numbers its categories 1..12 after its phases (category k+1 = phase k
of ``ckptlab._engine.phase_names()``). This module names the same 12 categories first, in the
same order, on its own handle of the domain, then adds Python-side names (``forward``,
``save``, ...) from 13 on, so one category id means one thing in the whole "ckptlab" domain
whichever module emitted the range.

    from ckptlab.profiling.nvtx_ranges import nvtx_range

    with nvtx_range("forward", payload=step):
        ...

    @nvtx_range("optimizer")
    def step(): ...
"""
from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

DOMAIN = "ckptlab"

# The engine's phases, in its order (csrc/trace.cpp kPhaseNames); checked against
# ckptlab._engine.phase_names() by the tests.
ENGINE_PHASES: tuple[str, ...] = (
    "snapshot", "d2h", "stage", "write", "checksum", "fsync", "manifest", "commit", "gc", "read",
    "verify", "h2d",
)
# Python-side phases with fixed category ids (13, 14, ...), in this order. Other names get
# the next free id on first use.
PYTHON_PHASES: tuple[str, ...] = (
    "forward", "backward", "optimizer", "train_step", "save", "wait", "load", "capture", "submit",
    "restore", "data", "snapshot_enqueue", "snapshot_barrier", "serialize", "digest", "file_write",
    "file_fsync", "dir_commit", "retain", "dcp_save", "dcp_async_save",
)

_COLORS = {  # ARGB; engine phases use their own colours in C++
    "forward": 0xFF1F77B4, "backward": 0xFFFF7F0E, "optimizer": 0xFF2CA02C, "train_step": 0xFF7F7F7F,
    "save": 0xFFD62728, "wait": 0xFF9467BD, "load": 0xFF17BECF, "capture": 0xFF8C564B,
    "submit": 0xFFE377C2, "restore": 0xFFBCBD22, "data": 0xFFAEC7E8, "d2h": 0xFFDD8452, "h2d": 0xFFD62728,
}

try:  # the nvtx package is optional (extra "trace")
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - depends on the environment
    _nvtx = None

_lock = threading.Lock()
_domain: Any = None        # nvtx Domain, or None when NVTX is not collected
_resolved = False
_category_ids: dict[str, int] = {}
_attr_cache: dict[tuple[str, str | None], Any] = {}


def _resolve_domain() -> Any:
    """The nvtx Domain for "ckptlab" with its categories named, or None (no-op mode)."""
    global _domain, _resolved
    if _resolved:
        return _domain
    with _lock:
        if _resolved:
            return _domain
        domain = None
        if _nvtx is not None and _nvtx.enabled() and not os.environ.get("NVTX_DISABLE"):
            d = _nvtx.get_domain(DOMAIN)
            if type(d).__name__ != "DummyDomain":  # a tool is attached
                domain = d
                for name in ENGINE_PHASES + PYTHON_PHASES:
                    _category_ids[name] = d.get_category_id(name)
        _domain = domain
        _resolved = True
    return _domain


def nvtx_enabled() -> bool:
    """True when a tool collects NVTX in this process (ranges are then really emitted)."""
    return _resolve_domain() is not None


def category_id(name: str) -> int:
    """The category id of a phase name in the "ckptlab" domain (0 when NVTX is off)."""
    d = _resolve_domain()
    if d is None:
        return 0
    cid = _category_ids.get(name)
    if cid is None:
        with _lock:
            cid = _category_ids.get(name)
            if cid is None:
                cid = _category_ids[name] = d.get_category_id(name)
    return cid


def _attributes(d: Any, name: str, category: str | None, payload: int | float | None) -> Any:
    key = (name, category)
    if payload is None:
        attr = _attr_cache.get(key)
        if attr is None:
            attr = _attr_cache[key] = d.get_event_attributes(
                message=name, color=_COLORS.get(name), category=category_id(category or name))
        return attr
    return d.get_event_attributes(message=name, color=_COLORS.get(name),
                                  category=category_id(category or name), payload=payload)


def push(name: str, category: str | None = None, payload: int | float | None = None) -> bool:
    """Push a range on this thread; returns whether anything was pushed (pass it to pop)."""
    d = _domain if _resolved else _resolve_domain()
    if d is None:
        return False
    d.push_range(_attributes(d, name, category, payload))
    return True


def pop(pushed: bool = True) -> None:
    if pushed and _domain is not None:
        _domain.pop_range()


def mark(name: str, payload: int | float | None = None, category: str | None = None) -> None:
    """An instant event, e.g. a clock anchor: ``mark("clock", payload=time.monotonic_ns())``."""
    d = _resolve_domain()
    if d is not None:
        d.mark(_attributes(d, name, category, payload))


class nvtx_range:  # noqa: N801 - used like a function (context manager / decorator)
    """An NVTX push/pop range in domain "ckptlab"; context manager or decorator.

    ``category`` defaults to the range name (one category per phase); ``payload`` is an int
    or float shown by nsys next to the range (bytes, step, ...).
    """

    __slots__ = ("name", "category", "payload", "_pushed")

    def __init__(self, name: str, category: str | None = None, payload: int | float | None = None) -> None:
        self.name = name
        self.category = category
        self.payload = payload
        self._pushed = False

    def __enter__(self) -> "nvtx_range":
        self._pushed = push(self.name, self.category, self.payload)
        return self

    def __exit__(self, *exc: object) -> None:
        pop(self._pushed)

    def __call__(self, func: Callable) -> Callable:
        name, category, payload = self.name, self.category, self.payload

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            pushed = push(name, category, payload)
            try:
                return func(*args, **kwargs)
            finally:
                pop(pushed)

        return wrapper


def _reset_for_tests() -> None:
    global _domain, _resolved
    with _lock:
        _domain, _resolved = None, False
        _category_ids.clear()
        _attr_cache.clear()
