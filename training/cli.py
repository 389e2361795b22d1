"""Command line for the reference training: ``ckptlab train``, ``python -m training.train_*``.

``build_parser()`` / ``main(argv)`` stand alone (``python -m ckptlab.training.cli``);
``add_train_subcommand(subparsers)`` / ``run_train(args)`` plug the same flags into the
``ckptlab`` console script. Exit codes: 0 done (or stopped cleanly by SIGTERM), 1 a
checkpoint failed or the SIGTERM budget ran out, 2 bad input (unknown preset, negative
steps, nothing to resume, a checkpoint of another model shape).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ckptlab.core.checkpointer import KINDS
from ckptlab.core.config import SNAPSHOT_MODES, CheckpointConfig
from ckptlab.core.fault_spec import add_fault_arguments, apply_fault_arguments
from ckptlab.training.config import MODEL_DTYPES, TrainConfig
from ckptlab.training.presets import PRESETS, preset_argument

__all__ = ["build_parser", "add_train_arguments", "add_train_subcommand", "run_train", "main",
           "config_from_args", "CHECKPOINT_FLAGS", "checkpoint_config_from_args", "flag_message"]


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


_CHUNK_UNIT = 64 * 1024  # CheckpointConfig.chunk_bytes is a multiple of this


def _chunk_mb(text: str) -> int:
    """MiB (a decimal such as 0.25) as bytes: a whole number of 64 KiB units, so the flag's
    own error names MiB and not the byte count the config would."""
    try:
        mib = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MiB as a number, got {text!r}") from None
    nbytes = mib * (1 << 20)
    if not nbytes >= _CHUNK_UNIT or nbytes % _CHUNK_UNIT:
        raise argparse.ArgumentTypeError(f"must be a multiple of 0.0625 MiB (64 KiB) and at least that, got {text}")
    return int(nbytes)


@dataclass(frozen=True)
class CheckpointFlag:
    """A command-line flag that sets one ``CheckpointConfig`` field (default: the field's)."""

    flag: str
    field: str
    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    shown: Callable[[Any], str] | None = None  # the default as the flag takes it (MiB, not bytes)
    metavar: str | None = None
    switch: bool = False  # a boolean field: --flag / --no-flag


# The CheckpointConfig fields `ckptlab train` exposes. A new checkpointer knob is one row here.
CHECKPOINT_FLAGS = (
    CheckpointFlag("--max-inflight", "max_inflight", "checkpoints in flight at once before save() waits",
                   _positive_int),
    CheckpointFlag("--writer-threads", "writer_threads", "writer threads per checkpoint", _positive_int),
    CheckpointFlag("--writer-cpus", "writer_cpus", "pccheck: CPUs the writer threads may run on, e.g. 6-7 or "
                   "2,4-5 (default: wherever the kernel puts them); keep them off the training threads' cores"),
    CheckpointFlag("--keep-last", "keep_last", "committed checkpoints to keep, 0 keeps all", _non_negative_int),
    CheckpointFlag("--chunk-mb", "chunk_bytes", "pccheck, torchsave: MiB per chunk, the unit of staging, "
                   "writing and checksumming; a multiple of 0.0625 (64 KiB); `ckptlab tune` recommends one", _chunk_mb,
                   shown=lambda nbytes: f"{nbytes / (1 << 20):g}", metavar="MIB"),
    CheckpointFlag("--snapshot", "snapshot", "pccheck: when save() returns — sync (state on the host), deferred "
                   "(D2H on a side stream overlapping the next forward/backward; the next optimizer.step waits "
                   "for it), gpu (copy into a GPU snapshot buffer); docs/API.md", choices=SNAPSHOT_MODES),
    CheckpointFlag("--prefault-staging", "prefault_staging", "pccheck: fault the staging pages in on a background "
                   "thread from the engine's opening, not in the saves' own fills (off by default: it makes the "
                   "whole pool resident; docs/API.md)", switch=True,
                   shown=lambda on: "on" if on else "off"),
)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CheckpointConfig)}


