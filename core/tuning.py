"""From measured bandwidths to a checkpoint configuration: the PCcheck §3.4 rule, made exact.

Symbols: m = state bytes per checkpoint, t = iteration time without checkpoints, b = slowdown
budget (0.01 = 1 %), q = 1 + b the tolerated slowdown factor, M = host memory for staging,
W = the chosen writer configuration's measured bandwidth (bytes/s, the engine's own submit to
durable), N = max_inflight, K = checkpoint interval in iterations.

1. Writers. Among the measured (io_mode, threads), take the fewest threads (O_DIRECT before
   buffered at equal threads) whose bandwidth is within 5 % of the best: more threads only
   where they measured faster than noise. W is its bandwidth; T_1 = m / W is one checkpoint's
   time to durable.
2. Chunks. chunk_bytes = the largest power of two <= 16 MiB and <= m / (4 * threads), at least
   64 KiB: every writer gets >= 4 chunks (the copy of one overlaps the write of the last, and
   a slow writer takes fewer), and 16 MiB keeps per-chunk costs (syscall, CRC setup) negligible.
3. Staging and N. A checkpoint in flight holds its own m (rounded up to chunks) of staging, so
   M fits S = floor(M / m) of them. The rate needs one checkpoint persisting (below, K is
   chosen so that K * q * t >= T_1); one more slot lets a save() arrive while the last
   checkpoint's tail is still persisting (a slower fsync, a neighbour on the disk) without
   waiting: N = min(2, S), staging = N * m. With S = 0, N = 1 and staging = M (rounded down to
   chunks): save() then waits for the writers to free the rest, and the stall below grows by
   (m - staging) / W.
4. Storage bound (PCcheck: K >= T_w / (N * q * t)). N slots, each busy for T_w, must be freed
   as fast as checkpoints arrive, one every K * q * t seconds. N checkpoints sharing the device
   each take T_w = N * m / W, so K_storage = ceil(m / (W * q * t)): concurrency hides latency,
   it cannot beat bandwidth.
5. Stall bound. Each checkpoint costs training s seconds: the copy into staging m / copy_bps
   (plus m / d2h_bps for a GPU state, plus the wait of step 3), or a measured ``lost_per_ckpt_s``
   from ``ckptlab bench`` (which also sees the writers competing for cores and memory
   bandwidth, which a probe cannot). Overhead s / (K * t) <= b gives K_stall = ceil(s / (b * t)).
6. K = max(K_storage, K_stall, 1); interval_s = K * t. ``bound`` names the larger term.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ckptlab.core.storage_probe import StorageProfile, WriteMeasurement

__all__ = ["TuningInputs", "Recommendation", "recommend", "tune_document", "read_profile", "TUNE_SCHEMA",
           "THREADS_MARGIN", "MAX_CHUNK_BYTES"]

TUNE_SCHEMA = "ckptlab.tune/1"  # ckptlab tune --json / --save; CheckpointConfig.auto(probe=PATH) reads it

THREADS_MARGIN = 0.05  # more threads must measure this much faster to be chosen
MAX_CHUNK_BYTES = 16 << 20
MIN_CHUNK_BYTES = 64 << 10
CHUNKS_PER_WRITER = 4
WANTED_INFLIGHT = 2


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _gbps(bps: float) -> str:
    return f"{bps / 1e9:.2f} GB/s"  # decimal, as the table and the JSON's *_gbps


def _ceil(x: float) -> int:
    return max(1, math.ceil(round(x, 6)))  # 100.00000000000001 iterations (float noise) is 100


@dataclass(frozen=True)
class TuningInputs:
    """What the rule needs besides the measurements (symbols in the module docstring)."""

    state_bytes: int
    iteration_s: float
    budget: float = 0.01
    staging_budget_bytes: int | None = None  # None: 2 * state_bytes (PCcheck's default DRAM ratio)
    lost_per_ckpt_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.state_bytes, int) or isinstance(self.state_bytes, bool) or self.state_bytes < 1:
            raise ValueError(f"state_bytes must be an integer >= 1, got {self.state_bytes!r}")
        if not self.iteration_s > 0:
            raise ValueError(f"iteration_s must be > 0 seconds, got {self.iteration_s!r}")
        if not 0 < self.budget < 1:
            raise ValueError(f"budget must be a fraction in (0, 1), e.g. 0.01 for 1 %, got {self.budget!r}")
        if self.staging_budget_bytes is not None and self.staging_budget_bytes < 1:
            raise ValueError(f"staging_budget_bytes must be >= 1, got {self.staging_budget_bytes!r}")
        if self.lost_per_ckpt_s is not None and not self.lost_per_ckpt_s >= 0:
            raise ValueError(f"lost_per_ckpt_s must be >= 0 seconds, got {self.lost_per_ckpt_s!r}")

    @property
    def staging_budget(self) -> int:
        return 2 * self.state_bytes if self.staging_budget_bytes is None else self.staging_budget_bytes


@dataclass(frozen=True)
class Recommendation:
    """The rule's outputs; ``config_fields()`` are CheckpointConfig fields, the rest explain them."""

    writer_threads: int
    io_mode: str
    chunk_bytes: int
    max_inflight: int
    staging_bytes: int
    interval_steps: int
    interval_s: float
    bound: str  # "storage" or "stall": which term set interval_steps
    write_bps: float
    time_to_durable_s: float
    stall_s: float
    reasons: tuple[str, ...] = field(default=())

    def config_fields(self) -> dict[str, Any]:
        return dict(writer_threads=self.writer_threads, io_mode=self.io_mode, chunk_bytes=self.chunk_bytes,
                    max_inflight=self.max_inflight, staging_bytes=self.staging_bytes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"reasons": list(self.reasons)}


