"""``ckptlab bench``: one model, every checkpointer kind side by side in one run.

    ckptlab bench --out OUT [--preset NAME | --dim ... | --state-mb N] [--device cpu|cuda]
                  [--kinds none,torchsave,...] [--variant NAME=KIND:FLAGS ...]
                  [--steps N] [--every K1,K2] [--repeats R] [--dir DIR]

Entry point ``bench`` (group ``ckptlab.commands``, pyproject.toml). Writes OUT/bench.json,
OUT/bench.md, OUT/bench.png and each run's record under OUT/runs/ (docs/PERFORMANCE.md).
Exit codes: 0; 2 for bad flags (nothing is written); 1 when a measured run fails; 128 + the
signal (143, 130) when SIGTERM or SIGINT stops it: the running child is stopped (SIGTERM, SIGKILL
after a grace period), the work dir removed, and no bench.json written.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ckptlab.training.bench.spec import (BENCH_KINDS, CPU_KINDS, SHAPE_FLAGS, WORK_FLAGS, BenchSpec, Variant,
                                         parse_variant)
from ckptlab.training.presets import preset_argument

__all__ = ["add_bench_parser", "run_bench_command", "main"]

PROG = "ckptlab bench"


def _int_list(value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {value!r}")
    return out


def _variant_flags() -> tuple[str, ...]:
    from ckptlab.training.cli import CHECKPOINT_FLAGS

    fixed = ("--keep-last", "--snapshot")  # the bench keeps one checkpoint; the base kind is the mode
    flags = [f for f in CHECKPOINT_FLAGS if f.flag not in fixed]
    return tuple(f.flag for f in flags) + tuple(f"--no-{f.flag[2:]}" for f in flags if f.switch)


VARIANT_FLAGS = _variant_flags()


def check_variant(variant: Variant) -> None:
    """ValueError unless every flag is a checkpointer knob `ckptlab train` takes with that value."""
    from ckptlab.training.cli import build_parser, config_from_args, flag_message

    for word in variant.flags:
        name = word.split("=", 1)[0]
        if name.startswith("-") and name not in VARIANT_FLAGS:
            raise ValueError(f"--variant {variant.text!r}: {name} is not a setting a variant may change; "
                             f"allowed: {', '.join(VARIANT_FLAGS)}")
    parser = build_parser()

    class Refused(Exception):
        pass

    def refuse(message: str) -> None:  # argparse's error() would exit; this names the variant
        raise Refused(message)

    parser.error = refuse  # type: ignore[method-assign]
    try:
        config_from_args(parser.parse_args([*BENCH_KINDS[variant.base], *variant.flags]))
    except Refused as exc:
        raise ValueError(f"--variant {variant.text!r}: {exc}") from None
    except (KeyError, ValueError) as exc:  # TrainConfig's checks, as `ckptlab train` reports them
        raise ValueError(f"--variant {variant.text!r}: {flag_message(str(exc.args[0] if exc.args else exc))}") \
            from None


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--out", type=Path, required=True, help="results directory (must not hold a bench.json)")
    model = p.add_argument_group("model (as `ckptlab train`)")
    model.add_argument("--preset", type=preset_argument, default="tiny", help="model preset (default tiny)")
    for name in (*SHAPE_FLAGS, *WORK_FLAGS):
        model.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help="override the preset's")
    model.add_argument("--state-mb", type=int, default=None,
                       help="size the vocabulary so that model + Adam state is about this many MiB")
    model.add_argument("--model-dtype", choices=["fp32", "bf16"], default="fp32")
    model.add_argument("--threads", type=int, default=None, help="torch CPU threads of each run")
    runs = p.add_argument_group("runs")
    runs.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    runs.add_argument("--kinds", default=None,
                      help=f"comma-separated kinds (default: {','.join(CPU_KINDS)}; pccheck-gpu too on cuda); "
                           f"known: {', '.join(BENCH_KINDS)}; none is always run")
    runs.add_argument("--variant", action="append", default=[], metavar="NAME=KIND:FLAGS",
                      help="also measure KIND with other checkpointer settings under NAME, in the same rounds "
                           "(an A/B of a knob), e.g. deferred-pf=pccheck-deferred:--prefault-staging; "
                           f"FLAGS are `ckptlab train` flags among {', '.join(VARIANT_FLAGS)}; repeatable")
    runs.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    runs.add_argument("--every", type=_int_list, default=(5, 10),
                      help="checkpoint every K steps, one run per K per kind (default 5,10)")
    runs.add_argument("--repeats", type=int, default=3, help="rounds, interleaved (default 3)")
    runs.add_argument("--seed", type=int, default=0, help="seeds the order within rounds and the training")
    runs.add_argument("--dir", type=Path, default=None,
                      help="file system under test (default: a temp dir inside --out)")
    runs.add_argument("--writer-threads", type=int, default=None, help="pccheck writer threads")
    runs.add_argument("--timeout", type=float, default=1800.0, help="seconds per run (default 1800)")
    runs.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="progress bar (default: on a terminal)")
    return p


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``bench`` on the ``ckptlab`` console script."""
    p = subparsers.add_parser("bench", help="every checkpointer kind side by side on one model",
                              description=(__doc__ or "").split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run_bench_command)
    return p


