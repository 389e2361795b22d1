"""The one training loop every checkpointer kind, benchmark and campaign runs on.

Step ``k`` (1-based) is: draw batch ``k``, forward, backward, clip, ``optimizer.step()``,
``scheduler.step()``, log ``k <loss>``; then, if ``k % checkpoint_freq == 0``, issue the
checkpoint of step ``k`` (the state *after* k optimizer steps). Resuming from checkpoint
``k`` continues with step ``k + 1``, so an interrupted-and-resumed run repeats exactly the
computations of an uninterrupted one and its loss file is byte-identical.

Crash and stop semantics:

* ``fail_at_step=N``: after step N's loss line is flushed and, when N is a checkpoint step,
  after ``save(N)`` has *returned* (issued, not necessarily durable; with
  ``fail_after_durable`` after ``wait()``), the process sends itself SIGKILL (under torchrun
  only rank ``fail_rank``, by default the last; the others fail at their next collective).
* SIGTERM (one process; not under torchrun, docs/TRAINING.md): the step in progress
  completes, a final checkpoint of that step is issued (unless it was just taken), and the
  run waits up to ``sigterm_budget_s`` from the signal for it to become durable, then exits 0
  (1 if the budget ran out first).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckptlab.core.checkpointer import Checkpointer, open_checkpointer, open_local_checkpointer
from ckptlab.core.commit import LOCK_NAME, DirectoryLock
from ckptlab.core.global_inspect import is_multi_rank
from ckptlab.core.errors import (CheckpointError, CheckpointMismatchError, CorruptCheckpointWarning,
                                 NoCheckpointError)
from ckptlab.training.config import TrainConfig
from ckptlab.training.data import ResumableSampler, SyntheticTokens
from ckptlab.training.distributed import DistContext, launched_rank, launched_world_size
from ckptlab.profiling.lossfile import LossWriter, truncate_loss_file
from ckptlab.training.model import build_model
from ckptlab.training.rng import RNGState, configure_determinism, seed_everything

__all__ = ["train", "TrainError", "TrainResult", "resolve_device", "warmup_cosine"]


class TrainError(Exception):
    """A run that cannot go on for a reason the user must fix; carries the exit code."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _NothingToResume(TrainError):
    """``--load-checkpoint`` found no checkpoint it could load; the directory stays as it was."""


