"""One figure of the writer threads of a trace: where stragglers come from, at a glance.

Four panels, one colour per writer thread throughout (research/tracing.md §6):

- chunk write latency, ECDF per thread: a thread whose curve lies right writes slowly;
- bytes written per thread over the whole trace: work imbalance;
- when each thread finished, per checkpoint (from the checkpoint's first engine record), with
  the makespan: the last finisher sets the persist time;
- the CPU each write ran on, over time: migration tracks (flat lines when pinned).
"""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa

from ckptlab.profiling.stragglers import thread_totals, writer_stragglers
from ckptlab.profiling.tables import column, track_sort_key


def plot_writer_report(table: pa.Table, out: str | os.PathLike, title: str | None = None) -> int:
    """Draw the four panels of ``table``'s writer threads to the PNG ``out`` (atomically);
    returns the number of checkpoints shown. ValueError when the trace has no engine writes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from ckptlab.core.durable import atomic_write_bytes

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

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
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

    fig.suptitle(title or "ckptlab writer threads", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return len(checkpoints)