def spec_from_args(args: argparse.Namespace) -> BenchSpec:
    if args.device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    default = (*CPU_KINDS, "pccheck-gpu") if args.device == "cuda" else CPU_KINDS
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds else default
    shape = {n: getattr(args, n) for n in (*SHAPE_FLAGS, *WORK_FLAGS) if getattr(args, n) is not None}
    variants = tuple(parse_variant(text) for text in args.variant)
    spec = BenchSpec(out=args.out, preset=args.preset, shape=shape, state_mb=args.state_mb,
                     model_dtype=args.model_dtype, device=args.device, kinds=kinds, variants=variants,
                     steps=args.steps,
                     every=args.every, repeats=args.repeats, seed=args.seed, dir=args.dir, threads=args.threads,
                     writer_threads=args.writer_threads, timeout_s=args.timeout)
    spec.validate()
    for variant in variants:
        check_variant(variant)
    for name, value in (("--threads", args.threads), ("--writer-threads", args.writer_threads)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if any(v < 1 for v in shape.values()):
        raise ValueError("model shape flags must be >= 1")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda but no CUDA device is available to torch here; use --device cpu")
    if args.dir is not None and not args.dir.is_dir():
        raise ValueError(f"--dir {args.dir} is not a directory")
    return spec


def run_bench_command(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from ckptlab.training.bench.runner import BenchError, BenchInterrupted

    try:
        spec = spec_from_args(args)
        from ckptlab.training.presets import get_preset

        get_preset(spec.preset).model.replace(**{k: v for k, v in spec.shape.items() if k in SHAPE_FLAGS})
    except ValueError as exc:
        if parser is not None:
            parser.error(str(exc))
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        doc = _run(spec, args.progress)
    except BenchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except BenchInterrupted as exc:
        where = f" {exc.work_dir}" if exc.work_dir is not None else ""
        print(f"{PROG}: {exc}: stopped the running measurement and removed the work dir{where}; "
              f"no bench.json written (finished runs' records stay in {spec.out / 'runs'})", file=sys.stderr)
        return 128 + exc.signum
    from ckptlab.training.bench.report import markdown

    print(markdown(doc))
    print(f"wrote {spec.out / 'bench.json'}, bench.md, bench.png")
    return 0


def _run(spec: BenchSpec, progress: bool | None) -> dict:
    from tqdm import tqdm

    from ckptlab.training.bench.report import SCHEMA, machine_info, version_info, write_outputs
    from ckptlab.training.bench.runner import run_bench, shape_flags
    from ckptlab.training.bench.spec import schedule

    spec.out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    total = len(schedule(spec)) + spec.repeats
    with tqdm(total=total, unit="run", desc="bench", file=sys.stderr,
              disable=None if progress is None else not progress) as bar:
        calls = 0

        def step(what: str) -> None:  # called as each run starts: the one before it is done
            nonlocal calls
            bar.update(1 if calls else 0)
            bar.set_postfix_str(what)
            calls += 1

        doc = run_bench(spec, step)
        bar.update(1)
    runs = [r for r in doc["runs"] if r["checkpoint_bytes"]]
    config = {"preset": spec.preset, "shape": spec.shape, "state_mb": spec.state_mb, "train_flags": shape_flags(spec),
              "model_dtype": spec.model_dtype, "device": spec.device, "kinds": list(spec.measured),
              "variants": [{"name": v.name, "base": v.base, "flags": list(v.flags)} for v in spec.variants],
              "steps": spec.steps, "every": list(spec.every), "repeats": spec.repeats, "seed": spec.seed,
              "writer_threads": spec.writer_threads, "threads": spec.threads,
              "state_bytes": max((r["checkpoint_bytes"] for r in runs), default=0)}
    full = {"schema": SCHEMA, "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": sys.argv, "machine": machine_info(spec.dir or spec.out), "versions": version_info(),
            "config": config, **doc,
            "notes": {"cold_load": "posix_fadvise(DONTNEED) on the checkpoint's files after it is durable, then "
                                   "load() onto the run's device; cold_load_resident is the share of its pages still cached (mincore)",
                      "raw_disk": "per round, after its runs: the largest checkpoint's bytes written once "
                                  "O_DIRECT+fdatasync and once buffered+fsync; best_write_s is the faster"}}
    write_outputs(full, spec.out)
    return full


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n\n")[0]))
    return run_bench_command(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(main())
