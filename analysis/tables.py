"""Small helpers shared by the readers of trace tables (Chrome export, timeline plot, figures)."""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa


def column(table: pa.Table, name: str) -> np.ndarray:
    """A column as numpy; dictionary columns (phase, thread_name, run_id) as Python strings."""
    col = table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy()


def track_sort_key(thread_name: str) -> tuple[int, str]:
    """Threads in a useful order: the caller's (training) threads, the snapshot thread, writers,
    committer, readers, then any other ckptlab thread."""
    order = (("ckptlab-save", 0), ("ckptlab-snapshot", 1), ("ckptlab-writer", 2), ("ckptlab-commit", 3),
             ("ckptlab-reader", 4))
    for prefix, rank in order:
        if prefix in thread_name:
            return (rank, _natural(thread_name))
    return (5 if thread_name.startswith("ckptlab-") else 0, _natural(thread_name))


def _natural(name: str) -> str:
    return re.sub(r"\d+", lambda m: m.group().zfill(8), name)


def write_png(fig, out, dpi: int) -> None:
    """Lay out ``fig``, render it as PNG and write ``out`` atomically (a reader never sees half
    a figure); the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    from ckptlab.profiling.files import atomic_write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