@dataclass
class TrainResult:
    """What happened, for the summary line, ``--summary-json`` and the tests."""

    checkpointer: str
    device: str
    preset: str
    model_dtype: str
    num_params: int
    resumed_from: int | None = None
    first_step: int = 1
    last_step: int = 0
    iter_s: list[float] = field(default_factory=list)
    ckpt_steps: list[int] = field(default_factory=list)
    stall_s: list[float] = field(default_factory=list)
    drain_s: float = 0.0
    time_to_durable_s: list[float] = field(default_factory=list)
    # CLOCK_MONOTONIC ns of each save() call, and [step, ns] of each commit the engine reports:
    # save() call to durable, where time_to_durable_s starts at the engine's submit
    save_called_ns: list[int] = field(default_factory=list)
    commit_done_ns: list[list[int]] = field(default_factory=list)
    first_loss: float | None = None
    last_loss: float | None = None
    stopped_by_signal: bool = False
    peak_gpu_bytes: int | None = None
    snapshot: str = "sync"
    snapshot_wait_s: float = 0.0  # deferred snapshots: host time blocked in barrier()/settle
    pinned_staging_bytes: int = 0  # pccheck's staging pool page-locked for CUDA copies
    staging_touched_bytes: int = 0  # pccheck's staging buffers written at least once (resident)
    exit_code: int = 0
    abandon_threads: bool = False
    rank: int = 0
    world_size: int = 1

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("abandon_threads")
        return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise TrainError(f"--device {name}: not a device ckptlab trains on (use cpu, cuda, cuda:N or auto)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine down to ``min_ratio``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


class _StopSignal:
    """Turns SIGTERM into a flag the loop polls between steps. Not under DDP: the ranks would
    see the signal at different steps, so a final checkpoint could not be one global step."""

    def __init__(self, enabled: bool = True) -> None:
        self.received_at: float | None = None
        self._previous: Any = None
        self._enabled = enabled

    def __enter__(self) -> "_StopSignal":
        if self._enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received_at is None:
            self.received_at = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _log(message: str) -> None:
    from tqdm import tqdm
    rank = f"[rank {launched_rank()}] " if launched_world_size() > 1 else ""
    tqdm.write(f"ckptlab train: {rank}{message}", file=sys.stderr)


try:  # NVTX range + timing record per phase; free when no tool or trace is recording
    from ckptlab.profiling import phase as _phase
except ImportError:  # profiling unavailable: phases cost nothing
    def _phase(name: str, **kwargs: Any) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def _start_trace(path: Path | None, ck: Checkpointer, cfg: TrainConfig) -> Any:
    """``--trace FILE``: a ckptlab.profiling trace session (Python phases + engine records)."""
    if path is None:
        return None
    try:
        from ckptlab.profiling import start_trace
        return start_trace(path, checkpointer=ck, config=cfg.run_description(),
                           metadata={"checkpointer": cfg.checkpointer, "preset": cfg.preset})
    except ImportError as exc:  # e.g. pyarrow missing
        warnings.warn(f"--trace {path}: no trace recorder available ({exc}); nothing will be "
                      "written", RuntimeWarning, stacklevel=2)
        return None


def _stop_trace(session: Any, flush_only: bool = False) -> None:
    """Write the trace file (atomically); ``flush_only`` keeps recording (before a crash)."""
    if session is not None:
        session.flush() if flush_only else session.close()


def build_state(cfg: TrainConfig, device: torch.device, ctx: DistContext | None = None) -> dict[str, Any]:
    """The training state `train()` checkpoints (model, AdamW, schedule, sampler, RNG, run
    description), freshly initialised; public for benchmarks that time saving it."""
    ctx = ctx or DistContext()
    seed_everything(cfg.seed)
    model = build_model(cfg.resolved_model(), device, cfg.dtype)
    if ctx.active:  # the same init on every rank, then each rank its own RNG stream
        seed_everything(ctx.rng_seed(cfg.seed))
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.resolved_lr(), betas=(0.9, 0.95),
                              eps=1e-8, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, warmup_cosine(cfg.resolved_warmup(), cfg.training_steps, cfg.min_lr_ratio))
    data = SyntheticTokens(cfg.resolved_model().vocab_size, cfg.resolved_seq_len(), cfg.seed)
    sampler = ResumableSampler(data, cfg.resolved_batch_size(), rank=ctx.rank, world_size=ctx.world_size)
    return {"model": model, "optim": optim, "sched": sched, "data": sampler,
            "rng": RNGState(), "extra": {"run": cfg.run_description()}}


def _refuse_unreadable_steps(cfg: TrainConfig, why: str) -> None:
    """A fresh run never writes over checkpoints it cannot read (another checkpointer kind's,
    or damaged ones): its saves would replace them step by step."""
    d = Path(cfg.ckpt_dir)
    steps = sorted(p.name for p in d.glob("step_*")) if d.is_dir() else []
    if steps:
        raise TrainError(f"--ckpt-dir {cfg.ckpt_dir} holds {', '.join(steps[:3])}{' ...' if len(steps) > 3 else ''}"
                         f" that --checkpointer {cfg.checkpointer} cannot load{why}: another checkpointer's or "
                         f"damaged. Not starting fresh over them: use an empty --ckpt-dir, or the checkpointer "
                         f"that wrote them")


def _check_something_to_resume(d: Path) -> None:
    """``--load-checkpoint`` into a directory that is missing or holds nothing that could be a
    checkpoint fails before the checkpointer is opened: opening would create the directory
    and its lock file for a run that is about to stop."""
    fix = ("give the --ckpt-dir of the run to resume, or add --allow-fresh-start to start from "
           "step 0")
    if not d.exists():
        raise _NothingToResume(f"--load-checkpoint: --ckpt-dir {d} does not exist, so there is "
                               f"nothing to resume from; {fix} (nothing was created)")
    if not d.is_dir():
        raise _NothingToResume(f"--load-checkpoint: --ckpt-dir {d} is not a directory; {fix}")
    if not any(p.name.startswith(("step_", ".step_", "rank_", "global")) for p in d.iterdir()):
        raise _NothingToResume(f"--load-checkpoint: --ckpt-dir {d} holds no checkpoints (no step_* "
                               f"directories), so there is nothing to resume from; {fix} (the "
                               f"directory was left as it was)")


