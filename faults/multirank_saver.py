"""One rank of the campaign's multi-rank world: saves PRNG states through the distributed
checkpointer (core/distributed.py) on gloo, or verifies crashed directories after a relaunch.

    python -m ckptlab.faults.multirank_saver CONFIG.json

The ``multirank`` tier (faults/tiers/multirank.py) starts one such process per rank, all with
the same ``init_file`` (torch.distributed's file rendezvous), and crashes one of them at a
coordinator or engine fault point (the rank's ``faults``), or records every rank's I/O log
for power-loss replay. It imports torch (torch.distributed needs it): the state is tiny.

``mode: "save"`` appends an ack log as faults/saver.py does (each line fsynced before it goes
on): ``start PID``, ``open 0``, ``submit S`` before save(), ``commit S 1 N`` once this rank
acknowledged S (globally committed; :class:`AckPoller`), ``commit S 0 N`` and
``fail S 0 MESSAGE`` when save()/wait() raised, ``done``. Exit 0; 3 when the coordination broke (a peer
died: the expected outcome on the survivors).

``mode: "verify"``: for each directory of ``dirs``, collectively open the checkpointer, agree
on the latest step and load it (every rank), check its bytes and this rank's per-rank entry,
rank 0 also checks that every global record on disk loads in one process (``load_global``),
and with ``o4`` save ``new_step`` and load it back. One JSON line per directory to ``out``.

``unsafe`` names are the tier's teeth (:data:`MUTATIONS`), applied in this process only.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from ckptlab.faults.payload import TensorSpec, check_state, state_for
from ckptlab.faults.saver import AckLog, PollingThread, child_main

COORDINATION_BROKEN_RC = 3
EARLY_ACK_DELAY_S = 0.3
_LATE_WRITES: list[threading.Thread] = []  # early_ack's record writes, joined before the exit


def _skip_record_fsync() -> None:
    """The fsync of the global record's temp file is skipped (and so not logged)."""
    from ckptlab.core import global_commit as gc
    from ckptlab.core.writer_io import WriterIO

    real = WriterIO.fsync

    def fsync(self: WriterIO, fd: int, path: str) -> None:
        if os.path.basename(os.path.dirname(path)) != gc.GLOBAL_DIR:
            real(self, fd, path)

    WriterIO.fsync = fsync  # type: ignore[method-assign]


def _early_ack() -> None:
    """Rank 0 reports the record written at once and writes it EARLY_ACK_DELAY_S later: every
    rank acknowledges a step whose record is not yet durable."""
    from ckptlab.core import global_commit as gc

    real = gc.write_record

    def write_record(directory: str, record: Any, io: Any = None) -> str:
        def later() -> None:
            time.sleep(EARLY_ACK_DELAY_S)
            real(directory, record, io) if io is not None else real(directory, record)
        t = threading.Thread(target=later)
        t.start()
        _LATE_WRITES.append(t)
        return os.path.join(directory, gc.GLOBAL_DIR, gc.record_name(record.step))

    gc.write_record = write_record  # type: ignore[assignment]


MUTATIONS: dict[str, Callable[[], None]] = {"skip_record_fsync": _skip_record_fsync, "early_ack": _early_ack}


def _state(layout: list[TensorSpec], seed: int, step: int, rank: int) -> dict[str, Any]:
    from ckptlab.core import per_rank

    return state_for(layout, seed, step) | {"rank": per_rank({"rank": rank, "step": step})}


def _check(tree: Any, layout: list[TensorSpec], seed: int, step: int, rank: int, others: tuple[int, ...],
           world_matches: bool) -> str | None:
    problem = check_state({k: v for k, v in tree.items() if k != "rank"} if isinstance(tree, dict) else tree,
                          layout, seed, step, others)
    if problem is None and world_matches and tree.get("rank") != {"rank": rank, "step": step}:
        problem = f"rank {rank} got per-rank entry {tree.get('rank')!r} for step {step}"
    return problem


class AckPoller(PollingThread):
    """Logs ``commit S 1 N`` for each step this rank acknowledged, as soon as ``stats()`` shows
    it (a thread polls every millisecond while saves overlap). Steps resolve in order, so a
    step skipped between two polls goes unlogged: the log never claims more than was
    acknowledged, which is the side the oracle needs."""

    def __init__(self, ck: Any, ack: AckLog, steps: list[int]) -> None:
        self._ck, self._ack, self._number = ck, ack, {s: n for n, s in enumerate(steps, 1)}
        self._last: int | None = None
        super().__init__("ack-poll")

    def poll(self) -> None:
        with self._lock:
            last = self._ck.stats()["last_globally_committed_step"]
            if last is not None and last != self._last:
                self._ack.line(f"commit {last} 1 {self._number.get(last, 0)}")
                self._last = last