def _choose_writers(writes: tuple[WriteMeasurement, ...]) -> tuple[WriteMeasurement, WriteMeasurement]:
    """(chosen, fastest): the fewest threads within THREADS_MARGIN of the fastest."""
    fastest = max(writes, key=lambda w: w.bps)
    order = sorted(writes, key=lambda w: (w.threads, w.io_mode != "direct"))
    chosen = next(w for w in order if w.bps >= (1 - THREADS_MARGIN) * fastest.bps)
    return chosen, fastest


def _chunk_bytes(state_bytes: int, threads: int) -> int:
    per = state_bytes // (CHUNKS_PER_WRITER * threads)
    chunk = MAX_CHUNK_BYTES
    while chunk > MIN_CHUNK_BYTES and chunk > per:
        chunk //= 2
    return chunk


def recommend(inputs: TuningInputs, profile: StorageProfile) -> Recommendation:
    """Apply the rule (module docstring) to ``profile``'s measurements."""
    if not profile.writes:
        raise ValueError(f"the storage profile of {profile.directory} has no write measurement")
    m, t, b = inputs.state_bytes, inputs.iteration_s, inputs.budget
    q = 1 + b
    reasons: list[str] = []

    chosen, fastest = _choose_writers(profile.writes)
    w = chosen.bps
    t1 = m / w
    if chosen is fastest:
        reasons.append(f"{chosen.io_mode} I/O with {chosen.threads} writer thread(s) measured fastest "
                       f"({_gbps(w)}).")
    else:
        reasons.append(f"{chosen.io_mode} I/O with {chosen.threads} writer thread(s) measured {_gbps(w)}, within "
                       f"{THREADS_MARGIN:.0%} of the fastest ({fastest.io_mode}, {fastest.threads} threads, "
                       f"{_gbps(fastest.bps)}), so the extra threads are not worth their cores.")
    reasons.append(f"One checkpoint of {_mib(m)} takes {t1:.3g} s to be durable at that rate.")

    chunk = _chunk_bytes(m, chosen.threads)
    reasons.append(f"Chunks of {_mib(chunk)} give each of the {chosen.threads} writer(s) at least "
                   f"{CHUNKS_PER_WRITER} chunks (or the 16 MiB cap).")

    m_staged = -(-m // chunk) * chunk
    slots = inputs.staging_budget // m_staged
    extra_wait = 0.0
    if slots >= 1:
        n = min(WANTED_INFLIGHT, slots)
        staging = n * m_staged
        reasons.append(f"max_inflight {n}: one checkpoint persisting plus one arriving while its tail persists"
                       + (" (the staging budget fits only one)" if n < WANTED_INFLIGHT else "")
                       + f"; staging {_mib(staging)} of the {_mib(inputs.staging_budget)} budget.")
    else:
        n = 1
        staging = max(chunk, inputs.staging_budget // chunk * chunk)
        extra_wait = max(0, m - staging) / w
        reasons.append(f"The staging budget ({_mib(inputs.staging_budget)}) holds less than one checkpoint: "
                       f"max_inflight 1, staging {_mib(staging)}, and save() waits {extra_wait:.3g} s for the "
                       f"writers to free the rest.")

    if inputs.lost_per_ckpt_s is not None:
        stall = inputs.lost_per_ckpt_s
        reasons.append(f"Each checkpoint costs training {stall:.3g} s (measured lost_per_ckpt_s).")
    else:
        stall = m / profile.copy_bps + extra_wait
        what = f"the copy into staging at {_gbps(profile.copy_bps)}"
        if profile.d2h_bps is not None:
            stall += m / profile.d2h_bps
            what += f" and the device-to-host copy at {_gbps(profile.d2h_bps)}"
        reasons.append(f"Each checkpoint stalls training about {stall:.3g} s ({what}"
                       + (", and the wait for staging" if extra_wait else "") + ").")

    k_storage = _ceil(m / (w * q * t))
    k_stall = _ceil(stall / (b * t)) if stall > 0 else 1
    k = max(k_storage, k_stall)
    bound = "storage" if k_storage >= k_stall else "stall"
    reasons.append(f"The storage sustains a checkpoint every {k_storage} iteration(s) (K >= m / (W q t) = "
                   f"{m / (w * q * t):.3g}); a {b:.2%} budget allows one every {k_stall} (K >= s / (b t) = "
                   f"{stall / (b * t):.3g}).")
    reasons.append(f"Checkpoint every {k} iterations ({k * t:.3g} s), set by the {bound}.")
    return Recommendation(writer_threads=chosen.threads, io_mode=chosen.io_mode, chunk_bytes=chunk,
                          max_inflight=n, staging_bytes=staging, interval_steps=k, interval_s=k * t, bound=bound,
                          write_bps=w, time_to_durable_s=t1, stall_s=stall, reasons=tuple(reasons))


def tune_document(profile: StorageProfile, inputs: TuningInputs, rec: Recommendation) -> dict[str, Any]:
    """The ``ckptlab.tune/1`` JSON: what was measured, what was asked, what the rule gave."""
    return {"schema": TUNE_SCHEMA, "measured": profile.to_json(),
            "inputs": asdict(inputs) | {"staging_budget_bytes": inputs.staging_budget},
            "recommendation": rec.to_json()}


def read_profile(path: str | os.PathLike) -> StorageProfile:
    """The measurements of a saved tune JSON (``ckptlab tune --save``); a clear ValueError else."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON ({exc}); expected a {TUNE_SCHEMA} file from ckptlab tune --save") from None
    if not isinstance(doc, dict) or doc.get("schema") != TUNE_SCHEMA or not isinstance(doc.get("measured"), dict):
        raise ValueError(f"{path} is not a {TUNE_SCHEMA} file (ckptlab tune --save writes one)")
    try:
        return StorageProfile.from_json(doc["measured"])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
