"""One checkpointer interface for the training loop, whatever ``--checkpointer`` names.

``torchsave`` and ``pccheck`` come from ``ckptlab.core.open_checkpointer``. ``dcp`` and
``dcp-async`` wrap PyTorch Distributed Checkpoint here, for side-by-side runs against a peer
users know; ``none`` turns checkpointing off. All of them offer ``save / wait / latest /
load / close`` with the semantics of the core API (DESIGN.md, "Python API").

DCP layout and commit (what ``dcp``/``dcp-async`` add to ``dcp.save``)::

    ckpt_dir/.step_000000000050.partial/   DCP writes here: __0_*.distcp, .metadata last
             (+ trainer_state.pt: everything that is not a model/optimizer tensor,
                written to a temp name, fsynced, renamed)
    fsync(partial dir); rename -> ckpt_dir/step_000000000050/; fsync(ckpt_dir)

A ``step_*`` directory therefore exists only once all of it is durable; DCP on its own
neither fsyncs the directory nor survives a crash while overwriting ``.metadata``.
"""

from __future__ import annotations

import inspect
import io
import os
import re
import shutil
import threading
import time
import uuid
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

try:  # NVTX range + timing record per stage (docs/TRACE.md); free when nothing records
    from ckptlab.profiling.phases import phase as _phase
except ImportError:  # profiling unavailable: stages cost nothing
    import contextlib

    def _phase(name: str, **kwargs: Any) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

__all__ = ["KINDS", "CheckpointerOptions", "Checkpointer", "CheckpointInfo",
           "CheckpointError", "NoCheckpointError", "CheckpointMismatchError",
           "CheckpointerUnavailable", "open_training_checkpointer", "open_dcp_checkpointer",
           "NullCheckpointer", "DcpCheckpointer"]

KINDS = ("none", "torchsave", "pccheck", "dcp", "dcp-async")
CORE_KINDS = ("torchsave", "pccheck")

try:  # the engine's error types, so one ``except`` covers every kind
    from ckptlab.core import (CheckpointError, CheckpointMismatchError,  # type: ignore
                              NoCheckpointError)
except ImportError:  # ckptlab.core not built yet: same names, same hierarchy
    class CheckpointError(RuntimeError):  # type: ignore[no-redef]
        """A checkpoint could not be written, committed or read."""

    class NoCheckpointError(CheckpointError):  # type: ignore[no-redef]
        """No valid checkpoint exists where one was asked for."""

    class CheckpointMismatchError(CheckpointError):  # type: ignore[no-redef]
        """A checkpoint's tensors do not fit the objects it is loaded into."""


class CheckpointerUnavailable(CheckpointError):
    """The requested kind cannot be opened here (e.g. ckptlab.core is not built)."""


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: str
    nbytes: int


