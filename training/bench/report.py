"""The bench's outputs: the machine and versions it ran on, OUT/bench.json, the table
(OUT/bench.md, and on the terminal), and the plot (OUT/bench.png, drawn by ckptlab.analysis
from bench.json, so the notebook and the command draw the same figure)."""
from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import subprocess
from pathlib import Path
from typing import Any, Mapping

from ckptlab.profiling.files import atomic_write_bytes
from ckptlab.profiling.metadata import cpu_model, versions

__all__ = ["SCHEMA", "machine_info", "version_info", "file_system", "markdown", "write_outputs"]

SCHEMA = "ckptlab.bench/1"
_REPO = Path(__file__).resolve().parents[2]


def file_system(path: Path) -> dict[str, str | None]:
    """Mount point, type and device of the file system holding ``path`` (/proc/self/mountinfo)."""
    real = os.path.realpath(path)
    best: dict[str, str | None] = {"mount": None, "fstype": None, "source": None}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        left, _, right = line.partition(" - ")
        mount = left.split()[4].replace("\\040", " ")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best["mount"] or ""):
            fstype, source = (right.split() + [None, None])[:2]
            best = {"mount": mount, "fstype": fstype, "source": source}
    return best


def machine_info(directory: Path) -> dict[str, Any]:
    uname = platform.uname()
    return {"host": socket.gethostname(), "arch": uname.machine, "cpu_model": cpu_model(),
            "cores": os.cpu_count(), "cpus_allowed": len(os.sched_getaffinity(0)),
            "kernel": f"{uname.system} {uname.release}", "memory_bytes": _memory_bytes(),
            "dir": str(directory), "dir_fs": file_system(directory)}


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def version_info() -> dict[str, Any]:
    import torch  # noqa: F401  (versions() reports modules already imported)

    out: dict[str, Any] = dict(versions())
    out["git_commit"] = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    out["git_dirty"] = None if status is None else bool(status)
    return out


def _ms(cell: Mapping[str, Any] | None) -> str:
    return "-" if not cell or cell["median"] is None else f"{cell['median'] * 1e3:.1f}"


def _spread_ms(cell: Mapping[str, Any] | None) -> str:
    if not cell or cell["median"] is None:
        return "-"
    if cell["n"] == 1:
        return f"{cell['median'] * 1e3:.1f}"
    return f"{cell['median'] * 1e3:.1f} [{cell['min'] * 1e3:.1f}, {cell['max'] * 1e3:.1f}]"


def _num(cell: Mapping[str, Any] | None, fmt: str, scale: float = 1.0) -> str:
    return "-" if not cell or cell["median"] is None else format(cell["median"] * scale, fmt)


def _verdict(t: Mapping[str, Any]) -> str:
    met = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[t["met"]]
    if t["figure"] is None:
        return f"{t['target']}: {met} ({t.get('why', '')})"
    unit = t.get("unit")
    figure = _in_unit(t["figure"], unit)
    limit = "" if t["limit"] is None else _in_unit(t["limit"], unit)
    peer = f" ({t['peer']})" if t.get("peer") else ""
    derived = f" (derived from lost/ckpt at every {t['derived_from_every']})" if t.get("derived_from_every") else ""
    return f"{t['target']}: {met}: {figure} against {limit}{peer}{derived}"


def _in_unit(value: float, unit: str | None) -> str:
    if unit == "s":
        return f"{value * 1e3:.2f} ms"
    if unit == "%":
        return f"{value * 100:.2f} %"
    if unit == "share":
        return f"{value * 100:.0f} %"
    if unit == "iterations":
        return f"{value:.3f} iterations"
    if unit == "bytes":
        return f"{value / 2**20:.0f} MiB"
    return f"{value:.2f}x"


def markdown(doc: Mapping[str, Any]) -> str:
    """bench.md: one table row per kind and K (medians, [min, max] over the rounds)."""
    m, c, raw = doc["machine"], doc["config"], doc["raw_disk"]
    lines = [f"# ckptlab bench: {c['state_bytes'] / 2**20:.0f} MiB state, {c['device']}, {m['host']}", "",
             f"{m['cpu_model']}, {m['cores']} cores, {m['kernel']}; --dir on {m['dir_fs']['fstype']} "
             f"({m['dir_fs']['source']}); torch {doc['versions'].get('torch')}, ckptlab "
             f"{(doc['versions'].get('git_commit') or 'unknown')[:12]}; {c['steps']} steps, {c['repeats']} "
             f"round(s), seed {c['seed']}.", "",
             "| kind | every | stall ms | inflation % | lost/ckpt ms | in-run ms | overhead % | durable s | GB/s | "
             "cold load s | peak RSS MiB | staging MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(doc["results"], key=lambda r: (r["every"] or 0, r["kind"])):
        lines.append(f"| {r['kind']} | {r['every'] or '-'} | {_spread_ms(r['stall_s'])} | "
                     f"{_num(r['inflation'], '.1f', 100)} | {_spread_ms(r.get('lost_per_ckpt_s'))} | "
                     f"{_ms(r.get('lost_in_run_s'))} | "
                     f"{_num(r.get('overhead'), '.1f', 100)} | {_num(r['durable_s'], '.3f')} | "
                     f"{_num(r['durable_gbps'], '.2f')} | {_num(r['cold_load_s'], '.3f')} | "
                     f"{_num(r['peak_rss_bytes'], '.0f', 2**-20)} | "
                     f"{_num(r.get('staging_touched_bytes'), '.0f', 2**-20)} |")
    if c.get("variants"):
        lines += ["", "Variants: " + "; ".join(f"{v['name']} = {v['base']} {shlex.join(v['flags'])}"
                                             for v in c["variants"]) + "."]
    lines += ["", f"Raw disk, {raw['bytes'] / 2**20:.0f} MiB: O_DIRECT+fdatasync {_ms(raw['direct_write_s'])} ms, "
              f"buffered+fsync {_ms(raw['buffered_write_s'])} ms, cold read {_ms(raw['read_s'])} ms "
              f"({_num(raw['read_resident'], '.0%')} resident after fadvise); D2H "
              f"{_num(raw['d2h_gbps'], '.1f')} GB/s.", "", "## Targets", ""]
    lines += [f"- {_verdict(t)}" for t in doc["targets"]]
    return "\n".join(lines) + "\n"


def write_outputs(doc: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """bench.json (atomically), bench.md and bench.png; returns their paths."""
    from ckptlab.analysis.bench import plot_bench

    paths = {"json": out / "bench.json", "md": out / "bench.md", "png": out / "bench.png"}
    atomic_write_bytes(paths["md"], markdown(doc).encode())
    atomic_write_bytes(paths["json"], (json.dumps(doc, indent=1) + "\n").encode())
    plot_bench(paths["json"], paths["png"])
    return paths