def _skips(caught: list[warnings.WarningMessage]) -> list[CorruptCheckpointWarning]:
    return [w.message for w in caught if isinstance(w.message, CorruptCheckpointWarning)]


def _pass_on_other_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        if not isinstance(w.message, CorruptCheckpointWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _nothing_valid_message(cfg: TrainConfig, exc: NoCheckpointError,
                           skips: list[CorruptCheckpointWarning]) -> str:
    """One line: what was wrong with each checkpoint, what was done (nothing), what to do."""
    if skips:
        found = "; ".join(f"{Path(w.path).name} is corrupt ({w.reason})" for w in skips)
        what = f"no valid checkpoint in {cfg.ckpt_dir}: {found}"
    else:
        what = str(exc)
    return (f"--load-checkpoint: {what}. Nothing was changed. Resume from a copy whose checkpoints are "
            f"intact, or start over in a new --ckpt-dir (without --load-checkpoint): a run never starts "
            f"fresh over checkpoints it cannot read")


def _resume(cfg: TrainConfig, ck: Checkpointer, state: dict[str, Any]) -> int | None:
    """Restore the newest valid checkpoint into ``state``; its step, or None to start fresh."""
    if not cfg.load_checkpoint:
        existing = ck.latest()
        if existing is not None:
            raise TrainError(f"--ckpt-dir {cfg.ckpt_dir} already holds checkpoint step "
                             f"{existing.step}; pass --load-checkpoint to resume from it, or "
                             f"use an empty --ckpt-dir")
        _refuse_unreadable_steps(cfg, "")
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CorruptCheckpointWarning)
        try:
            step, loaded = ck.load(state=state)  # the checkpointer records its own `load` phase
        except NoCheckpointError as exc:
            if cfg.allow_fresh_start:
                _refuse_unreadable_steps(cfg, f" ({exc})")
                _log(f"no checkpoint to resume from in {cfg.ckpt_dir} ({exc}); starting fresh "
                     f"(--allow-fresh-start)")
                return None
            raise _NothingToResume(_nothing_valid_message(cfg, exc, _skips(caught))) from exc
        except CheckpointMismatchError as exc:
            raise TrainError(f"refusing checkpoint in {cfg.ckpt_dir}: it does not fit this "
                             f"model: {exc}") from exc
        except (CheckpointError, ValueError, KeyError, RuntimeError) as exc:
            raise TrainError(f"could not restore from {cfg.ckpt_dir}: {exc}") from exc
        finally:
            _pass_on_other_warnings(caught)
    for skip in _skips(caught):  # the one report of each skip (the error lists them when none loads)
        _log(f"warning: skipping corrupt checkpoint {skip.path}: {skip.reason}")
    saved_run = (loaded.get("extra") or {}).get("run") if isinstance(loaded, dict) else None
    if isinstance(saved_run, dict):
        differs = sorted(k for k, v in cfg.run_description().items()
                         if k in saved_run and saved_run[k] != v)
        if differs:
            _log(f"warning: this run differs from the checkpointed one in {', '.join(differs)};"
                 f" its losses will not match an uninterrupted run")
    state["extra"] = {"run": cfg.run_description()}  # loading may have replaced it in place
    return int(step)