class Checkpointer(Protocol):
    def save(self, step: int, state: dict[str, Any]) -> None: ...
    def wait(self) -> None: ...
    def latest(self) -> Any: ...
    def load(self, state: dict[str, Any] | None = None,
             map_location: Any = None) -> tuple[int, dict[str, Any]]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class CheckpointerOptions:
    kind: str
    ckpt_dir: Path
    max_inflight: int = 2
    writer_threads: int = 4
    keep_last: int = 2
    trace: bool = False  # engine timing records (pccheck), for --trace
    snapshot: str = "sync"  # pccheck: CheckpointConfig.snapshot
    writer_cpus: str = ""  # pccheck: CheckpointConfig.writer_cpus

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown checkpointer {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.max_inflight < 1 or self.writer_threads < 1 or self.keep_last < 0:
            raise ValueError("max_inflight and writer_threads must be >= 1, keep_last >= 0")


def open_training_checkpointer(opts: CheckpointerOptions) -> Checkpointer:
    """The checkpointer for ``opts.kind``; ``CheckpointerUnavailable`` if it cannot exist here."""
    if opts.kind == "none":
        return NullCheckpointer()
    if opts.kind in ("dcp", "dcp-async"):
        return DcpCheckpointer(opts.ckpt_dir, async_save=opts.kind == "dcp-async",
                               max_inflight=opts.max_inflight, thread_count=opts.writer_threads,
                               keep_last=opts.keep_last)
    try:
        from ckptlab.core import CheckpointConfig, open_checkpointer  # type: ignore  # noqa: F811
    except ImportError as exc:
        raise CheckpointerUnavailable(
            f"--checkpointer {opts.kind} needs ckptlab.core, which does not import here "
            f"({exc}); build it with `pip install -e .`") from exc
    wanted = {"max_inflight": opts.max_inflight, "writer_threads": opts.writer_threads,
              "keep_last": opts.keep_last, "trace": opts.trace, "snapshot": opts.snapshot,
              "writer_cpus": opts.writer_cpus}
    known = {f.name for f in fields(CheckpointConfig)}
    config = CheckpointConfig(**{k: v for k, v in wanted.items() if k in known})
    return open_checkpointer(opts.kind, str(opts.ckpt_dir), config)


def open_dcp_checkpointer(kind: str, directory: str | os.PathLike[str],
                          config: Any = None) -> "DcpCheckpointer":
    """Factory ``ckptlab.core.open_checkpointer`` calls for ``dcp``/``dcp-async``.

    ``config`` is a ``ckptlab.core.CheckpointConfig`` (or None); its ``max_inflight``,
    ``writer_threads`` and ``keep_last`` apply, the engine-only fields do not.
    """
    if kind not in ("dcp", "dcp-async"):
        raise ValueError(f"not a DCP kind: {kind!r}")
    return DcpCheckpointer(directory, async_save=kind == "dcp-async",
                           max_inflight=getattr(config, "max_inflight", 1),
                           thread_count=getattr(config, "writer_threads", 1),
                           keep_last=getattr(config, "keep_last", 2))


class NullCheckpointer:
    """``--checkpointer none``: saves nothing, so there is never anything to resume from."""

    def save(self, step: int, state: dict[str, Any]) -> None:
        pass

    def wait(self) -> None:
        pass

    def latest(self) -> None:
        return None

    def load(self, state: dict[str, Any] | None = None,
             map_location: Any = None) -> tuple[int, dict[str, Any]]:
        raise NoCheckpointError("--checkpointer none keeps no checkpoints to load")

    def stats(self) -> dict[str, Any]:
        return {"kind": "none", "saves": 0}

    def close(self) -> None:
        pass

    def __enter__(self) -> "NullCheckpointer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- DCP

_STEP_DIR = re.compile(r"^step_(\d{12})$")
_SIDE_FILE = "trainer_state.pt"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes, step: int = -1) -> None:
    """Temp file, fsync, rename (the caller fsyncs the directory)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        with _phase("file_write", step=step, nbytes=len(data)):
            f.write(data)
            f.flush()
        with _phase("file_fsync", step=step, nbytes=len(data)):
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _dir_nbytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _kwargs_supported(fn: Any, **kwargs: Any) -> dict[str, Any]:
    """Keep only the keyword arguments this torch version's ``fn`` accepts."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


@dataclass
class _Pending:
    step: int
    partial: Path
    t_issue: float
    done: threading.Event = field(default_factory=threading.Event)


