"""The campaign's light child process: saves PRNG-filled states with the engine, no torch.

    python -m ckptlab.faults.saver CONFIG.json

It drives ``ckptlab._engine.Engine`` exactly as the pccheck checkpointer does (same skeleton,
layout and manifest meta, prepared by the parent with :func:`ckptlab.faults.payload.plan_step`)
but starts in ~0.1 s instead of the ~1.5 s of ``import torch``, so a campaign can afford
hundreds of crashes. Faults and I/O recording come from the engine options in CONFIG (the
campaign sets them) and are otherwise off.

It appends a history to the ack log, one line per event, each line written with O_APPEND and
fsynced before the process goes on (the ALICE "stdout so far"): ``submit S`` before a save is
handed to the engine, ``staged S ID`` once save() returned, ``commit S 1 ID`` / ``commit S 0 ID``
for every checkpoint the engine acknowledged (durable) or failed, in the engine's order,
``fail S ERRNO OP`` for each failure it reported, ``error S ERRNO`` when save() itself raised,
``freed`` when it deleted the filler file after a failure (ENOSPC tier), ``done`` at the end.
With a session's ``fill`` "stream" a save fills an engine stream itself, as deferred snapshots
do (open_stream, acquire_chunk, queue_chunk; pairs of chunks queued in swapped order where
staging holds two), and ``seal S`` is logged just before it seals: a step committed without
that line is a violation (the engine committed a stream nobody sealed).
A background thread polls the engine every millisecond, so acknowledgements are recorded
while saves are still in flight. Only what is in this log counts as acknowledged.

CONFIG keys: dir, seed, layout ([name, dtype, shape] list), plans ({step: plan}), ack_log,
sessions ([{engine: {Engine kwargs}, steps: [...], compute_ms, wait_each, fill, seal_delay_ms}]), filler (a path to
delete after the first failure, optional), ack_fsync (default true).
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from ckptlab import _engine
from ckptlab.faults.payload import TensorSpec, tensor_bytes


def segments_for(plan: dict[str, Any], layout: list[TensorSpec], seed: int, step: int):
    """(meta_json, segments, keepalive) for Engine.submit of ``step``'s state."""
    skeleton = np.frombuffer(bytes.fromhex(plan["skeleton"]), dtype=np.uint8)
    keep = [skeleton]
    segments = [(skeleton.ctypes.data, skeleton.nbytes, 0)]
    by_name = {f"model/{t.name}": t for t in layout}  # capture() names tensors by their path
    storages = plan["meta"]["storages"]
    for entry in plan["meta"]["tensors"]:  # one storage each: the templates share no memory
        t = by_name[entry["name"]]
        if not t.nbytes:
            continue
        arr = np.frombuffer(tensor_bytes(seed, step, t.name, t.nbytes), dtype=np.uint8)
        keep.append(arr)
        segments.append((arr.ctypes.data, arr.nbytes, storages[entry["storage"]]["offset"] + entry["byte_offset"]))
    return json.dumps(plan["meta"], separators=(",", ":")), segments, keep


