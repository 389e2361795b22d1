"""Reading a ``ckptlab bench`` result (OUT/bench.json, schema in docs/PERFORMANCE.md): tables of
its medians, overhead against checkpoint frequency, and its figure. Reads the file only."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

__all__ = ["read_bench", "bench_table", "overhead_vs_k", "bench_targets", "plot_bench"]

SCHEMA = "ckptlab.bench/1"
_COLUMNS = ("stall_s", "inflation", "lost_per_ckpt_s", "lost_in_run_s", "overhead", "durable_s", "durable_gbps", "cold_load_s",
            "peak_rss_bytes", "checkpoints")


def read_bench(path: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The bench document at ``path`` (a bench.json, or the directory holding it)."""
    if isinstance(path, Mapping):
        return dict(path)
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "bench.json")
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a ckptlab bench result (schema {doc.get('schema')!r}, expected {SCHEMA!r})")
    return doc


def bench_table(bench: Any) -> Any:
    """One row per kind and K with each figure's median (pandas DataFrame)."""
    import pandas as pd

    rows = [{"kind": r["kind"], "every": r["every"], **{c: (r.get(c) or {}).get("median") for c in _COLUMNS}}
            for r in read_bench(bench)["results"]]
    return pd.DataFrame(rows).sort_values(["every", "kind"], na_position="first").reset_index(drop=True)


def overhead_vs_k(bench: Any) -> Any:
    """Overhead (train time / `none`'s - 1) per kind (columns) against K (rows), medians."""
    table = bench_table(bench)
    table = table[table["kind"] != "none"]
    return table.pivot(index="every", columns="kind", values="overhead").sort_index()


def bench_targets(bench: Any) -> Any:
    """The issue's targets: figure, limit, met (pandas DataFrame)."""
    import pandas as pd

    return pd.DataFrame(read_bench(bench)["targets"])


def plot_bench(bench: Any, out: str | os.PathLike, dpi: int = 110) -> str:
    """Two panels: training time lost per checkpoint per kind (median, with the rounds' range,
    at the smallest K) and overhead against K; written atomically to the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ckptlab.analysis.tables import write_png

    doc = read_bench(bench)
    order = {k: i for i, k in enumerate(doc.get("config", {}).get("kinds", []))}
    rows = sorted((r for r in doc["results"] if r["kind"] != "none"),
                  key=lambda r: (order.get(r["kind"], len(order)), r["kind"], r["every"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ks = sorted({r["every"] for r in rows})
    first = [r for r in rows if r["every"] == (ks[0] if ks else None)]
    names = [r["kind"] for r in first]
    med = [(r["lost_per_ckpt_s"]["median"] or 0.0) * 1e3 for r in first]
    low = [m - (r["lost_per_ckpt_s"]["min"] or 0.0) * 1e3 for m, r in zip(med, first)]
    high = [(r["lost_per_ckpt_s"]["max"] or 0.0) * 1e3 - m for m, r in zip(med, first)]
    left.bar(names, med, yerr=[low, high], capsize=4, color="tab:blue")
    left.set_ylabel("training time lost per checkpoint (ms)")
    left.set_title(f"every {ks[0]} steps" if ks else "no checkpoints")
    left.tick_params(axis="x", labelrotation=30)
    for kind in dict.fromkeys(r["kind"] for r in rows):
        pts = sorted((r["every"], (r["overhead"]["median"] or 0.0) * 100) for r in rows if r["kind"] == kind)
        right.plot([k for k, _ in pts], [v for _, v in pts], marker="o", label=kind)
    right.set_xticks(ks)
    right.set_xlabel("checkpoint every K steps")
    right.set_ylabel("overhead vs none (%)")
    right.set_title("overhead against checkpoint frequency")
    if rows:
        right.legend(fontsize=8)
    c = doc.get("config", {})
    fig.suptitle(f"ckptlab bench: {c.get('state_bytes', 0) / 2**20:.0f} MiB state on {c.get('device', '?')}, "
                 f"{doc.get('machine', {}).get('host', '?')}", fontsize=10)
    write_png(fig, out, dpi)
    return os.fspath(out)
