"""Hypervisor steal during a trace, from its ``ckptlab.cpu_steal`` metadata (docs/TRACE.md,
"Straggler causes").

On a VM the time the hypervisor runs something else on a virtual CPU is in neither a task's
``run_ns`` nor its ``wait_ns`` (paravirt steal accounting), so ``causes`` counts it as
*blocked*. The trace keeps each CPU's steal counter (/proc/stat, USER_HZ ticks) at its start
and end; here that becomes a steal rate per CPU (stolen seconds per second of the trace) and,
for a straggler, an estimate of the time stolen from its active window: the mean rate of the
CPUs it ran on times the window. An estimate: the counters are per CPU and per trace, 10 ms
ticks, not per thread. When it is at least ``MATERIAL_SHARE`` of the blocked time attributed
to the straggler, the findings say so rather than calling it all device or lock time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

MATERIAL_SHARE = 0.1


@dataclass(frozen=True)
class StealWindow:
    """Stolen seconds per CPU over the trace's ``wall_s`` seconds."""

    wall_s: float
    per_cpu_s: dict[int, float]

    def rate(self, cpu: int) -> float:
        """Share of CPU ``cpu``'s time the hypervisor took (0 for a CPU not listed)."""
        return self.per_cpu_s.get(cpu, 0.0) / self.wall_s if self.wall_s > 0 else 0.0

    def estimate_s(self, cpus: list[int], seconds: float) -> float:
        """Time likely stolen from a thread active ``seconds`` on ``cpus`` (mean of their rates)."""
        if not cpus or seconds <= 0:
            return 0.0
        return sum(self.rate(c) for c in cpus) / len(cpus) * seconds

    def summary(self) -> dict[str, Any]:
        """The --json ``steal`` entry of a trace."""
        return {"wall_s": self.wall_s, "total_s": sum(self.per_cpu_s.values()),
                "per_cpu_s": {str(c): s for c, s in sorted(self.per_cpu_s.items())},
                "material_share": MATERIAL_SHARE}


def steal_window(table: pa.Table) -> StealWindow | None:
    """The trace's steal counters as a window, None where they were not recorded (older traces,
    no /proc/stat) or cannot be read."""
    from ckptlab.profiling.schema import trace_metadata

    try:
        steal = trace_metadata(table).get("cpu_steal")
    except ValueError:  # malformed JSON in a hand-edited file: not recorded, as far as we can tell
        return None
    if not isinstance(steal, dict):
        return None
    try:
        hz = float(steal["user_hz"])
        start, end = steal["start"], steal["end"]
        wall_s = (int(end["monotonic_ns"]) - int(start["monotonic_ns"])) / 1e9
        per_cpu = {int(c): max(0, int(end["ticks"][c]) - int(n)) / hz
                   for c, n in start["ticks"].items() if c in end["ticks"]}
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return StealWindow(wall_s, per_cpu) if wall_s > 0 else None
