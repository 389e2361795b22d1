"""SIGTERM and SIGINT to ``ckptlab bench`` become an exception in its main thread, so that the
runner's ``finally`` blocks run: they stop the measured run's child and remove the work dir
(SIGTERM's default action ends the process with neither, orphaning a child that may train for
hours next to GiBs of checkpoints)."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["BenchInterrupted", "STOP_SIGNALS", "stop_on_signals"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class BenchInterrupted(Exception):
    """The bench was told to stop by ``signum``; raised once, where the main thread was. The
    runner sets ``work_dir`` to the work dir it removed."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.work_dir: Path | None = None
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: the first SIGTERM/SIGINT raises BenchInterrupted; later ones are ignored, so the
    cleanup it sets off (bounded: a grace period, then SIGKILL) is not cut short. Outside the
    main thread, where Python cannot take signals, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = False

    def handle(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise BenchInterrupted(signum)

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
