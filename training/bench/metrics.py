"""The bench's figures, computed from what each measured run recorded (per-iteration times,
save() stalls, time to durable): pure functions, so every figure is testable on made-up records.

Definitions (docs/PERFORMANCE.md):

train_s         the loop's time without the first (warm-up) step: iterations + save() stalls
lost/ckpt       (train_s of the run - train_s of the `none` run of the same round) / checkpoints:
                the training time one checkpoint really costs, whatever the mechanism
lost/ckpt in-run the same from the run alone: (train_s - its median quiet iteration x its
                iterations) / checkpoints; blind to costs every iteration pays, but immune to
                drift between runs (a shared machine), so a check on the figure above
overhead        train_s / train_s of `none` - 1, for one checkpoint every K steps
inflation       median iteration while a checkpoint persists (started after save() returned and
                before it was durable) / median of the other iterations - 1
stall           median save() stall without the run's first checkpoint (it allocates the staging
                buffers once; reported alone as first_stall_s), or that one when it is the only one
durable         save() call to durable (engine or writer acknowledgement): for pccheck from the
                loop's save() call times and the engine's commit times (one clock, CLOCK_MONOTONIC),
                since its own time_to_durable starts at the engine's submit, after the snapshot;
                a kind that reports none (torchsave) is durable when save() returns: its stall
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["persisting_steps", "durable_from_save", "run_figures", "lost_per_checkpoint", "spread", "aggregate", "targets",
           "gpu_targets", "HEADLINE", "PEERS", "DEFERRED_STALL_LIMIT_S", "DURABLE_VS_RAW_LIMIT"]

HEADLINE = "pccheck-deferred"  # the kind the targets are about
PEERS = ("torchsave", "dcp", "dcp-async")  # the other systems it must beat
DEFERRED_STALL_LIMIT_S = 1e-3
DURABLE_VS_RAW_LIMIT = 1.25
_FIGURES = ("stall_s", "first_stall_s", "stall_max_s", "inflation", "train_s", "durable_s", "durable_gbps", "cold_load_s",
            "peak_rss_bytes", "peak_pinned_bytes", "staging_touched_bytes", "checkpoints", "iter_s", "lost_in_run_s")


def persisting_steps(iter_s: Sequence[float], first_step: int, ckpt_steps: Sequence[int],
                     stall_s: Sequence[float], durable_s: Sequence[float]) -> set[int]:
    """Steps that started after a save() returned and before that checkpoint was durable.

    The loop's clock is rebuilt from its own records: after the save of step s, step s+1 starts
    stall(s) after save() was called, each later one an iteration after the previous."""
    out: set[int] = set()
    for step, stall, durable in zip(ckpt_steps, stall_s, durable_s):
        elapsed, nxt = stall, step + 1
        while elapsed < durable and nxt - first_step < len(iter_s):
            out.add(nxt)
            elapsed += iter_s[nxt - first_step]
            nxt += 1
    return out


def durable_from_save(record: Mapping[str, Any]) -> list[float]:
    """Seconds from each save() call to its checkpoint's durability, in step order."""
    ckpts, stalls = list(record["ckpt_steps"]), list(record["stall_s"])
    called = list(record.get("save_called_ns") or [])
    done = {int(step): int(ns) for step, ns in record.get("commit_done_ns") or []}
    if called and len(called) == len(ckpts) and all(s in done for s in ckpts):
        return [(done[s] - t) / 1e9 for s, t in zip(ckpts, called)]
    durable = list(record.get("time_to_durable_s") or [])
    return durable if len(durable) == len(ckpts) else stalls  # synchronous: durable when save() returns


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def run_figures(record: Mapping[str, Any]) -> dict[str, Any]:
    """One measured run's figures from its record (what training/bench/child.py writes)."""
    iters, first = list(record["iter_s"]), int(record["first_step"])
    ckpts, stalls = list(record["ckpt_steps"]), list(record["stall_s"])
    durable = durable_from_save(record)
    busy = persisting_steps(iters, first, ckpts, stalls, durable)
    steps = range(first + 1, first + len(iters))  # without the warm-up step
    quiet = [iters[s - first] for s in steps if s not in busy]
    loud = [iters[s - first] for s in steps if s in busy]
    base = _median(quiet)
    durable_s = _median(durable)
    nbytes = record.get("checkpoint_bytes") or 0
    return {
        "kind": record["kind"], "every": record.get("every"), "round": record.get("round"),
        "checkpoints": len(ckpts), "iter_s": base,
        "stall_s": _median(stalls[1:] or stalls), "first_stall_s": stalls[0] if stalls else None,
        "stall_max_s": max(stalls, default=None),
        "inflation": statistics.median(loud) / base - 1.0 if loud and base else None,
        "train_s": sum(iters[1:]) + sum(stalls),
        "lost_in_run_s": (sum(iters[1:]) + sum(stalls) - base * (len(iters) - 1)) / len(ckpts)
        if ckpts and base is not None else None,
        "durable_s": durable_s,
        "durable_gbps": nbytes / durable_s / 1e9 if durable_s and nbytes else None,
        "checkpoint_bytes": nbytes or None,
        "cold_load_s": record.get("cold_load_s"),
        "cold_load_resident": record.get("cold_load_resident"),
        "peak_rss_bytes": record.get("peak_rss_bytes"),
        "peak_pinned_bytes": record.get("peak_pinned_bytes"),
        "staging_touched_bytes": record.get("staging_touched_bytes") or None,  # pccheck only
    }