def _add_checkpoint_flags(group: argparse._ArgumentGroup) -> None:
    for f in CHECKPOINT_FLAGS:
        default = _DEFAULTS[f.field]
        shown = f.shown(default) if f.shown else ",".join(map(str, default)) if isinstance(default, tuple) else default
        if f.switch:
            group.add_argument(f.flag, dest=f"checkpoint_{f.field}", default=default,
                               action=argparse.BooleanOptionalAction, help=f"{f.help} (default {shown})")
            continue
        group.add_argument(f.flag, dest=f"checkpoint_{f.field}", default=default, type=f.type,
                           choices=list(f.choices) if f.choices else None, metavar=f.metavar,
                           help=f"{f.help} (default {shown or 'none'})")


def checkpoint_config_from_args(args: argparse.Namespace) -> CheckpointConfig:
    return CheckpointConfig(**{f.field: getattr(args, f"checkpoint_{f.field}") for f in CHECKPOINT_FLAGS})


_FIELD = re.compile(r"CheckpointConfig\.(\w+)(?:=('[^']*'|\S+?)(?=[ ;:,]|$))?")


def flag_message(message: str) -> str:
    """A core message about ``CheckpointConfig.<field>[=value]`` said in the flags' words."""
    flags = {f.field: f for f in CHECKPOINT_FLAGS}

    def say(m: re.Match[str]) -> str:
        flag = flags.get(m.group(1))
        if flag is None:
            return m.group(0)
        value = m.group(2)
        if value and flag.shown and value.isdigit():
            value = flag.shown(int(value))
        return flag.flag + (f" {value.strip(chr(39))}" if value else "")

    return _FIELD.sub(say, message)


class _StrayValue(argparse.Action):
    """A hidden positional catching a stray word. After ``--load-checkpoint`` (a switch) it is
    most likely the directory to resume from: say the flag takes no value and where the
    directory goes, instead of argparse's bare "unrecognized arguments"."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        if values is None:
            return
        if getattr(namespace, "load_checkpoint", False):
            parser.error(f"--load-checkpoint takes no value (it is a switch), got {values!r}; the checkpoint "
                         f"directory is --ckpt-dir: --load-checkpoint --ckpt-dir {values}")
        parser.error(f"unrecognized arguments: {values}")


class _Switch(argparse.Action):
    """``--load-checkpoint``: a switch. argparse rejects ``--load-checkpoint=DIR`` with a bare
    "ignored explicit argument" before any action runs, so the flag takes an optional value
    only to refuse it in words that say where the directory goes."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs="?", const=True, default=False, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        if values is not True:
            parser.error(f"{option_string} takes no value (it is a switch), got {values!r}; the checkpoint "
                         f"directory is --ckpt-dir: {option_string} --ckpt-dir {values}")
        setattr(namespace, self.dest, True)


class _SwitchFormatter(argparse.HelpFormatter):
    """Shows a _Switch as the switch it is (no value) in usage and help."""

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        return "" if isinstance(action, _Switch) else super()._format_args(action, default_metavar)


