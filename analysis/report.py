"""``ckptlab analyze TRACE_OR_EXPERIMENT... --out DIR``: the findings of traces and experiment
directories as ``DIR/report.md`` plus its figures (docs/PROFILING.md, "ckptlab analyze").

Every input is read before anything is written, so bad input writes nothing. The figures are
the existing ones (``plot_writer_report`` per trace, ``plot_experiment`` per experiment) and
one per trace of the stragglers (``plot_straggler_gaps``); each file is written atomically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptlab.analysis import affinity, findings


@dataclass
class Input:
    """One analyzed path: a trace table or an experiment, and its findings document."""

    path: str
    kind: str   # "trace" or "experiment"
    data: Any   # pyarrow.Table or affinity.Experiment
    doc: dict[str, Any]

    @property
    def label(self) -> str:
        return Path(self.path).name if self.kind == "experiment" else Path(self.path).stem


def load(path: str) -> Input:
    """An input, analyzed; FileNotFoundError or ValueError say what is wrong with it."""
    from ckptlab.profiling.schema import read_trace

    if os.path.isdir(path):
        exp = affinity.load_experiment(path)
        return Input(path, "experiment", exp, findings.experiment_findings(exp))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such trace file or experiment directory")
    try:
        table = read_trace(path)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise ValueError(f"cannot read {path} as a ckptlab trace: {e}") from None
    return Input(path, "trace", table, findings.trace_findings(table, Path(path).name))


def combined(inputs: list[Input]) -> dict[str, Any]:
    """The --json document: every input's checkpoints (with ``source``) and findings, and per
    trace its hypervisor steal (``steal``: path -> summary, None without the counters)."""
    doc: dict[str, Any] = {"checkpoints": [], "findings": [], "inputs": []}
    for i in inputs:
        doc["inputs"].append({"path": i.path, "kind": i.kind})
        doc["checkpoints"] += [{"source": i.path, **c} for c in i.doc["checkpoints"]]
        doc["findings"] += i.doc["findings"]
        if i.kind == "trace":
            doc.setdefault("steal", {})[i.path] = i.doc["steal"]
        if "placements" in i.doc:
            doc.setdefault("placements", {})[i.path] = i.doc["placements"]
    return doc


def plot_straggler_gaps(rows: list[dict[str, Any]], out: str | os.PathLike, title: str = "") -> str:
    """Per checkpoint: the makespan, the reference finish (the median thread's; with 2 threads
    the other thread's) and the what-if makespan, the straggler's gap coloured by its cause."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ckptlab.analysis.tables import write_png

    colours = {"cpu-wait": "tab:red", "blocked": "tab:purple", "on-cpu": "tab:orange", "late-start": "tab:blue",
               "unknown": "tab:gray", None: "lightgray"}
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(3, len(rows))))
    for y, r in enumerate(rows):
        ax.barh(y, r["reference_finish_s"] * 1e3, color="tab:green", alpha=0.5)
        ax.barh(y, r["gap_s"] * 1e3, left=r["reference_finish_s"] * 1e3, color=colours.get(r["cause"], "tab:gray"))
        if r["straggler"] is not None:
            ax.plot([r["what_if_makespan_s"] * 1e3], [y], "k|", markersize=14)
            ax.text(r["finish_s"] * 1e3, y, f" {r['straggler']}: {r['cause']}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [f"step {r['step']}" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("ms from the checkpoint's first record: median (2 threads: other) thread's finish (green), "
                  "the last thread's "
                  "gap (cause colour), what-if makespan (|)", fontsize=7)
    ax.set_title(title or "writer stragglers per checkpoint", fontsize=9)
    write_png(fig, out, dpi=100)
    return os.fspath(out)


def _figures(i: Input, out: Path) -> list[tuple[str, str]]:
    """(file name, caption) of the figures drawn for one input."""
    from ckptlab.analysis.straggler_plot import plot_writer_report

    if i.kind == "experiment":
        name = f"{i.label}-placement.png"
        affinity.plot_experiment(i.data, out / name)
        return [(name, "per cell: makespan, straggler ratio, CPU wait and migrations of the runs")]
    if not i.doc["checkpoints"]:
        return []
    drawn = []
    name = f"{i.label}-stragglers.png"
    plot_straggler_gaps(i.doc["checkpoints"], out / name, title=f"{Path(i.path).name}: stragglers per checkpoint")
    drawn.append((name, "per checkpoint: median finish, the last thread's gap coloured by cause, what-if makespan"))
    name = f"{i.label}-writers.png"
    plot_writer_report(i.data, out / name, title=Path(i.path).name)
    drawn.append((name, "writer threads: chunk latency ECDFs, work, finish per checkpoint, CPUs, time split"))
    return drawn


def _table(rows: list[dict[str, Any]], experiment: bool) -> list[str]:
    head = (["cell"] if experiment else []) + ["step", "makespan ms", "straggler", "gap ms", "cause",
                                               "what-if ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ([r["cell"]] if experiment else []) + [
            str(r["step"]), f"{r['makespan_s'] * 1e3:.1f}", r["straggler"] or "-", f"{r['gap_s'] * 1e3:.2f}",
            r["cause"] or "-", "-" if r["straggler"] is None else f"{r['what_if_makespan_s'] * 1e3:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(inputs: list[Input], out_dir: str | os.PathLike) -> str:
    """Write ``out_dir/report.md`` and its figures; returns the report's path."""
    from ckptlab.profiling.files import atomic_write_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# ckptlab analyze", "",
             "Straggler: the last writer thread of a checkpoint when it finished >= 1.1x and >= 1 ms after the "
             "median thread (with 2 threads, the other thread) and (3+ threads) is a robust-z outlier; cause: "
             "the part of its gap (late start, waiting for a CPU, blocked, on CPU) that explains at least half of it (docs/TRACE.md, "
             "\"Straggler causes\"). Generated by `ckptlab analyze`; regenerate rather than edit.", ""]
    for i in inputs:
        lines += [f"## {i.kind}: `{i.path}`", ""]
        lines += [f"- {f}" for f in i.doc["findings"]] + [""]
        shown = i.doc["checkpoints"] if i.kind == "trace" else [c for c in i.doc["checkpoints"] if c["straggler"]]
        if shown:
            lines += _table(shown, i.kind == "experiment") + [""]
        for name, caption in _figures(i, out):
            lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    path = out / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return os.fspath(path)