class DcpCheckpointer:
    """PyTorch DCP behind the ckptlab checkpointer interface (kinds ``dcp``, ``dcp-async``).

    Model and optimizer tensors go through DCP with the ``state_dict`` helpers
    (``get_model_state_dict`` / ``get_optimizer_state_dict``, FQN-keyed as DCP users expect);
    every other entry (scheduler, sampler, RNG states, extras) is captured with ``torch.save``
    at ``save()`` time and written as ``trainer_state.pt`` in the same directory. Runs in a
    single process without a process group. ``async_save=True`` uses ``dcp.async_save``
    (its default stager copies the state before returning), at most ``max_inflight`` at once.
    ``keep_last`` committed checkpoints are kept (0: all), as in ``CheckpointConfig``.
    """

    def __init__(self, ckpt_dir: str | os.PathLike[str], *, async_save: bool = False,
                 max_inflight: int = 1, thread_count: int = 1, keep_last: int = 2) -> None:
        import torch.distributed.checkpoint as dcp  # deferred: heavy import

        self._dcp = dcp
        # Single-process use without a process group is what we intend; DCP warns each call.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
        self.dir = Path(ckpt_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.async_save, self.max_inflight = async_save, max_inflight
        self.thread_count, self.keep_last = thread_count, keep_last
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._error: BaseException | None = None
        self._durable_s: dict[int, float] = {}
        self._stalls: list[float] = []
        self._closed = False
        dist = torch.distributed
        self._no_dist = not (dist.is_available() and dist.is_initialized())
        for stale in self.dir.glob(".step_*"):  # partial/old dirs of a process that died
            shutil.rmtree(stale, ignore_errors=True)

    # -- saving ---------------------------------------------------------------------------

    def save(self, step: int, state: dict[str, Any]) -> None:
        """Issue checkpoint ``step``; returns once the state is captured (dcp-async) or durable."""
        self._check_open()
        self._raise_error()
        t0 = time.perf_counter()
        # Python phases (docs/TRACE.md) on the caller's thread: wait (dcp-async back-pressure),
        # capture, serialize, then dcp_save and _commit's phases (dcp) or dcp_async_save
        # (dcp-async: _commit's phases then run where DCP completes the write).
        if self.async_save:
            self._wait_for_slot()
        with _phase("capture", step=step):
            tensors, side = _split_state(state)
        buf = io.BytesIO()
        with _phase("serialize", step=step):
            torch.save(side, buf)
        partial = self.dir / f".step_{step:012d}.partial"
        shutil.rmtree(partial, ignore_errors=True)  # left over from a crashed attempt
        partial.mkdir()
        writer = self._dcp.FileSystemWriter(str(partial), sync_files=True,
                                            **_kwargs_supported(self._dcp.FileSystemWriter,
                                                                thread_count=self.thread_count))
        pending = _Pending(step, partial, t0)
        extra = _kwargs_supported(self._dcp.save, no_dist=self._no_dist)
        if not self.async_save:
            try:
                with _phase("dcp_save", step=step):
                    self._dcp.save(tensors, storage_writer=writer, checkpoint_id=str(partial),
                                   **extra)
                self._commit(pending, buf.getvalue())
            except Exception as exc:
                shutil.rmtree(partial, ignore_errors=True)
                raise CheckpointError(f"DCP checkpoint of step {step} in {partial} failed: "
                                      f"{exc!r}; the previous checkpoint is kept") from exc
        else:
            with _phase("dcp_async_save", step=step):
                result = self._dcp.async_save(tensors, storage_writer=writer,
                                              checkpoint_id=str(partial), **extra)
            future: Future = getattr(result, "upload_completion", result)
            with self._lock:
                self._pending.append(pending)
            future.add_done_callback(lambda f: self._on_done(pending, f, buf.getvalue()))
        self._stalls.append(time.perf_counter() - t0)

    def _on_done(self, pending: _Pending, future: Future, side: bytes) -> None:
        try:
            future.result()
            self._commit(pending, side)
        except BaseException as exc:  # surfaced at the next save()/wait()
            with self._lock:
                self._error = self._error or CheckpointError(
                    f"DCP checkpoint of step {pending.step} in {pending.partial} failed: {exc!r}")
            shutil.rmtree(pending.partial, ignore_errors=True)
        finally:
            with self._lock:
                if pending in self._pending:
                    self._pending.remove(pending)
            pending.done.set()

    def _commit(self, pending: _Pending, side: bytes) -> None:
        """Side file, then the partial directory made durable and renamed into place. Runs in
        save() (dcp) or on DCP's completion thread (dcp-async); its phases run there too."""
        step = pending.step
        _write_durably(pending.partial / _SIDE_FILE, side, step)
        with _phase("dir_commit", step=step):
            _fsync_dir(pending.partial)
            final = self.dir / f"step_{step:012d}"
            trash = None
            if final.exists():  # same step saved again: move the old one aside, never delete first
                trash = self.dir / f".step_{step:012d}.old-{uuid.uuid4().hex[:8]}"
                os.rename(final, trash)
            os.rename(pending.partial, final)
            _fsync_dir(self.dir)
        with _phase("retain", step=step):
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
            with self._lock:
                self._durable_s[step] = time.perf_counter() - pending.t_issue
                self._retain()

    def _retain(self) -> None:
        """Delete all but the newest ``keep_last`` committed checkpoints (caller holds the lock)."""
        if self.keep_last <= 0:
            return
        steps = sorted(self._committed_steps())
        for step in steps[:-self.keep_last]:
            shutil.rmtree(self.dir / f"step_{step:012d}", ignore_errors=True)

    def _wait_for_slot(self) -> None:
        """Back-pressure: at most ``max_inflight`` async saves in flight, never unbounded."""
        while True:
            with self._lock:
                if len(self._pending) < self.max_inflight:
                    return
                oldest = self._pending[0]
            with _phase("wait", step=oldest.step):  # the step of the checkpoint waited for
                oldest.done.wait()

    def wait(self) -> None:
        """Block until every issued checkpoint is durable; raise the first failure."""
        with self._lock:
            pending = list(self._pending)
        for item in pending:
            item.done.wait()
        self._raise_error()

    def _raise_error(self) -> None:
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def stats(self) -> dict[str, Any]:
        """Same keys as ``ckptlab.core`` checkpointers' ``stats()`` where they apply."""
        with self._lock:
            durable = [self._durable_s[k] for k in sorted(self._durable_s)]
        return {"kind": "dcp-async" if self.async_save else "dcp", "saves": len(self._stalls),
                "stall_total_s": sum(self._stalls),
                "stall_last_s": self._stalls[-1] if self._stalls else 0.0,
                "stall_max_s": max(self._stalls, default=0.0), "committed": len(durable),
                "time_to_durable_s": durable}

    # -- finding and loading --------------------------------------------------------------

    def _committed_steps(self) -> list[int]:
        steps = []
        for entry in self.dir.iterdir() if self.dir.exists() else ():
            match = _STEP_DIR.match(entry.name)
            if match and (entry / ".metadata").is_file() and (entry / _SIDE_FILE).is_file():
                steps.append(int(match.group(1)))
        return steps

    def latest(self) -> CheckpointInfo | None:
        steps = self._committed_steps()
        if not steps:
            return None
        path = self.dir / f"step_{max(steps):012d}"
        return CheckpointInfo(max(steps), str(path), _dir_nbytes(path))

    def load(self, state: dict[str, Any] | None = None,
             map_location: Any = None) -> tuple[int, dict[str, Any]]:
        """Restore the newest committed checkpoint into ``state``'s objects, in place.

        A checkpoint that fails to read is reported and skipped for the next older one; a
        shape/dtype mismatch is not (every older one would mismatch too). Tensors land on
        the devices of the objects they are loaded into; ``map_location`` is unused.
        """
        self._check_open()
        state = dict(state or {})
        failures = []
        for step in sorted(self._committed_steps(), reverse=True):
            path = self.dir / f"step_{step:012d}"
            try:
                with _phase("load", step=step):  # as core's load: one checkpoint read and restored
                    return step, self._load_from(path, state)
            except CheckpointMismatchError:
                raise
            except Exception as exc:  # corrupt or unreadable: fall back, loudly
                warnings.warn(f"skipping unreadable DCP checkpoint {path}: {exc!r}")
                failures.append(f"{path}: {exc!r}")
        detail = f" (unreadable: {'; '.join(failures)})" if failures else ""
        raise NoCheckpointError(f"no valid DCP checkpoint in {self.dir}{detail}")

    def _load_from(self, path: Path, state: dict[str, Any]) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import (set_model_state_dict,
                                                             set_optimizer_state_dict)
        template = _tensor_template(state)
        metadata = self._dcp.FileSystemReader(str(path)).read_metadata()
        _check_shapes(metadata.state_dict_metadata, template, state, path)
        self._dcp.load(template, storage_reader=self._dcp.FileSystemReader(str(path)),
                       checkpoint_id=str(path),
                       **_kwargs_supported(self._dcp.load, no_dist=self._no_dist))
        module = _the_module(state)
        for key, value in state.items():
            if isinstance(value, nn.Module):
                set_model_state_dict(value, template[key])
            elif isinstance(value, torch.optim.Optimizer):
                set_optimizer_state_dict(module, value, template[key])
        side = torch.load(path / _SIDE_FILE, map_location="cpu", weights_only=True)
        for key, value in state.items():
            if key in template:
                continue
            if key not in side:
                raise CheckpointMismatchError(f"entry {key!r} is missing from checkpoint {path}")
            if hasattr(value, "load_state_dict"):
                value.load_state_dict(side[key])
        return {**side, **template}

    # -- lifecycle ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError("checkpointer is closed")

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True

    def __enter__(self) -> "DcpCheckpointer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _the_module(state: dict[str, Any]) -> nn.Module | None:
    modules = [v for v in state.values() if isinstance(v, nn.Module)]
    if len(modules) > 1:
        raise ValueError("the DCP adapter handles one nn.Module per checkpoint")
    return modules[0] if modules else None


def _tensor_template(state: dict[str, Any]) -> dict[str, Any]:
    """FQN-keyed state dicts (sharing storage with the live tensors) for DCP's tensor part."""
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict)
    module = _the_module(state)
    template: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, nn.Module):
            template[key] = get_model_state_dict(value)
        elif isinstance(value, torch.optim.Optimizer):
            if module is None:
                raise ValueError("an optimizer needs its nn.Module in the same checkpoint")
            template[key] = get_optimizer_state_dict(module, value)
    return template


