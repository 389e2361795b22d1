"""A trace drawn as a timeline PNG: one track per thread, one bar per record, a colour per phase.

Perfetto shows the same interactively (``ckptlab trace export``); this is the picture for a
note or a paper, e.g. the ``d2h`` of a deferred snapshot running under the next training step,
or one writer thread finishing after the others. Nested records of one thread (``train_step``
holding ``forward``/``backward``; ``save`` holding ``capture`` and ``submit``) are drawn in
lanes below their parent, as in a flame chart; past ``MAX_LANES`` lanes they share the last.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ckptlab.analysis.tables import column, track_sort_key, write_png

MAX_LANES = 4          # deeper nesting is drawn in the last lane
MIN_BAR_FRACTION = 1 / 1500  # of the window: shorter records are widened to stay visible
STEP_MARGIN = 0.05     # of a step's span, added on both sides of --step windows


@dataclass(frozen=True)
class Timeline:
    """What ``plot_timeline`` drew."""

    path: str
    t_begin_ns: int           # the window, CLOCK_MONOTONIC ns
    t_end_ns: int
    records: int              # records drawn (overlapping the window)
    tracks: list[str]         # thread names, top to bottom
    phases: list[str]         # phases drawn, in legend order


def step_window(table: pa.Table, step: int) -> tuple[int, int]:
    """From the first record of training step ``step`` (e.g. its ``save``) to the last
    (usually its ``commit``), in CLOCK_MONOTONIC ns."""
    steps = column(table, "step")
    mask = steps == step
    if not mask.any():
        present = sorted({int(s) for s in steps.tolist() if s >= 0})
        shown = ", ".join(map(str, present[:20])) + (" ..." if len(present) > 20 else "")
        raise ValueError(f"step {step} has no records in this trace (steps present: {shown or 'none'})")
    return int(column(table, "t_begin_ns")[mask].min()), int(column(table, "t_end_ns")[mask].max())


def assign_lanes(begin: np.ndarray, end: np.ndarray, max_lanes: int | None = None) -> np.ndarray:
    """A lane for each interval of one thread, so that no two intervals of a lane overlap:
    taken in order of start (longer first), each goes to the first lane free at its start.
    A nested interval thus lies below the one holding it, as in a flame chart. With
    ``max_lanes``, an interval finding none of them free shares the last (bounded work)."""
    lane = np.zeros(len(begin), dtype=np.int64)
    lane_end: list[int] = []
    for i in np.lexsort((-(end - begin), begin)).tolist():
        free = next((k for k, e in enumerate(lane_end) if e <= begin[i]), len(lane_end))
        if max_lanes is not None and free >= max_lanes:
            free = max_lanes - 1
        if free == len(lane_end):
            lane_end.append(0)
        lane_end[free] = max(lane_end[free], int(end[i]))
        lane[i] = free
    return lane


def _phase_colors(names: list[str]) -> dict[str, tuple[float, ...]]:
    """A fixed colour per phase (by its code, so one phase looks the same in every plot)."""
    from matplotlib import colormaps

    from ckptlab.profiling.phases import phase_code

    palette = list(colormaps["tab20"].colors) + list(colormaps["tab20b"].colors)
    return {n: palette[phase_code(n) % len(palette)] for n in names}


def plot_timeline(table: pa.Table, out: str | os.PathLike, *, window_ns: tuple[int, int] | None = None,
                  step: int | None = None, phases: set[str] | None = None, title: str | None = None,
                  width_in: float = 14.0) -> Timeline:
    """Draw ``table`` (or the part in ``window_ns``, or around training ``step``; optionally
    only some ``phases``) to the PNG ``out``, written atomically. Raises ValueError when
    nothing is left to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from ckptlab.profiling.phases import phase_code

    if window_ns is not None and step is not None:
        raise ValueError("give a window or a step, not both")
    if table.num_rows == 0:
        raise ValueError("the trace has no records")
    tb = column(table, "t_begin_ns").astype(np.int64)
    te = column(table, "t_end_ns").astype(np.int64)
    phase = column(table, "phase")
    if step is not None:
        lo, hi = step_window(table, step)
        margin = int((hi - lo) * STEP_MARGIN)
        window_ns = (lo - margin, hi + margin)
    if window_ns is None:
        window_ns = (int(tb.min()), int(te.max()))
    lo, hi = window_ns
    if hi <= lo:
        raise ValueError(f"empty window: it ends ({hi} ns) before it begins ({lo} ns)")
    keep = (te >= lo) & (tb <= hi)
    if phases:
        keep &= np.isin(phase, list(phases))
    if not keep.any():
        raise ValueError("no records in the chosen window" + (f" for phases {sorted(phases)}" if phases else ""))

    tid = column(table, "thread").astype(np.int64)
    tname = column(table, "thread_name")
    names: dict[int, str] = {}
    for t, n in zip(tid[keep].tolist(), tname[keep].tolist(), strict=True):
        names.setdefault(t, n)
    order = sorted(names, key=lambda t: track_sort_key(names[t]))

    span = hi - lo
    unit, scale = ("s", 1e9) if span >= 2e9 else ("ms", 1e6)
    min_width = span * MIN_BAR_FRACTION
    drawn = list(dict.fromkeys(phase[keep].tolist()))
    drawn.sort(key=phase_code)
    colors = _phase_colors(drawn)

    rows_of = {t: np.flatnonzero(keep & (tid == t)) for t in order}
    lanes_of: dict[int, int] = {}
    depth_all = np.zeros(len(tb), dtype=np.int64)
    for t, idx in rows_of.items():
        depth_all[idx] = assign_lanes(tb[idx], te[idx], MAX_LANES)
        lanes_of[t] = int(depth_all[idx].max()) + 1
    lane_h = 0.5
    height_units = sum(lanes_of.values()) * lane_h + 0.3 * len(order)
    fig, ax = plt.subplots(figsize=(width_in, max(2.5, 0.9 + height_units * 0.75)))
    ax.grid(False)  # the same look whatever theme the process set (seaborn's has a y grid)
    ax.grid(True, axis="x", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)
    y = 0.0
    ticks, labels = [], []
    for t, idx in rows_of.items():
        top = y
        for d in range(lanes_of[t]):
            for p in drawn:
                sel = idx[(depth_all[idx] == d) & (phase[idx] == p)]
                if not len(sel):
                    continue
                b = np.maximum(tb[sel], lo)
                w = np.maximum(np.minimum(te[sel], hi) - b, min_width)
                ax.broken_barh(list(zip(((b - lo) / scale).tolist(), (w / scale).tolist(), strict=True)),
                               (top + d * lane_h + 0.04, lane_h - 0.08), facecolors=colors[p], linewidth=0)
        y = top + lanes_of[t] * lane_h + 0.3
        ticks.append((top + y - 0.3) / 2)
        labels.append(f"{names[t]} ({t})")
        ax.axhline(y - 0.15, color="0.85", linewidth=0.6)
    ax.set_ylim(y - 0.15, -0.15)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlim(0, span / scale)
    ax.set_xlabel(f"time ({unit}); 0 = {(lo - int(tb.min())) / 1e9:.3f} s after the trace's first record")
    ax.set_title(title or "ckptlab trace", fontsize=10)
    handles = [Patch(color=colors[p], label=p) for p in drawn]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    write_png(fig, out, dpi=130)
    return Timeline(os.fspath(out), lo, hi, int(keep.sum()), [names[t] for t in order], drawn)
