"""Run metadata stored in a trace file's Arrow schema (docs/TRACE.md, "Schema metadata").

Everything a reader needs to compare traces across machines: host, architecture, kernel,
CPU model, CPU count and the CPUs this process may run on, the affinity policy, the
configuration, and library versions. Values are strings; structured ones are JSON.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

SCHEMA_VERSION = "2"  # 2 added run_ns, wait_ns, ctx_vol, ctx_invol
RUN_ID_ENV = "CKPTLAB_RUN_ID"


def new_run_id() -> str:
    """A run id: ``$CKPTLAB_RUN_ID`` when set (so several processes can share one), else
    ``<UTC time>-<8 hex>``, e.g. ``20250301T101500Z-3fa2c1d0``."""
    env = os.environ.get(RUN_ID_ENV, "").strip()
    if env:
        return env
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def cpu_list_string(cpus: Iterable[int]) -> str:
    """Compress CPU ids the way the kernel writes them: {0,1,2,5} -> "0-2,5"."""
    ids = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


def cpu_model() -> str:
    """The CPU model name: /proc/cpuinfo "model name" (x86), else lscpu-style fields (ARM),
    else platform.processor()."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    for key in ("model name", "Model name", "cpu model", "Processor"):
        if fields.get(key):
            return fields[key]
    if "CPU implementer" in fields:  # arm64 kernels list ids only (e.g. 0x41 / 0xd4f = Neoverse V2)
        return f"arm implementer {fields['CPU implementer']} part {fields.get('CPU part', '?')}"
    return platform.processor() or "unknown"


def cpu_steal_snapshot(stat_path: str = "/proc/stat") -> dict[str, Any] | None:
    """Per-CPU steal counters now: ``{"monotonic_ns", "ticks": {"<cpu>": n}}`` from the 8th
    value of /proc/stat's ``cpuN`` lines (USER_HZ ticks), or None where there is no such file.

    Why: on a VM the hypervisor's stolen time is in neither a task's run_ns nor its wait_ns
    (paravirt steal accounting), so a thread whose CPU was taken looks blocked; a trace keeps
    the counters at its start and end so the analyzer can say so (docs/TRACE.md)."""
    ticks: dict[str, int] = {}
    try:
        with open(stat_path, encoding="ascii", errors="replace") as f:
            for line in f:
                name, *values = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and len(values) >= 8:
                    ticks[name[3:]] = int(values[7])
    except (OSError, ValueError):
        return None
    return {"monotonic_ns": time.monotonic_ns(), "ticks": ticks} if ticks else None


def cpu_steal_metadata(start: dict[str, Any] | None, end: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``ckptlab.cpu_steal`` value: both snapshots and the tick length, None unless both exist."""
    if start is None or end is None:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return {"source": "/proc/stat", "user_hz": int(hz), "start": start, "end": end}


def _version(module: str) -> str | None:
    found = getattr(sys.modules.get(module), "__version__", None)
    if found:
        return str(found)
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    try:
        from importlib.metadata import version

        out["ckptlab"] = version("ckptlab")
    except Exception:
        out["ckptlab"] = None
    for name in ("numpy", "pyarrow", "torch", "nvtx"):
        out[name] = _version(name)
    libc, libc_version = platform.libc_ver()
    out["libc"] = f"{libc} {libc_version}".strip() or None
    torch = sys.modules.get("torch")
    if torch is not None:
        out["cuda"] = getattr(torch.version, "cuda", None)
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                out["gpu"] = torch.cuda.get_device_name()
        except Exception:
            pass
    try:
        from ckptlab import _engine

        out["engine_format"] = str(_engine.FORMAT_VERSION)
        out["crc32c"] = _engine.crc32c_implementation()
    except Exception:
        pass
    return out


def _to_jsonable(obj: Any) -> Any:
    if obj is None:
        return None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)):
        return obj
    if hasattr(obj, "__dict__") and not callable(obj):
        return {k: _to_jsonable(v) for k, v in vars(obj).items() if not k.startswith("_")}
    return str(obj)


def config_json(config: Any) -> str:
    """JSON of a config: a dataclass (CheckpointConfig, TrainConfig), a mapping of them, or None."""
    return json.dumps(_to_jsonable(config), sort_keys=True, default=str)


def run_metadata(*, run_id: str, config: Any = None, affinity_policy: str = "unpinned",
                 extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The ``ckptlab.*`` schema metadata of a trace (without the per-file keys the writer adds:
    thread names, phases, dropped records, row count)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        allowed = list(range(os.cpu_count() or 1))
    uname = platform.uname()
    meta = {
        "ckptlab.schema_version": SCHEMA_VERSION,
        "ckptlab.run_id": run_id,
        "ckptlab.created_unix": f"{time.time():.6f}",
        "ckptlab.host": socket.gethostname(),
        "ckptlab.pid": str(os.getpid()),
        "ckptlab.arch": uname.machine,
        "ckptlab.kernel": f"{uname.system} {uname.release} {uname.version}",
        "ckptlab.cpu_model": cpu_model(),
        "ckptlab.cpu_count": str(os.cpu_count() or 0),
        "ckptlab.cpus_allowed": cpu_list_string(allowed),
        "ckptlab.affinity_policy": affinity_policy,
        "ckptlab.page_size": str(os.sysconf("SC_PAGE_SIZE")) if hasattr(os, "sysconf") else "",
        "ckptlab.clock": "CLOCK_MONOTONIC ns",
        "ckptlab.config": config_json(config),
        "ckptlab.versions": json.dumps(versions(), sort_keys=True),
        "ckptlab.command": json.dumps(sys.argv),
    }
    for k, v in (extra or {}).items():
        key = k if k.startswith("ckptlab.") else f"ckptlab.{k}"
        meta[key] = v if isinstance(v, str) else json.dumps(_to_jsonable(v), sort_keys=True)
    return meta
