"""The campaign's torchsave child: saves the PRNG states of faults/payload.py through
``open_checkpointer("torchsave")`` and writes the same ack log as faults/saver.py.

    python -m ckptlab.faults.torchsave_saver CONFIG.json

The tiers crash it as they crash the engine saver: at a named fault point (the session's
CheckpointConfig.faults; core/writer_io.py passes the engine's points), at a random time, or
by replaying its I/O log (CheckpointConfig.io_log) into power-loss states. It imports torch
(1.5-2.5 s before it is ready), so the tiers give it fewer trials than the engine saver.

Ack log (faults/saver.py's AckLog: each line appended and fsynced before it goes on):
``start PID``; per session ``open I`` ... ``close I`` (``error-open I ERRNO`` if the
checkpointer did not open); per step ``submit S`` before save(), then ``staged S K`` and
``commit S 1 K`` once save() returned (torchsave is synchronous: returned = durable; K is the
checkpointer's checkpoint number, the ``ckpt`` of a fault spec), or ``fail S ERRNO FILE`` and
``commit S 0 K`` when save() raised CheckpointWriteError; ``done`` at the end.

CONFIG keys: dir, seed, layout ([name, dtype, shape] list), ack_log, sessions
([{config: {CheckpointConfig fields}, steps: [...], compute_ms, io_log_data, unsafe}]).

``unsafe`` names are teeth for the campaign (``--unsafe``): each removes one durability step
of the Python writer, in this child process only, by replacing a core/writer_io.py method
(:data:`MUTATIONS`); production code has no switch for it. The engine's other mutations have
no torchsave counterpart; the campaign skips torchsave trials under them.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from ckptlab.core.fault_spec import IO_LOG_DATA_ENV
from ckptlab.core.manifest import MANIFEST_NAME
from ckptlab.core.writer_io import WriterIO
from ckptlab.faults.payload import TensorSpec, state_for
from ckptlab.faults.saver import AckLog, child_main


def _skip_data_fsync() -> None:
    """The fsync of state.pt is skipped (and so not logged); MANIFEST's stays, as in the engine."""
    real = WriterIO.fsync

    def fsync(self: WriterIO, fd: int, path: str) -> None:
        if os.path.basename(path) == MANIFEST_NAME:
            real(self, fd, path)

    WriterIO.fsync = fsync  # type: ignore[method-assign]


def _skip_dir_fsync() -> None:
    """Every directory fsync of the Python writer is skipped (and so not logged)."""
    WriterIO.fsync_dir = lambda self, path: None  # type: ignore[method-assign]


MUTATIONS: dict[str, Callable[[], None]] = {"skip_data_fsync": _skip_data_fsync, "skip_dir_fsync": _skip_dir_fsync}


def run(cfg: dict[str, Any]) -> int:
    import ckptlab.core.torchsave  # noqa: F401 - torch: imported before "ready" (kill delays count from there)
    from ckptlab.core import CheckpointConfig, CheckpointWriteError, open_checkpointer

    ack = AckLog(cfg["ack_log"], cfg.get("ack_fsync", True))
    layout = [TensorSpec.from_json(v) for v in cfg["layout"]]
    seed = int(cfg["seed"])
    for name in sorted({m for s in cfg["sessions"] for m in s.get("unsafe", [])}):
        MUTATIONS[name]()
    ack.line(f"start {os.getpid()}")
    print("ready", flush=True)
    for si, session in enumerate(cfg["sessions"]):
        os.environ[IO_LOG_DATA_ENV] = "1" if session.get("io_log_data", True) else "0"
        try:
            ck = open_checkpointer("torchsave", cfg["dir"], CheckpointConfig(**session["config"]))
        except OSError as e:
            ack.line(f"error-open {si} {e.errno}")
            continue
        ack.line(f"open {si}")
        compute = session.get("compute_ms", 0) / 1000.0
        for n, step in enumerate(session["steps"], 1):
            if compute:
                time.sleep(compute)
            state = state_for(layout, seed, step)
            ack.line(f"submit {step}")
            try:
                ck.save(step, state)
            except CheckpointWriteError as e:
                ack.line(f"fail {step} {e.errno} {os.path.basename(e.filename or '-') or '-'}")
                ack.line(f"commit {step} 0 {n}")
                continue
            ack.line(f"staged {step} {n}")
            ack.line(f"commit {step} 1 {n}")
        ck.close()
        ack.line(f"close {si}")
    ack.line("done")
    return 0


def main(argv: list[str] | None = None) -> int:
    return child_main(run, "ckptlab.faults.torchsave_saver", argv)


if __name__ == "__main__":
    sys.exit(main())