def add_train_arguments(parser: argparse.ArgumentParser, *,
                        default_checkpointer: str = "none") -> argparse.ArgumentParser:
    """The training flags (the seeds' names first), added to ``parser``."""
    if parser.formatter_class is argparse.HelpFormatter:  # a caller's own formatter is left alone
        parser.formatter_class = _SwitchFormatter
    seeds = parser.add_argument_group("run (the seeds' flags)")
    seeds.add_argument("--seed", type=_non_negative_int, default=0,
                       help="seeds model init, data and every RNG (default 0)")
    seeds.add_argument("--training-steps", type=_non_negative_int, default=100,
                       help="optimizer steps in the whole run, counted from 1 (default 100)")
    seeds.add_argument("--checkpoint-freq", type=_non_negative_int, default=0,
                       help="checkpoint after every N-th step; 0 never (default 0)")
    seeds.add_argument("--model-dtype", choices=list(MODEL_DTYPES), default="fp32",
                       help="parameter and optimizer-state dtype (default fp32)")
    seeds.add_argument("--sequence-length", type=_positive_int, default=None,
                       help="tokens per sample (default: the preset's)")
    seeds.add_argument("--loss-file", type=Path, default=None,
                       help="write each step's loss: '<step> <repr(loss)>' lines, or a CSV with a "
                            "'step,loss' header when FILE ends in .csv; byte-comparable across runs")
    seeds.add_argument("--load-checkpoint", action=_Switch,
                       help="resume from the newest valid checkpoint in --ckpt-dir; a switch, "
                            "takes no value (exit 2 if there is none, unless --allow-fresh-start)")
    parser.add_argument("stray_value", nargs="?", action=_StrayValue, help=argparse.SUPPRESS)
    run = parser.add_argument_group("model, device, checkpointing")
    run.add_argument("--preset", type=preset_argument, default="tiny", metavar="NAME",
                     help=f"model preset: {', '.join(PRESETS)} (default tiny)")
    run.add_argument("--batch-size", type=_positive_int, default=None,
                     help="samples per step (default: the preset's)")
    run.add_argument("--checkpointer", choices=KINDS, default=default_checkpointer,
                     help=f"checkpointer kind (default {default_checkpointer})")
    run.add_argument("--ckpt-dir", type=Path, default=Path("checkpoints"),
                     help="checkpoint directory (default ./checkpoints)")
    run.add_argument("--device", default="auto",
                     help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    run.add_argument("--threads", type=_positive_int, default=None,
                     help="torch CPU threads (default: 1 for tiny, so checkpoint writers keep "
                          "a core; torch's default otherwise)")
    run.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                     help="CUDA: TF32 tensor cores for fp32 matmuls (default on; the anchors' "
                          "iteration times assume it)")
    _add_checkpoint_flags(run)
    run.add_argument("--trace", type=Path, default=None, metavar="FILE",
                     help="record a timing trace to FILE (needs ckptlab.profiling)")
    run.add_argument("--allow-fresh-start", action="store_true",
                     help="with --load-checkpoint: start from step 0 if there is no checkpoint")
    faults = parser.add_argument_group("crash and stop")
    faults.add_argument("--fail-at-step", type=_positive_int, default=None, metavar="N",
                        help="SIGKILL this process after step N (after issuing N's checkpoint); under "
                             "torchrun only the --fail-rank")
    faults.add_argument("--fail-after-durable", action="store_true",
                        help="with --fail-at-step: first wait until issued checkpoints are "
                             "durable")
    faults.add_argument("--fail-rank", type=_non_negative_int, default=None, metavar="R",
                        help="under torchrun: the one rank --fail-at-step kills and --fault specs arm "
                             "(default: the last rank); the others fail at their next collective")
    add_fault_arguments(faults)  # --fault SPEC (repeatable), --io-log PATH
    faults.add_argument("--sigterm-budget", type=float, default=60.0, metavar="SECONDS",
                        help="on SIGTERM, time allowed for the final checkpoint (default 60)")
    opt = parser.add_argument_group("optimisation and model overrides")
    opt.add_argument("--lr", type=float, default=None,
                     help="peak learning rate (default: the preset's)")
    opt.add_argument("--warmup-steps", type=_positive_int, default=None,
                     help="linear warmup steps before the cosine decay (default: 10%% of steps, "
                          "at most 100)")
    opt.add_argument("--weight-decay", type=float, default=0.1)
    opt.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm; 0 disables")
    for flag, kind in (("--dim", int), ("--n-layers", int), ("--n-heads", int),
                       ("--n-kv-heads", int), ("--ffn-dim", int), ("--vocab-size", int),
                       ("--rope-theta", float)):
        opt.add_argument(flag, type=_positive_int if kind is int else float, default=None,
                         help="override the preset's value")
    out = parser.add_argument_group("output")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: only on a terminal)")
    out.add_argument("--summary-json", type=Path, default=None, metavar="FILE",
                     help="write the run summary as JSON")
    return parser