def _train_step(state: dict[str, Any], cfg: TrainConfig, device: torch.device, step: int,
                model: torch.nn.Module) -> float:
    """One step; ``model`` is what is called (the DDP wrapper under torchrun)."""
    optim, sched = state["optim"], state["sched"]
    with _phase("data", step=step):
        inputs, targets = state["data"].next_batch()
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
    optim.zero_grad(set_to_none=True)
    with _phase("forward", step=step):
        loss = model(inputs, targets)
    with _phase("backward", step=step):
        loss.backward()
    with _phase("optimizer", step=step):
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optim.step()
        sched.step()
    return loss.item()  # synchronises the device: the step is done


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) training as ``cfg`` says; raises ``TrainError`` for user errors.
    Under torchrun (``WORLD_SIZE > 1``) every rank runs this: DDP mode (training/distributed.py)."""
    ctx = DistContext.from_env()
    if ctx.active and cfg.fail_rank is not None and cfg.fail_rank >= ctx.world_size:
        raise TrainError(f"--fail-rank {cfg.fail_rank} is not a rank of this world of {ctx.world_size}")
    device = resolve_device(ctx.device_name(cfg.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before nccl binds this rank to its GPU
    ctx.init(device)
    try:
        return _train(cfg, device, ctx)
    finally:
        ctx.close()


def _open(cfg: TrainConfig, ctx: DistContext) -> Checkpointer:
    """The run's checkpointer: under torchrun the multi-rank one (collective), except for
    ``none`` (nothing to coordinate); ``dcp`` / ``dcp-async`` are DCP over the group."""
    config = cfg.checkpoint.replace(trace=cfg.checkpoint.trace or cfg.trace is not None)
    if ctx.active and cfg.checkpointer == "none":
        return open_local_checkpointer("none", cfg.ckpt_dir, config)
    return open_checkpointer(cfg.checkpointer, cfg.ckpt_dir, config)


def _train(cfg: TrainConfig, device: torch.device, ctx: DistContext) -> TrainResult:
    if not ctx.active and is_multi_rank(cfg.ckpt_dir):
        raise TrainError(f"--ckpt-dir {cfg.ckpt_dir} holds multi-rank checkpoints (global/, rank_*/): run under "
                         f"torchrun with --nproc-per-node N to use it (`ckptlab inspect {cfg.ckpt_dir}` shows N), "
                         f"or use another --ckpt-dir; nothing was changed")
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
        torch.cuda.set_device(device)
    configure_determinism(device)
    if device.type == "cuda":  # TF32 tensor cores for fp32 matmuls (deterministic as well)
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    if cfg.resolved_threads():
        torch.set_num_threads(cfg.resolved_threads())
    if cfg.load_checkpoint and not cfg.allow_fresh_start:
        _check_something_to_resume(Path(cfg.ckpt_dir))  # before opening creates the directory
    had_lock = (Path(cfg.ckpt_dir) / LOCK_NAME).exists()
    try:  # before the model is built: a directory another writer holds fails fast
        ck = _open(cfg, ctx)
    except (CheckpointError, RuntimeError, ValueError) as exc:
        raise TrainError(f"--checkpointer {cfg.checkpointer} cannot open {cfg.ckpt_dir}: {exc}") from exc
    try:
        state = build_state(cfg, device, ctx)
    except BaseException:
        ck.close()
        raise
    result = TrainResult(cfg.checkpointer, str(device), cfg.preset, cfg.model_dtype,
                         sum(p.numel() for p in state["model"].parameters()), snapshot=cfg.checkpoint.snapshot,
                         rank=ctx.rank, world_size=ctx.world_size)
    ck.guard(state["optim"])  # a deferred snapshot is read until the next optimizer.step()
    trace = _start_trace(cfg.trace, ck, cfg)
    try:
        _run(cfg, ck, state, device, result, trace, ctx)
        if not result.abandon_threads:
            ck.close()  # raises a failure of the last checkpoints
    except _NothingToResume:
        if not had_lock:  # opening made it: remove it again (a failed resume changes nothing)
            with contextlib.suppress(Exception):
                ck.close()
            _remove_lock_file(Path(cfg.ckpt_dir))
        raise
    except CheckpointError as exc:
        raise TrainError(f"checkpointing failed: {exc}", exit_code=1) from exc
    finally:
        if not result.abandon_threads:
            with contextlib.suppress(Exception):  # already closed, or failing anyway
                ck.close()
        _stop_trace(trace)
    if device.type == "cuda":
        result.peak_gpu_bytes = torch.cuda.max_memory_allocated(device)
    return result


def _remove_lock_file(directory: Path) -> None:
    """Unlink the directory's lock file while holding it: a lock file someone else holds now
    (another run started on the directory meanwhile) stays, and no opener is left with a lock
    on an unlinked file (DirectoryLock re-checks the file it locked; docs/FORMAT.md)."""
    try:
        lock = DirectoryLock(str(directory))
    except (RuntimeError, OSError):
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            (directory / LOCK_NAME).unlink()
    finally:
        lock.release()


def _run(cfg: TrainConfig, ck: Checkpointer, state: dict[str, Any], device: torch.device,
         result: TrainResult, trace: Any, ctx: DistContext) -> None:
    from tqdm import tqdm

    model = ctx.wrap(state["model"], device)  # DDP under torchrun; state keeps the plain module
    # RNG and data position per rank under torchrun (DCP keeps each rank's side file itself)
    saved = ctx.save_view(state) if cfg.checkpointer in ("pccheck", "torchsave") else state
    loss_file = cfg.loss_file if ctx.is_main else None  # rank 0's shard loss: one file per run
    resumed = _resume(cfg, ck, state)
    start = resumed or 0
    result.resumed_from, result.first_step, result.last_step = resumed, start + 1, start
    if resumed is not None:
        kept = truncate_loss_file(loss_file, start) if loss_file else start
        _log(f"resumed from step {start} in {cfg.ckpt_dir}")
        if loss_file and kept != start:
            _log(f"warning: {cfg.loss_file} has only {kept} lines for steps 1..{start}; "
                 f"it will not compare equal to an uninterrupted run's")
    losses = LossWriter(loss_file, append=resumed is not None)
    bar = tqdm(total=cfg.training_steps, initial=start, unit="step", file=sys.stderr,
               desc=f"{cfg.checkpointer} {cfg.preset}", dynamic_ncols=True,
               disable=(None if cfg.progress is None else not cfg.progress) or not ctx.is_main)
    saved_at: int | None = None
    try:
        with _StopSignal(enabled=not ctx.active) as stop:
            for step in range(start + 1, cfg.training_steps + 1):
                t0 = time.perf_counter()
                with _phase("train_step", step=step):
                    loss = _train_step(state, cfg, device, step, model)
                result.iter_s.append(time.perf_counter() - t0)
                result.last_step, result.last_loss = step, loss
                if result.first_loss is None:
                    result.first_loss = loss
                losses.write(step, loss)
                stall = 0.0
                if cfg.checkpointer != "none" and cfg.checkpoint_freq and \
                        step % cfg.checkpoint_freq == 0:
                    stall = _save(ck, step, saved, result)
                    saved_at = step
                bar.set_postfix(loss=f"{loss:.4f}", it=f"{result.iter_s[-1] * 1e3:.1f}ms",
                                stall=f"{stall * 1e3:.1f}ms", refresh=False)
                bar.update(1)
                if cfg.fail_at_step == step and (not ctx.active or ctx.rank == _fail_rank(cfg, ctx)):
                    _crash(ck, cfg, losses, bar, trace)
                if stop.received_at is not None:
                    _final_checkpoint(ck, cfg, state, result, saved_at, stop.received_at)
                    return
            t0 = time.perf_counter()
            with _phase("wait"):
                ck.wait()
            result.drain_s = time.perf_counter() - t0
    finally:
        bar.close()
        losses.close()
    _collect_durable_times(ck, result)


def _save(ck: Checkpointer, step: int, state: dict[str, Any], result: TrainResult) -> float:
    result.save_called_ns.append(time.monotonic_ns())
    t0 = time.perf_counter()
    try:
        with _phase("save", step=step):
            ck.save(step, state)
    except CheckpointError as exc:
        raise TrainError(f"save() at step {step} failed: {exc}", exit_code=1) from exc
    stall = time.perf_counter() - t0
    result.ckpt_steps.append(step)
    result.stall_s.append(stall)
    return stall


def _fail_rank(cfg: TrainConfig, ctx: DistContext) -> int:
    """The rank ``--fail-at-step`` and ``--fault`` act on under torchrun: ``--fail-rank``, else the last."""
    return ctx.world_size - 1 if cfg.fail_rank is None else cfg.fail_rank


def _crash(ck: Checkpointer, cfg: TrainConfig, losses: LossWriter, bar: Any, trace: Any) -> None:
    """``--fail-at-step``: a real crash (SIGKILL), not an exception; nothing is cleaned up
    (the trace file, if any, is written first so the run before the crash can be seen)."""
    if cfg.fail_after_durable:
        ck.wait()
    bar.close()
    losses.close()
    _stop_trace(trace, flush_only=True)
    _log(f"--fail-at-step {cfg.fail_at_step}: sending SIGKILL to myself")
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _final_checkpoint(ck: Checkpointer, cfg: TrainConfig, state: dict[str, Any], result: TrainResult,
                      saved_at: int | None, received_at: float) -> None:
    step = result.last_step
    result.stopped_by_signal = True
    if cfg.checkpointer == "none":
        _log("SIGTERM: --checkpointer none keeps no checkpoints; exiting")
        return
    _log(f"SIGTERM: final checkpoint of step {step} within {cfg.sigterm_budget_s:g} s")
    if saved_at != step:
        _save(ck, step, state, result)  # synchronous kinds are durable when it returns
    t0 = time.perf_counter()
    budget = cfg.sigterm_budget_s - (t0 - received_at)
    durable_in_time = ck.wait(timeout=max(0.0, budget)) and time.perf_counter() - received_at <= cfg.sigterm_budget_s
    if not durable_in_time:
        result.exit_code, result.abandon_threads = 1, True
        latest = ck.latest()
        if latest is not None and latest.step == step:
            _log(f"final checkpoint of step {step} is durable, but only {time.perf_counter() - received_at:.2f} s "
                 f"after SIGTERM: over the {cfg.sigterm_budget_s:g} s budget")
        else:
            _log(f"final checkpoint of step {step} was not durable within the "
                 f"{cfg.sigterm_budget_s:g} s budget")
        return
    result.drain_s = time.perf_counter() - t0
    _collect_durable_times(ck, result)
    _log(f"final checkpoint of step {step} is durable; exiting")


def _collect_durable_times(ck: Checkpointer, result: TrainResult) -> None:
    try:
        values = ck.stats()
    except Exception:  # stats are informative only
        return
    durable = values.get("time_to_durable_s")
    commits = getattr(ck, "commit_records", None)
    if callable(commits):
        result.commit_done_ns = [[int(r["step"]), int(r["t_done_ns"])] for r in commits() if r["ok"]]
    result.snapshot_wait_s = float(values.get("snapshot_wait_s", 0.0))
    result.pinned_staging_bytes = int(values.get("pinned_staging_bytes", 0))
    result.staging_touched_bytes = int(values.get("staging_touched_bytes", 0))
    if isinstance(durable, (list, tuple)):
        result.time_to_durable_s = [float(v) for v in durable]


def summary_lines(result: TrainResult, cfg: TrainConfig) -> list[str]:
    """The human summary printed at the end of a run."""
    lines = [f"{result.preset} {result.model_dtype} ({result.num_params / 1e6:.2f} M params) on "
             f"{result.device}, checkpointer {result.checkpointer}"
             + (f" (snapshot {result.snapshot})" if result.snapshot != "sync" else "") + ", steps "
             f"{result.first_step}-{result.last_step}"
             + (f" (resumed from {result.resumed_from})" if result.resumed_from else "")
             + (" (stopped by SIGTERM)" if result.stopped_by_signal else "")]
    if result.iter_s:
        timed = result.iter_s[1:] or result.iter_s  # the first step pays for warm-up
        lines.append(f"  iteration: mean {statistics.fmean(timed) * 1e3:.2f} ms, median "
                     f"{statistics.median(timed) * 1e3:.2f} ms over {len(timed)} steps "
                     f"(first step {result.iter_s[0] * 1e3:.1f} ms; stalls not included)")
    if result.ckpt_steps:
        stalls = result.stall_s
        lines.append(f"  checkpoints: {len(stalls)} taken, stall total {sum(stalls) * 1e3:.1f} "
                     f"ms, mean {statistics.fmean(stalls) * 1e3:.2f} ms, max "
                     f"{max(stalls) * 1e3:.2f} ms")
        durable = ""
        if result.time_to_durable_s:
            values = result.time_to_durable_s
            durable = (f"; save-to-durable mean {statistics.fmean(values) * 1e3:.1f} ms, "
                       f"max {max(values) * 1e3:.1f} ms")
        if result.snapshot != "sync":
            lines.append(f"  deferred snapshots: {result.snapshot_wait_s * 1e3:.1f} ms blocked in "
                         f"barrier/settle (inside iteration times; GPU-side waits show there too)")
        lines.append(f"  durable: final drain {result.drain_s * 1e3:.1f} ms{durable}")
    elif cfg.checkpointer != "none":
        lines.append("  checkpoints: none taken")
    if result.last_loss is not None:
        lines.append(f"  loss: first {result.first_loss:.4f}, last {result.last_loss:.4f}"
                     + (f" -> {cfg.loss_file}" if cfg.loss_file else ""))
    if result.peak_gpu_bytes is not None:
        lines.append(f"  peak GPU memory: {result.peak_gpu_bytes / 1e9:.2f} GB")
    if cfg.trace is not None and cfg.trace.exists():
        lines.append(f"  trace: {cfg.trace} (ckptlab trace info | export --chrome | plot -o timeline.png --step N)")
    return lines