def lost_per_checkpoint(train_s: float, none_train_s: float, checkpoints: int) -> float:
    """Training time one checkpoint cost: the run against the `none` run, per checkpoint."""
    if checkpoints <= 0:
        raise ValueError("a run with no checkpoints has no training time lost per checkpoint")
    return (train_s - none_train_s) / checkpoints


def spread(values: Iterable[float | None]) -> dict[str, Any]:
    """Median with the range it came from (the repeats are few: min/max says more than an IQR)."""
    got = [v for v in values if v is not None]
    if not got:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(got), "min": min(got), "max": max(got), "n": len(got)}


def aggregate(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per kind and K: every figure's median and spread over the rounds, with lost/ckpt and
    overhead taken against the `none` run of the same round (interleaved repeats pair up)."""
    runs = [run_figures(r) for r in records]
    none = {r["round"]: r["train_s"] for r in runs if r["kind"] == "none"}
    cells: dict[tuple[str, int | None], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if r["kind"] != "none":
            if r["round"] not in none:
                raise ValueError(f"round {r['round']} has no 'none' run to compare {r['kind']} with")
            r["lost_per_ckpt_s"] = lost_per_checkpoint(r["train_s"], none[r["round"]], r["checkpoints"])
            r["overhead"] = r["train_s"] / none[r["round"]] - 1.0
        cells[(r["kind"], r["every"])].append(r)
    out = []
    for (kind, every), rows in cells.items():
        row: dict[str, Any] = {"kind": kind, "every": every, "rounds": len(rows)}
        for name in (*_FIGURES, "lost_per_ckpt_s", "overhead"):
            row[name] = spread(r.get(name) for r in rows)
        out.append(row)
    return out


def _figure(results: Sequence[Mapping[str, Any]], kind: str, name: str, every: int | None = None) -> float | None:
    for r in results:
        if r["kind"] == kind and (every is None or r["every"] == every):
            return r[name]["median"]
    return None


def _verdict(name: str, text: str, figure: float | None, limit: float | None, met: bool | None,
             **more: Any) -> dict[str, Any]:
    return {"name": name, "target": text, "figure": figure, "limit": limit, "met": met, **more}


def _durable_verdict(name: str, kind: str, results: Sequence[Mapping[str, Any]], raw_write_s: float | None,
                     every: int | None) -> dict[str, Any]:
    durable = _figure(results, kind, "durable_s", every)
    ratio = durable / raw_write_s if durable is not None and raw_write_s else None
    why = f"not measured: no {kind} run" if durable is None else "not measured: no raw-disk write" \
        if not raw_write_s else None
    return _verdict(name, f"{kind} time to durable (from the save() call) <= 1.25 x the raw disk write", ratio,
                    DURABLE_VS_RAW_LIMIT, None if ratio is None else ratio <= DURABLE_VS_RAW_LIMIT, unit="x",
                    every=every, **({"why": why} if why else {}))


def targets(results: Sequence[Mapping[str, Any]], raw_write_s: float | None) -> list[dict[str, Any]]:
    """The issue's CPU targets, each with its figure and met (True/False; None: not measured)."""
    absent = f"not measured: no {HEADLINE} run"
    everys = sorted({r["every"] for r in results if r["every"] is not None})
    first = everys[0] if everys else None
    stall = _figure(results, HEADLINE, "stall_s", first)
    out = [_verdict("deferred-stall", f"{HEADLINE} stall <= 1 ms", stall, DEFERRED_STALL_LIMIT_S,
                    None if stall is None else stall <= DEFERRED_STALL_LIMIT_S, unit="s", every=first,
                    **({"why": absent} if stall is None else {}))]
    out.append(_durable_verdict("durable-vs-raw", HEADLINE, results, raw_write_s, first))
    if any(r["kind"] == "pccheck-sync" for r in results):  # the same for sync, where it was run
        out.append(_durable_verdict("durable-vs-raw-sync", "pccheck-sync", results, raw_write_s, first))
    for every in everys or [None]:
        ours = _figure(results, HEADLINE, "lost_per_ckpt_s", every)
        peers = {p: v for p in PEERS if (v := _figure(results, p, "lost_per_ckpt_s", every)) is not None}
        best = min(peers, key=peers.__getitem__) if peers else None
        why = absent if ours is None else "not measured: no peer run" if best is None else None
        limit = None if best is None else peers[best]
        out.append(_verdict(f"lost-below-peers-every-{every}",
                            f"{HEADLINE} training time lost per checkpoint below every peer's (every {every})",
                            ours, limit, None if ours is None or limit is None else ours < limit, unit="s",
                            every=every, peer=best, **({"why": why} if why else {})))
    return out


# The GPU targets (H100/H200, seed-2048): per pccheck mode run, each with its figure.
GPU_STALL_LIMIT_S = 10e-3
GPU_INFLATION_LIMIT = 0.01
GPU_LOST_LIMIT_ITERATIONS = 0.25
GPU_DURABLE_BANDWIDTH_SHARE = 0.90
GPU_OVERHEAD_LIMITS = {25: 0.03, 50: 0.015}
GPU_COLD_LOAD_LIMIT = 1.1
GPU_KINDS = ("pccheck-deferred", "pccheck-gpu", "pccheck-auto", "pccheck-sync")


def gpu_targets(results: Sequence[Mapping[str, Any]], raw: Mapping[str, Any],
                pinned_budget_bytes: int) -> list[dict[str, Any]]:
    """The GPU targets for every pccheck mode that was run, at its first K.

    `raw` is the bench's raw-disk summary (``direct_write_s`` and ``read_s`` spreads over the
    same bytes as the checkpoint). Overheads at K=25/50 are the run's own where it ran at that
    K, else derived from its training time lost per checkpoint: lost / (K x iteration), which
    holds while a checkpoint is durable within K iterations."""
    iteration = _figure(results, "none", "iter_s")
    direct = (raw.get("direct_write_s") or {}).get("median")
    read = (raw.get("read_s") or {}).get("median")
    out: list[dict[str, Any]] = []
    for kind in GPU_KINDS:
        everys = sorted({r["every"] for r in results if r["kind"] == kind and r["every"] is not None})
        if not everys:
            continue
        every = everys[0]

        def fig(name: str, k: int | None = every) -> float | None:
            return _figure(results, kind, name, k)

        stall = fig("stall_s")
        out.append(_limit_verdict(f"{kind}-stall", f"{kind} stall per checkpoint <= 10 ms", stall,
                                  GPU_STALL_LIMIT_S, "s", every))
        inflation = fig("inflation")
        out.append(_limit_verdict(f"{kind}-inflation", f"{kind} iteration inflation while persisting <= 1 %",
                                  inflation, GPU_INFLATION_LIMIT, "%", every))
        lost = fig("lost_per_ckpt_s")
        share = lost / iteration if lost is not None and iteration else None
        out.append(_limit_verdict(f"{kind}-lost", f"{kind} training time lost per checkpoint <= 0.25 of one "
                                  f"iteration", share, GPU_LOST_LIMIT_ITERATIONS, "iterations", every))
        durable = fig("durable_s")
        bandwidth = direct / durable if direct and durable else None
        out.append(_limit_verdict(f"{kind}-durable", f"{kind} time to durable at >= 90 % of the O_DIRECT "
                                  f"bandwidth of the same run", bandwidth, GPU_DURABLE_BANDWIDTH_SHARE, "share",
                                  every, at_least=True))
        for k, limit in GPU_OVERHEAD_LIMITS.items():
            measured = fig("overhead", k)
            derived = lost / (k * iteration) if measured is None and lost is not None and iteration else None
            out.append(_limit_verdict(f"{kind}-overhead-every-{k}", f"{kind} overhead with a checkpoint every {k} "
                                      f"iterations <= {limit:.1%}", measured if measured is not None else derived,
                                      limit, "%", k, **({"derived_from_every": every} if derived is not None else {})))
        cold = fig("cold_load_s")
        out.append(_limit_verdict(f"{kind}-cold-load", f"{kind} cold load to the GPU <= 1.1 x size / read bandwidth",
                                  cold / read if cold is not None and read else None, GPU_COLD_LOAD_LIMIT, "x", every))
        pinned = fig("peak_pinned_bytes")
        out.append(_limit_verdict(f"{kind}-pinned", f"{kind} pinned host memory <= the configured budget "
                                  f"(staging cap + load buffer)", pinned, pinned_budget_bytes, "bytes", every))
    return out


def _limit_verdict(name: str, text: str, figure: float | None, limit: float, unit: str, every: int | None,
                   at_least: bool = False, **more: Any) -> dict[str, Any]:
    met = None if figure is None else (figure >= limit if at_least else figure <= limit)
    why = {} if figure is not None else {"why": "not measured"}
    return _verdict(name, text, figure, limit, met, unit=unit, every=every, **why, **more)
