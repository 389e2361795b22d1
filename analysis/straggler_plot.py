"""One figure of the writer threads of a trace: where stragglers come from, at a glance.

Six panels, one colour per writer thread throughout (docs/BACKGROUND.md §3.2):

- chunk write latency, ECDF per thread: a thread whose curve lies right writes slowly;
- bytes written per thread over the whole trace: work imbalance;
- when each thread finished, per checkpoint (from the checkpoint's first engine record), with
  the makespan: the last finisher sets the persist time;
- the CPU each write ran on, over time: migration tracks (flat lines when pinned);
- where each thread's active time went: on CPU, waiting for a CPU, blocked, idle (stacked);
- per checkpoint, the makespan beside its what-if estimates without CPU wait / blocking.

The last two need the scheduler counters (trace schema version 2); older traces say so there.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from ckptlab.analysis.stragglers import TIME_PARTS, thread_totals, writer_stragglers
from ckptlab.analysis.tables import column, track_sort_key, write_png


def plot_writer_report(table: pa.Table, out: str | os.PathLike, title: str | None = None) -> int:
    """Draw the six panels of ``table``'s writer threads to the PNG ``out`` (atomically);
    returns the number of checkpoints shown. ValueError when the trace has no engine writes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    checkpoints, threads = writer_stragglers(table)
    if not checkpoints:
        raise ValueError("no engine writes in this trace (a pccheck run with --trace records them)")
    phase, tname = column(table, "phase"), column(table, "thread_name")
    is_write = (phase == "write") & np.array([str(n).startswith("ckptlab-writer") for n in tname.tolist()])
    tb = column(table, "t_begin_ns").astype(np.int64)
    te = column(table, "t_end_ns").astype(np.int64)
    writes = pd.DataFrame({
        "thread": tname[is_write].astype(str), "ms": (te - tb)[is_write] / 1e6,
        "t_s": (tb[is_write] - tb.min()) / 1e9, "cpu": column(table, "cpu_begin")[is_write],
    })
    names = sorted({r["thread_name"] for r in threads}, key=track_sort_key)
    palette = dict(zip(names, sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names)), strict=True))

    fig, axes = plt.subplots(3, 2, figsize=(13, 12.5))
    ax = axes[0, 0]
    sns.ecdfplot(data=writes, x="ms", hue="thread", hue_order=names, palette=palette, ax=ax)
    ax.set_xscale("log")
    ax.set_xlabel("chunk write latency (ms, log)")
    ax.set_title("write latency per thread")

    ax = axes[0, 1]
    totals = thread_totals(threads)
    ax.bar([r["thread_name"] for r in totals], [r["bytes"] / 1e6 for r in totals],
           color=[palette[r["thread_name"]] for r in totals])
    ax.set_ylabel("MB written (all checkpoints)")
    ax.set_title("work per thread")
    ax.tick_params(axis="x", labelrotation=30)

    ax = axes[1, 0]
    steps = [c["step"] for c in checkpoints]
    for name in names:
        rows = [r for r in threads if r["thread_name"] == name]
        ax.plot([r["step"] for r in rows], [r["finish_s"] * 1e3 for r in rows], "o", color=palette[name],
                label=name, alpha=0.8)
    ax.plot(steps, [c["makespan_s"] * 1e3 for c in checkpoints], "-", color="0.3", linewidth=1, label="makespan")
    ax.set_xlabel("checkpoint step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("finished after (ms)")
    ax.set_title("finish per checkpoint (last = straggler)")
    ax.legend(fontsize=7, ncols=2)

    ax = axes[1, 1]
    for name in names:
        w = writes[writes.thread == name]
        ax.plot(w.t_s, w.cpu, ".", color=palette[name], markersize=4, label=name)
    ax.set_xlabel("time (s from the trace's first record)")
    ax.set_ylabel("CPU (sched_getcpu at write begin)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"CPU of each write ({sum(c['migrations'] for c in checkpoints)} migrations)")

    _time_parts_panels(axes[2, 0], axes[2, 1], checkpoints, totals)

    fig.suptitle(title or "ckptlab writer threads", fontsize=11)
    write_png(fig, out, dpi=110)
    return len(checkpoints)


_PART_COLOURS = ("#55A868", "#C44E52", "#8172B3", "#CCCCCC")


def _time_parts_panels(ax_threads, ax_what_if, checkpoints: list[dict], totals: list[dict]) -> None:
    """Stacked time parts per thread, and makespan vs what-if per checkpoint."""
    if any(r["blocked_s"] is None for r in totals):
        for ax in (ax_threads, ax_what_if):
            ax.text(0.5, 0.5, "no scheduler counters in this trace\n(recorded from trace schema version 2 on)",
                    ha="center", va="center", transform=ax.transAxes, color="0.4")
            ax.set_axis_off()
        return
    names = [r["thread_name"] for r in totals]
    bottom = np.zeros(len(totals))
    for (key, label), colour in zip(TIME_PARTS, _PART_COLOURS, strict=True):
        values = np.array([r[key] * 1e3 for r in totals])
        ax_threads.bar(names, values, bottom=bottom, color=colour, label=label)
        bottom += values
    ax_threads.set_ylabel("ms (all checkpoints)")
    ax_threads.set_title("where each writer's active time went")
    ax_threads.tick_params(axis="x", labelrotation=30)
    ax_threads.legend(fontsize=7)

    steps = [c["step"] for c in checkpoints]
    ax_what_if.plot(steps, [c["makespan_s"] * 1e3 for c in checkpoints], "o-", color="0.2", label="makespan")
    ax_what_if.plot(steps, [c["if_no_runq_wait_s"] * 1e3 for c in checkpoints], "s--", color=_PART_COLOURS[1],
                    label="if no thread waited for a CPU")
    ax_what_if.plot(steps, [c["if_no_blocked_s"] * 1e3 for c in checkpoints], "^--", color=_PART_COLOURS[2],
                    label="if no thread blocked")
    ax_what_if.set_xlabel("checkpoint step")
    ax_what_if.xaxis.get_major_locator().set_params(integer=True)
    ax_what_if.set_ylabel("ms")
    ax_what_if.set_ylim(bottom=0)
    ax_what_if.set_title("makespan and what-if estimates")
    ax_what_if.legend(fontsize=7)