def _split_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(DCP part, side-file part); objects with ``state_dict()`` are captured now."""
    tensors = _tensor_template(state)
    side = {key: (value.state_dict() if hasattr(value, "state_dict") else value)
            for key, value in state.items() if key not in tensors}
    return tensors, side


def _check_shapes(saved: dict[str, Any], template: dict[str, Any], state: dict[str, Any],
                  path: Path) -> None:
    """Refuse a checkpoint of another model shape, naming the first tensor that differs."""
    for key, value in state.items():
        if not isinstance(value, nn.Module):
            continue
        prefix = f"{key}."
        for fqn, tensor in template[key].items():
            meta = saved.get(prefix + fqn)
            if meta is None or not hasattr(meta, "size"):
                raise CheckpointMismatchError(
                    f"tensor {fqn!r} of the model is missing from checkpoint {path}")
            saved_dtype = meta.properties.dtype
            if tuple(meta.size) != tuple(tensor.shape) or saved_dtype != tensor.dtype:
                raise CheckpointMismatchError(
                    f"tensor {fqn!r}: checkpoint {path} holds shape {tuple(meta.size)} "
                    f"{saved_dtype}, the model has shape {tuple(tensor.shape)} {tensor.dtype}")
        unexpected = sorted(k[len(prefix):] for k in saved
                            if k.startswith(prefix) and k[len(prefix):] not in template[key])
        if unexpected:
            raise CheckpointMismatchError(
                f"tensor {unexpected[0]!r} in checkpoint {path} does not exist in the model "
                f"({len(unexpected)} such tensors)")
