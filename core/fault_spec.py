"""The fault spec language, shared by the C++ engine, the Python side and the CLI.

It lives in core because production code carries the fault points: CheckpointConfig reads
the environment names defined here, ``ckptlab train --fault`` arms the engine through it, and
the campaign (faults/) builds its children's environments with it. It imports no torch.

    point=NAME[,ckpt=K][,step=S][,hit=N][,action=kill|eio|enospc|edquot|short|delay=MS][,mode=once|persist]

Rules are joined by ``;``. ``point`` names a fault point of the commit protocol
(:func:`fault_points`); ``ckpt`` (engine checkpoint sequence number, 1-based) and ``step``
(training step) narrow which checkpoint it applies to; ``hit`` fires it at the N-th matching
occurrence (``hit=N`` without ``ckpt`` is "the N-th such operation of the run", SQLite
``ioerr`` style); ``action`` is what happens: SIGKILL of the process (default), an I/O error
(EIO / ENOSPC / EDQUOT) returned by the next write or fsync, a short write followed by
ENOSPC, or a delay. ``mode=persist`` (error actions only) makes the error stay: from the
firing pass on, every operation of :data:`ERROR_POINTS` of that writer fails with the same
errno (a dying disk, not a one-off); the default ``mode=once`` fires once. The engine parses the same text (csrc/fault.cpp); :func:`validate` asks it,
so the two can never disagree on what is valid.

A spec reaches the engine through ``CheckpointConfig(faults=...)``, the ``CKPTLAB_FAULTS``
environment variable (appended; how child processes are armed), or ``--fault`` on the command
line (:func:`add_fault_arguments`). With no spec the engine's fault points cost one relaxed
atomic load each. The Python writers (torchsave, dcp's commit protocol) pass the same points
through core/writer_io.py, which arms the engine's own injector with the same spec.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType

# The one definition of each name; everything else imports these.
FAULTS_ENV = "CKPTLAB_FAULTS"          # appended to CheckpointConfig.faults (core/config.py)
IO_LOG_ENV = "CKPTLAB_IO_LOG"          # I/O recording (faults/iolog.py), read by core/config.py
IO_LOG_DATA_ENV = "CKPTLAB_IO_LOG_DATA"  # "0": record operations without the written bytes

ERROR_ACTIONS = ("eio", "enospc", "edquot", "short")
ACTIONS = ("kill",) + ERROR_ACTIONS + ("delay=MS",)
MODES = ("once", "persist")
# Points whose error action fails a real operation (the one right after the point); a fired
# mode=persist rule fails every later one of these (csrc/fault.cpp fault_point_fails_operation).
ERROR_POINTS = {
    "before_chunk_write": "pwrite of a chunk",
    "before_data_fsync": "fdatasync of a data file",
    "before_manifest": "write of the MANIFEST",
    "before_manifest_fsync": "fsync of the MANIFEST",
    "before_tmpdir_fsync": "fsync of the temp directory",
    "before_rename": "the commit rename",
}


def _compiled_engine() -> ModuleType:
    """``ckptlab._engine``, imported on use: core/config.py imports this module for the names
    above and must import where the engine is not built (see its ``available_cpus``)."""
    from ckptlab import _engine

    return _engine


def fault_points() -> list[str]:
    """Every named fault point of the writers (the engine's and the Python writers'), in
    protocol order."""
    return list(_compiled_engine().fault_points())


def coordinator_points() -> list[str]:
    """The multi-rank coordinator's fault points (core/distributed.py), in protocol order."""
    return list(_compiled_engine().coordinator_fault_points())


# Coordinator points whose error action fails the global record's operation after them
# (csrc/fault.cpp fault_point_fails_operation names them too).
COORDINATOR_ERROR_POINTS = {
    "before_record_fsync": "fsync of the global record's temp file",
    "before_record_rename": "the rename of the global record into place",
    "before_record_dir_fsync": "fsync of DIR/global after the rename",
}


