"""What-if: a checkpoint's makespan had its straggler run at the median thread's speed,
re-simulated from the chunk records (Lin et al., OSDI'25: replace the straggler's durations,
replay the dependencies).

The replay keeps what the trace shows of the engine's dependencies: each writer thread runs
its observed chunks in its observed order; a chunk starts when the thread is done with its
previous one and the chunk is staged (the end of its ``stage`` record on the caller; without
one, its observed start); a thread starts no earlier than its first observed record (it may
have been busy with an earlier checkpoint); an ``fsync`` runs right after the chunk it
followed. Replayed as observed, this reproduces the makespan up to any gap the trace does not
explain (a wake-up after the chunk was queued), so ``resim_makespan_s`` <= ``makespan_s``
and their difference is the model's error. In the what-if, only the straggler's durations
change: each chunk (checksum to the end of its write) takes its bytes times the median over
the other threads of their seconds per byte, each of its fsyncs the peers' median fsync.
Chunks stay on the thread that wrote them: a faster straggler would also have taken chunks
from the others, which the replay does not credit (so the saving is if anything understated).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ckptlab.analysis.tables import column


@dataclass
class Task:
    """One chunk of a writer thread (checksum .. write) and the fsync that followed it, if any."""

    chunk: int
    begin_ns: int
    end_ns: int
    nbytes: int
    fsync_ns: int = 0


def thread_tasks(table: pa.Table, ckpt_id: int) -> dict[str, list[Task]]:
    """Per writer thread of checkpoint ``ckpt_id``, its tasks in observed order."""
    ck = column(table, "ckpt_id").astype(np.int64) == ckpt_id
    phase = column(table, "phase")
    names, chunk = column(table, "thread_name"), column(table, "chunk").astype(np.int64)
    tb, te = column(table, "t_begin_ns").astype(np.int64), column(table, "t_end_ns").astype(np.int64)
    nbytes = column(table, "nbytes").astype(np.int64)
    out: dict[str, list[Task]] = {}
    idx = np.flatnonzero(ck & np.isin(phase, ("checksum", "write", "fsync")))
    for i in idx[np.argsort(tb[idx], kind="stable")]:
        tasks = out.setdefault(str(names[i]), [])
        if phase[i] == "fsync":
            if tasks:
                tasks[-1].fsync_ns += int(te[i] - tb[i])
            continue
        if tasks and tasks[-1].chunk == chunk[i] and tasks[-1].fsync_ns == 0:
            tasks[-1].end_ns = int(te[i])  # the write after its checksum (and any time between)
            tasks[-1].nbytes = max(tasks[-1].nbytes, int(nbytes[i]))
        else:
            tasks.append(Task(int(chunk[i]), int(tb[i]), int(te[i]), int(nbytes[i])))
    return out


def staged_at(table: pa.Table, ckpt_id: int) -> dict[int, int]:
    """Chunk index -> end of its ``stage`` record in checkpoint ``ckpt_id``."""
    ck = (column(table, "ckpt_id").astype(np.int64) == ckpt_id) & (column(table, "phase") == "stage")
    chunks, te = column(table, "chunk").astype(np.int64)[ck], column(table, "t_end_ns").astype(np.int64)[ck]
    return {int(c): int(t) for c, t in zip(chunks, te, strict=True)}


def replay(tasks: dict[str, list[Task]], ready: dict[int, int], durations: dict[str, list[tuple[int, int]]]) -> int:
    """Last end (ns) of the threads running ``tasks`` with (chunk, fsync) ``durations``."""
    last = 0
    for name, ts in tasks.items():
        free = ts[0].begin_ns
        for task, (chunk_ns, fsync_ns) in zip(ts, durations[name], strict=True):
            free = max(free, ready.get(task.chunk, task.begin_ns)) + chunk_ns + fsync_ns
        last = max(last, free)
    return last


def median_speed(tasks: dict[str, list[Task]], straggler: str) -> dict[str, list[tuple[int, int]]]:
    """Observed durations, the straggler's replaced by the peers' median speed."""
    observed = {n: [(t.end_ns - t.begin_ns, t.fsync_ns) for t in ts] for n, ts in tasks.items()}
    peers = [n for n in tasks if n != straggler]
    if straggler not in tasks or not peers:
        return observed
    rates = [sum(t.end_ns - t.begin_ns for t in tasks[n]) / max(1, sum(t.nbytes for t in tasks[n])) for n in peers]
    rate = float(np.median(rates))
    fsyncs = [t.fsync_ns for n in peers for t in tasks[n] if t.fsync_ns > 0]
    fsync = int(np.median(fsyncs)) if fsyncs else None
    observed[straggler] = [(round(t.nbytes * rate), t.fsync_ns if fsync is None or t.fsync_ns == 0 else fsync)
                           for t in tasks[straggler]]
    return observed


def what_if(table: pa.Table, ckpt_id: int, t0_ns: int, straggler: str | None) -> tuple[float, float]:
    """(replayed makespan as observed, makespan had ``straggler`` run at the median speed), in
    seconds from ``t0_ns``; the two are equal without a straggler."""
    tasks = thread_tasks(table, ckpt_id)
    ready = staged_at(table, ckpt_id)
    observed = median_speed(tasks, "")
    resim = (replay(tasks, ready, observed) - t0_ns) / 1e9
    if straggler is None:
        return resim, resim
    return resim, (replay(tasks, ready, median_speed(tasks, straggler)) - t0_ns) / 1e9