def build_parser(default_checkpointer: str = "none", prog: str | None = None
                 ) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Train the seeds' Llama-style model on synthetic data with "
                               "resumable, bit-exact checkpoints.")
    return add_train_arguments(parser, default_checkpointer=default_checkpointer)


def add_train_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train`` on the ``ckptlab`` console script; dispatches to ``run_train``."""
    parser = subparsers.add_parser("train", help="reference training with checkpoints",
                                   description=build_parser().description)
    add_train_arguments(parser)
    parser.set_defaults(func=run_train)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        preset=args.preset, checkpointer=args.checkpointer, seed=args.seed,
        training_steps=args.training_steps, checkpoint_freq=args.checkpoint_freq,
        model_dtype=args.model_dtype, sequence_length=args.sequence_length,
        batch_size=args.batch_size, loss_file=args.loss_file,
        load_checkpoint=args.load_checkpoint, allow_fresh_start=args.allow_fresh_start,
        ckpt_dir=args.ckpt_dir, device=args.device, threads=args.threads, tf32=args.tf32,
        checkpoint=checkpoint_config_from_args(args), trace=args.trace,
        fail_at_step=args.fail_at_step, fail_after_durable=args.fail_after_durable,
        fail_rank=args.fail_rank,
        sigterm_budget_s=args.sigterm_budget, lr=args.lr, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, dim=args.dim,
        n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
        ffn_dim=args.ffn_dim, vocab_size=args.vocab_size, rope_theta=args.rope_theta,
        progress=args.progress, summary_json=args.summary_json)


def _faults_for_rank(args: argparse.Namespace, rank: int, world: int) -> None:
    """Under torchrun: ``--fault`` specs arm only the ``--fail-rank`` (default the last), so
    one rank is killed or hurt mid-checkpoint; ``--io-log PATH`` becomes ``PATH.rankR``."""
    target = world - 1 if args.fail_rank is None else args.fail_rank
    if rank != target:
        args.fault = []
    if getattr(args, "io_log", None):
        args.io_log = f"{args.io_log}.rank{rank}"


def run_train(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run training for parsed ``args``; returns the exit code."""
    from ckptlab.training.distributed import launched_rank, launched_world_size
    from ckptlab.training.loop import TrainError, summary_lines, train

    world, rank = launched_world_size(), launched_rank()
    try:
        if world > 1:
            _faults_for_rank(args, rank, world)
        apply_fault_arguments(args)  # arms the engine through CKPTLAB_FAULTS / CKPTLAB_IO_LOG
        cfg = config_from_args(args)
    except (ValueError, KeyError) as exc:
        message = flag_message(exc.args[0] if exc.args else str(exc))
        if parser is not None:
            parser.error(message)  # exits 2
        print(f"ckptlab train: error: {message}", file=sys.stderr)
        return 2
    try:
        result = train(cfg)
    except TrainError as exc:
        print(f"ckptlab train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if rank == 0:  # under torchrun the summary is rank 0's
        for line in summary_lines(result, cfg):
            print(line)
    if cfg.summary_json is not None and rank == 0:
        cfg.summary_json.parent.mkdir(parents=True, exist_ok=True)
        cfg.summary_json.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    if result.abandon_threads:  # SIGTERM budget ran out: do not join writer threads
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(result.exit_code)
    return result.exit_code


def main(argv: Sequence[str] | None = None, *, default_checkpointer: str = "none",
         prog: str | None = None) -> int:
    parser = build_parser(default_checkpointer, prog)
    return run_train(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(main())