@dataclass(frozen=True)
class FaultRule:
    """One rule of a spec; ``str(rule)`` is its spec text."""

    point: str
    ckpt: int | None = None
    step: int | None = None
    hit: int = 1
    action: str = "kill"
    persist: bool = False  # mode=persist: the error stays for every later failing operation

    def __str__(self) -> str:
        parts = [f"point={self.point}"]
        if self.ckpt is not None:
            parts.append(f"ckpt={self.ckpt}")
        if self.step is not None:
            parts.append(f"step={self.step}")
        if self.hit != 1:
            parts.append(f"hit={self.hit}")
        parts.append(f"action={self.action}")
        if self.persist:
            parts.append("mode=persist")
        return ",".join(parts)

    @property
    def is_error(self) -> bool:
        return self.action in ERROR_ACTIONS

    @property
    def is_kill(self) -> bool:
        return self.action == "kill"


def validate(spec: str) -> None:
    """Raise ValueError (naming the bad token) unless the engine accepts ``spec``."""
    try:
        _compiled_engine().validate_fault_spec(spec)
    except ValueError as e:
        raise ValueError(f"bad fault spec {spec!r}: {e}") from None


def parse(spec: str) -> list[FaultRule]:
    """Parse a spec into rules (validated by the engine's own parser first)."""
    validate(spec)
    rules = []
    for text in spec.split(";"):
        text = text.strip()
        if not text:
            continue
        fields: dict[str, str] = {}
        for field in text.split(","):
            key, _, value = field.strip().partition("=")
            fields["hit" if key == "occurrence" else key] = value
        action = fields.get("action", "kill").replace("delay:", "delay=")
        rules.append(FaultRule(
            point=fields["point"],
            ckpt=int(fields["ckpt"]) if "ckpt" in fields else None,
            step=int(fields["step"]) if "step" in fields else None,
            hit=int(fields.get("hit", 1)),
            action=action,
            persist=fields.get("mode", "once") == "persist",
        ))
    return rules


def join(rules: Iterable[FaultRule | str]) -> str:
    """One spec from rules (or rule strings); validated."""
    spec = ";".join(str(r) for r in rules if str(r).strip())
    validate(spec)
    return spec


def child_env(faults: str = "", io_log: str | None = None, io_log_data: bool = True,
              base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process: arms ``faults`` (and I/O recording) in its engine.

    The child's own ``CKPTLAB_FAULTS`` is replaced, not appended to, so an armed parent
    never leaks its faults into the children it tests.
    """
    env = dict(os.environ if base is None else base)
    env.pop(FAULTS_ENV, None)
    env.pop(IO_LOG_ENV, None)
    env.pop(IO_LOG_DATA_ENV, None)
    if faults:
        validate(faults)
        env[FAULTS_ENV] = faults
    if io_log:
        env[IO_LOG_ENV] = io_log
        env[IO_LOG_DATA_ENV] = "1" if io_log_data else "0"
    return env


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """``--fault SPEC`` (repeatable) and ``--io-log PATH`` for a command that runs the engine."""
    parser.add_argument("--fault", action="append", default=[], metavar="SPEC",
                        help="arm an engine fault point, e.g. point=before_rename,ckpt=3,action=kill "
                             "(repeatable; docs/FAULTS.md)")
    parser.add_argument("--io-log", default=None, metavar="PATH",
                        help="record the engine's file-system operations to PATH for crash-state replay")


def apply_fault_arguments(args: argparse.Namespace) -> str:
    """Arm what :func:`add_fault_arguments` parsed, through the environment of this process
    (CheckpointConfig appends CKPTLAB_FAULTS), and return the combined spec."""
    spec = ";".join(s for s in getattr(args, "fault", []) or [] if s.strip())
    if spec:
        validate(spec)
        existing = os.environ.get(FAULTS_ENV, "")
        os.environ[FAULTS_ENV] = ";".join(p for p in (existing, spec) if p)
    if getattr(args, "io_log", None):
        os.environ[IO_LOG_ENV] = os.path.abspath(args.io_log)
    return spec