def fill_stream(engine: Any, step: int, meta: str, segments, total_bytes: int, chunk_bytes: int, ack: "AckLog",
                seal_delay_s: float = 0.0) -> int:
    """Save ``step`` through an engine stream: each chunk zeroed, its segments' bytes copied in,
    queued (pairs swapped where staging holds two, so chunks reach the writers out of order);
    after ``seal_delay_s`` (a judged copy's verdict taking its time) ``seal S`` logged, then
    sealed. Returns the checkpoint id."""
    sid = engine.open_stream(step, meta, total_bytes)
    stream = (max(total_bytes, 1) + 4095) // 4096 * 4096
    swap = engine.staging_buffers >= 2
    held: int | None = None
    for _ in range(-(-stream // chunk_bytes)):
        chunk, address, begin, nbytes = engine.acquire_chunk(sid)
        ctypes.memset(address, 0, nbytes)
        for ptr, n, at in segments:
            lo, hi = max(at, begin), min(at + n, begin + nbytes)
            if lo < hi:
                ctypes.memmove(address + lo - begin, ptr + lo - at, hi - lo)
        if swap and held is None:
            held = chunk
            continue
        engine.queue_chunk(sid, chunk)
        if held is not None:
            engine.queue_chunk(sid, held)
            held = None
    if held is not None:
        engine.queue_chunk(sid, held)
    if seal_delay_s:
        time.sleep(seal_delay_s)
    ack.line(f"seal {step}")
    engine.seal(sid)
    return sid


class AckLog:
    def __init__(self, path: str, fsync: bool = True) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._fsync = fsync
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            os.write(self._fd, (text + "\n").encode())
            if self._fsync:
                os.fsync(self._fd)


class PollingThread:
    """Calls ``poll()`` every millisecond on a thread of its own, and once more after stop(),
    so an ack log is written as soon as the checkpointer reports something."""

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def poll(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()


class Poller(PollingThread):
    """Records acknowledgements and failures as soon as the engine reports them."""

    def __init__(self, engine: Any, ack: AckLog, on_failure) -> None:
        self._engine, self._ack, self._on_failure = engine, ack, on_failure
        self._seen = 0
        super().__init__("saver-poll")

    def poll(self) -> None:
        with self._lock:
            records = self._engine.commit_records()
            for r in records[self._seen:]:
                self._ack.line(f"commit {r['step']} {int(r['ok'])} {r['ckpt_id']}")
            self._seen = len(records)
            while (f := self._engine.take_failure()) is not None:
                self._ack.line(f"fail {f['step']} {f['errno']} {f['op'].replace(' ', '_')}")
                self._on_failure()


def run(cfg: dict[str, Any]) -> int:
    ack = AckLog(cfg["ack_log"], cfg.get("ack_fsync", True))
    layout = [TensorSpec.from_json(v) for v in cfg["layout"]]
    seed = int(cfg["seed"])
    plans = cfg["plans"]
    filler = cfg.get("filler")

    def free_filler() -> None:
        nonlocal filler
        if filler and os.path.exists(filler):
            os.unlink(filler)
            ack.line("freed")
        filler = None

    ack.line(f"start {os.getpid()}")
    print("ready", flush=True)
    for si, session in enumerate(cfg["sessions"]):
        try:
            engine = _engine.Engine(cfg["dir"], **session["engine"])
        except OSError as e:
            ack.line(f"error-open {si} {e.errno}")
            free_filler()
            continue
        ack.line(f"open {si}")
        poller = Poller(engine, ack, free_filler)
        compute = session.get("compute_ms", 0) / 1000.0
        for step in session["steps"]:
            if compute:
                time.sleep(compute)
            meta, segments, keep = segments_for(plans[str(step)], layout, seed, step)
            ack.line(f"submit {step}")
            try:
                total = plans[str(step)]["total_bytes"]
                if session.get("fill", "submit") == "stream":
                    cid = fill_stream(engine, step, meta, segments, total, session["engine"]["chunk_bytes"], ack,
                                      session.get("seal_delay_ms", 0) / 1000.0)
                else:
                    cid = engine.submit(step, meta, segments, total)
            except OSError as e:
                ack.line(f"error {step} {e.errno}")
                free_filler()
                continue
            finally:
                del keep
            ack.line(f"staged {step} {cid}")
            if session.get("wait_each"):
                engine.wait()
            poller.poll()
        engine.wait()
        poller.stop()
        engine.close()
        poller.poll()
        ack.line(f"close {si}")
    ack.line("done")
    return 0


def child_main(run_config: Callable[[dict[str, Any]], int], module: str, argv: list[str] | None) -> int:
    """``python -m MODULE CONFIG.json`` for a campaign child: ``run_config`` of the JSON."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m {module} CONFIG.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        return run_config(json.load(f))


def main(argv: list[str] | None = None) -> int:
    return child_main(run, "ckptlab.faults.saver", argv)


if __name__ == "__main__":
    sys.exit(main())