def _save(cfg: dict[str, Any], rank: int, layout: list[TensorSpec], seed: int) -> int:
    """Save ``steps``; ``overlap``: without waiting between them (max_inflight of the config),
    else wait() after each, so a failed step is known (``commit S 0 N``)."""
    from ckptlab.core import CheckpointConfig, CheckpointError, open_checkpointer

    ack = AckLog(cfg["ack_log"])
    ack.line(f"start {os.getpid()}")
    ck = open_checkpointer(cfg.get("kind", "pccheck"), cfg["dir"], CheckpointConfig(**cfg["config"]))
    ack.line("open 0")
    poller = AckPoller(ck, ack, cfg["steps"])
    broken = False
    for n, step in enumerate(cfg["steps"], 1):
        ack.line(f"submit {step}")
        try:
            ck.save(step, _state(layout, seed, step, rank))
            if not cfg.get("overlap"):
                ck.wait()
        except CheckpointError as e:
            ack.line(f"fail {step} 0 {str(e)[:200].replace(chr(10), ' ')}")
            ack.line(f"commit {step} 0 {n}")
            broken = broken or "restart the job" in str(e)
            continue
        finally:
            poller.poll()
    try:
        ck.wait()
    except CheckpointError as e:
        ack.line(f"fail -1 0 {str(e)[:200].replace(chr(10), ' ')}")
        broken = broken or "restart the job" in str(e)
    poller.stop()
    try:
        ck.close()
    except CheckpointError:
        broken = True
    for t in _LATE_WRITES:
        t.join()
    ack.line("done")
    return COORDINATION_BROKEN_RC if broken else 0


def _o4(ck: Any, layout: list[TensorSpec], seed: int, new: int, rank: int) -> list[str]:
    """O4 in the relaunched world: a new step saves and loads back on every rank."""
    from ckptlab.core import CheckpointError

    try:
        ck.save(new, _state(layout, seed, new, rank))
        ck.wait()
        step, tree = ck.load()
    except CheckpointError as e:
        return [f"the relaunched world could not save and load step {new}: {type(e).__name__}: {str(e)[-200:]}"]
    if step != new:
        return [f"after a new save of step {new} the world loaded step {step}"]
    p = _check(tree, layout, seed, step, rank, (), True)
    return [] if p is None else [f"the new step {new} does not load back: {p}"]


def _verify(cfg: dict[str, Any], rank: int, layout: list[TensorSpec], seed: int) -> int:
    from ckptlab.core import CheckpointConfig, NoCheckpointError, open_checkpointer
    from ckptlab.core import global_commit as gc
    from ckptlab.core.distributed import load_global

    others = tuple(cfg["issued"])
    with open(cfg["out"], "w") as out:
        for entry in cfg["dirs"]:
            d, o4 = entry["dir"], entry.get("o4", False)
            res: dict[str, Any] = {"dir": d, "rank": rank, "step": None, "problems": []}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if rank == 0:  # every record on disk must load: none without all its parts durable
                    for s, _ in gc.recorded_steps(d):
                        try:
                            got, tree = load_global(d, step=s, per_rank_of=0, threads=1)
                            if (p := _check(tree, layout, seed, got, 0, others, True)) is not None:
                                res["problems"].append(f"global record of step {s} loads wrong bytes: {p}")
                        except Exception as e:  # noqa: BLE001 - any failure is the finding
                            res["problems"].append(f"global record of step {s} is on disk but does not load: "
                                                   f"{type(e).__name__}: {str(e)[-200:]}")
                ck = open_checkpointer(cfg.get("kind", "pccheck"), d, CheckpointConfig(**cfg["config"]))
                try:
                    try:
                        step, tree = ck.load()
                        res["step"] = step
                        if (p := _check(tree, layout, seed, step, rank, others, True)) is not None:
                            res["problems"].append(f"loaded step {step} is not what was saved: {p}")
                    except NoCheckpointError:
                        pass
                    if o4:
                        res["problems"] += _o4(ck, layout, seed, int(cfg["new_step"]), rank)
                finally:
                    ck.close()
            out.write(json.dumps(res) + "\n")
            out.flush()
    return 0


def run(cfg: dict[str, Any]) -> int:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank, world = int(cfg["rank"]), int(cfg["world"])
    for name in cfg.get("unsafe", []) if cfg["mode"] == "save" else []:  # the relaunch is a correct world
        MUTATIONS[name]()
    layout = [TensorSpec.from_json(v) for v in cfg["layout"]]
    dist.init_process_group("gloo", init_method=f"file://{cfg['init_file']}", rank=rank, world_size=world)
    rc = (_verify if cfg["mode"] == "verify" else _save)(cfg, rank, layout, int(cfg["seed"]))
    if rc == 0 and cfg["mode"] == "verify":
        dist.destroy_process_group()
    os._exit(rc)  # a broken gloo group must not hang the exit (a dead peer's connections)


def main(argv: list[str] | None = None) -> int:
    return child_main(run, "ckptlab.faults.multirank_saver", argv)


if __name__ == "__main__":
    sys.exit(main())
