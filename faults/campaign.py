"""Crash-consistency campaigns: ``ckptlab campaign`` / ``python -m ckptlab.faults.campaign``.

Runs the tiers of faults/tiers/ in parallel worker processes, each trial a real child
process that is crashed (or failed, or power-cut on replay), recovered and checked against the
oracle (faults/oracle.py). Writes one row per trial to ``OUT/results.parquet``, the summary to
``OUT/summary.json``, keeps the working directory of every violating trial (child config, ack
log, I/O log, crash states) under ``OUT/violations/``, prints a table, and exits non-zero on
any violation or harness error. Every trial is reproducible from the printed seed and id:

    ckptlab campaign --seed S --trial points:17 [--short | --full] [--unsafe M]

Three sizes: ``--short`` (seconds, what ``make test`` runs), the default (``make campaign``, a
few minutes) and ``--full`` (``make campaign-full``: over 10,000 trials). The summary counts the
trials in each coverage cell (tier x writer x fault point x action, faults/coverage.py).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

from ckptlab.faults import coverage
from ckptlab.faults.multirank_saver import MUTATIONS as MULTIRANK_MUTATIONS
from ckptlab.faults import tiers as T
from ckptlab.faults.tiers import enospc
from ckptlab.faults.tiers.common import Context, row, unsupported

DEFAULT_OUT = "campaign-results"
# Trials per tier: (short, default, full); exhaustive tiers (points, ioerr) ignore them and --trials.
SCALE = {"random": (8, 300, 2000), "powerloss": (1, 16, 60), "bitrot": (60, 660, 7600), "enospc": (1, 12, 60),
         "realfs": (3, 36, 1000), "training": (0, 6, 12), "multirank": (1, 2, 4)}


@dataclass
class Options:
    tiers: tuple[str, ...] = T.TIERS
    short: bool = False
    full: bool = False
    trials: int | None = None
    seed: int = 1
    jobs: int = 0
    out: str = DEFAULT_OUT
    unsafe: tuple[str, ...] = ()
    trial: tuple[str, ...] = ()
    max_violations: int | None = None
    work_dir: str | None = None
    keep_work: bool = False
    progress: bool = True
    quiet: bool = False


@dataclass
class Result:
    rows: list[dict] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    out: str = ""
    coverage: dict = field(default_factory=dict)   # cell -> trials run in it
    expected: dict = field(default_factory=dict)   # cell -> None | why it is empty by design

    @property
    def violations(self) -> int:
        return sum(r["violations"] for r in self.rows)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.rows if r["outcome"] == "error")

    def by_tier(self, writer: str | None = None) -> dict[str, dict]:
        """Counts per tier (of one writer's trials only, with ``writer``)."""
        out: dict[str, dict] = {}
        for r in self.rows:
            if writer is not None and r.get("writer", "pccheck") != writer:
                continue
            t = out.setdefault(r["tier"], {"trials": 0, "fired": 0, "checks": 0, "violations": 0,
                                           "violating_trials": 0, "errors": 0, "not_fired": 0, "noop": 0,
                                           "skipped": 0, "seconds": 0.0})
            t["trials"] += 1
            t["fired"] += 1 if r["fired"] else 0
            t["checks"] += r["checks"]
            t["violations"] += r["violations"]
            t["violating_trials"] += 1 if r["violations"] else 0
            for k in ("error", "not_fired", "noop", "skipped"):
                t[k + ("s" if k == "error" else "")] += r["outcome"] == k
            t["seconds"] += r["seconds"]
        return out

    @property
    def exit_code(self) -> int:
        return 1 if self.violations or self.errors else 0


def trial_count(tier: str, opts: Options) -> int:
    """Trials of a randomized tier; 0 for an exhaustive one (it enumerates its whole space)."""
    if tier not in SCALE:
        return 0
    short, default, full = SCALE[tier]
    if opts.trials is None:
        return short if opts.short else full if opts.full else default
    n = opts.trials
    return {"random": n, "bitrot": 2 * n, "powerloss": max(1, n // 30), "enospc": max(2, n // 30),
            "realfs": max(3, n // 10), "training": max(1, n // 50), "multirank": 2}[tier]


def generate(opts: Options) -> tuple[list[dict], dict[str, str]]:
    """Every trial of the selected tiers (deterministic in opts.seed), and skipped tiers."""
    trials: list[dict] = []
    skipped: dict[str, str] = {}
    for tier in opts.tiers:
        if tier not in T.REGISTRY:
            raise ValueError(f"unknown tier {tier!r} (known: {', '.join(T.TIERS)})")
        ok, why = T.REGISTRY[tier].available()
        if not ok:
            skipped[tier] = why
            continue
        skipped |= {f"{tier} ({part})": why for part, why in T.REGISTRY[tier].parts_skipped().items()}
        trials += T.REGISTRY[tier].generate(opts.seed, trial_count(tier, opts), opts.short)
    if opts.trial:
        wanted = set(opts.trial)
        trials = [t for t in trials if t["id"] in wanted]
        missing = wanted - {t["id"] for t in trials}
        if missing:
            raise ValueError(f"no such trial(s) {sorted(missing)} for --seed {opts.seed}"
                             f"{' --short' if opts.short else ' --full' if opts.full else ''} and tiers {','.join(opts.tiers)}")
    return trials, skipped


def repro(trial: dict, opts: Options) -> str:
    parts = ["ckptlab campaign", f"--seed {opts.seed}", f"--tiers {trial['tier']}", f"--trial {trial['id']}"]
    if opts.short:
        parts.append("--short")
    if opts.full:
        parts.append("--full")
    parts += [f"--unsafe {u}" for u in opts.unsafe]
    return " ".join(parts)


# --- running trials ---------------------------------------------------------------------------

_CTX: Context | None = None


def _init_worker(ctx: Context) -> None:
    global _CTX
    _CTX = ctx
    import ckptlab.core  # noqa: F401
    import torch
    torch.set_num_threads(1)


def run_one(trial: dict, ctx: Context | None = None) -> tuple[dict, str | None]:
    """Run one trial; returns its row and, if it violated, the kept working directory."""
    ctx = ctx or _CTX
    assert ctx is not None
    tdir = os.path.join(ctx.work, "trials", trial["id"].replace(":", "-"))
    shutil.rmtree(tdir, ignore_errors=True)
    os.makedirs(tdir)
    t0 = time.monotonic()
    try:
        why = unsupported(trial, ctx)
        r = row(trial, "skipped", checks=0, detail=why) if why else T.REGISTRY[trial["tier"]].run(trial, ctx, tdir)
    except Exception as e:  # noqa: BLE001 - a harness failure is reported, never swallowed
        r = row(trial, "error", detail=f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")
    r["seconds"] = round(time.monotonic() - t0, 3)
    if r["violations"] or r["outcome"] == "error":
        return r, tdir
    shutil.rmtree(tdir, ignore_errors=True)
    return r, None


def _weight(trial: dict) -> int:
    return {"training": 0, "multirank": 0, "enospc": 1, "powerloss": 2, "realfs": 3, "random": 4, "points": 5,
            "ioerr": 6}.get(trial["tier"], 7)


def run(opts: Options) -> Result:
    t_start = time.monotonic()
    trials, skipped = generate(opts)
    trials.sort(key=_weight)  # long trials first: better packing across workers
    own_work = opts.work_dir is None
    work = opts.work_dir or tempfile.mkdtemp(prefix="ckptlab-campaign-")
    os.makedirs(work, exist_ok=True)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else work
    states = tempfile.mkdtemp(prefix="ckptlab-states-", dir=shm)
    ctx = Context(work=work, states=states, unsafe=tuple(opts.unsafe), short=opts.short)
    os.makedirs(opts.out, exist_ok=True)
    result = Result(skipped=skipped, out=opts.out)
    jobs = opts.jobs or os.cpu_count() or 1
    bar = _progress(len(trials), opts)
    kept: list[tuple[dict, str]] = []

    def collect(r: dict, tdir: str | None) -> bool:
        result.rows.append(r)
        if tdir:
            dest = os.path.join(opts.out, "violations", r["trial"].replace(":", "-"))
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(tdir, dest, symlinks=True, ignore_dangling_symlinks=True)
            shutil.rmtree(tdir, ignore_errors=True)
            kept.append((r, dest))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(violations=result.violations, refresh=False)
        return opts.max_violations is not None and result.violations >= opts.max_violations

    try:
        if jobs == 1 or len(trials) <= 1:
            for t in trials:
                if collect(*run_one(t, ctx)):
                    break
        else:
            mp = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp, initializer=_init_worker,
                                        initargs=(ctx,)) as ex:
                futures = {ex.submit(run_one, t): t for t in trials}
                stop = False
                for fut in cf.as_completed(futures):
                    try:
                        r, tdir = fut.result()
                    except cf.CancelledError:
                        continue
                    except Exception as e:  # noqa: BLE001 - a worker died
                        r, tdir = row(futures[fut], "error", detail=f"worker failed: {e}"), None
                    if not stop and collect(r, tdir):
                        stop = True
                        for f in futures:
                            f.cancel()
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(states, ignore_errors=True)
        if own_work and not opts.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.monotonic() - t_start
    ran = {r["trial"] for r in result.rows if r["outcome"] != "skipped"}
    result.coverage = dict(coverage.count(t for t in trials if t["id"] in ran))
    result.expected = expected_cells(opts, trials)
    for r in result.rows:
        r["repro"] = repro({"tier": r["tier"], "id": r["trial"]}, opts)
    result.rows.sort(key=lambda r: (T.TIERS.index(r["tier"]), int(r["trial"].split(":")[1])))
    _write(result, opts)
    return result


def expected_cells(opts: Options, trials: list[dict]) -> dict:
    """The coverage grid of the tiers that ran (realfs: of the file systems it ran on)."""
    ran = {t["tier"] for t in trials}
    variants = sorted({coverage.tier_label(t) for t in trials if t["tier"] == "realfs"})
    return coverage.expected([t for t in opts.tiers if t in ran], variants)


def coverage_rows(result: Result) -> list[dict]:
    """One row per cell of the grid (and any cell outside it a trial reached)."""
    cells = dict.fromkeys(list(result.expected) + sorted(set(result.coverage) - set(result.expected)))
    return [{"tier": c[0], "writer": c[1], "point": c[2], "action": c[3], "trials": result.coverage.get(c, 0),
             "empty_by_design": result.expected.get(c)} for c in cells]


def _progress(total: int, opts: Options):
    if not opts.progress or opts.quiet:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="campaign", unit="trial", dynamic_ncols=True, file=sys.stderr)


def _write(result: Result, opts: Options) -> None:
    summary = {"seed": opts.seed, "short": opts.short, "full": opts.full, "tiers": list(opts.tiers), "unsafe": list(opts.unsafe),
               "seconds": round(result.seconds, 2), "trials": len(result.rows), "violations": result.violations,
               "errors": result.errors, "skipped": result.skipped, "by_tier": result.by_tier(),
               "torchsave_by_tier": result.by_tier("torchsave"), "coverage": coverage_rows(result)}
    with open(os.path.join(opts.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        with open(os.path.join(opts.out, "results.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in result.rows)
        return
    cols = ["tier", "trial", "writer", "seed", "outcome", "checks", "violations", "fired", "loaded_step", "acked_step",
            "detail", "seconds", "params", "repro"]
    schema = pa.schema([("tier", pa.string()), ("trial", pa.string()), ("writer", pa.string()), ("seed", pa.uint64()),
                        ("outcome", pa.string()), ("checks", pa.int64()), ("violations", pa.int64()),
                        ("fired", pa.bool_()), ("loaded_step", pa.int64()), ("acked_step", pa.int64()),
                        ("detail", pa.string()), ("seconds", pa.float64()), ("params", pa.string()),
                        ("repro", pa.string())],
                       metadata={"campaign": json.dumps({k: v for k, v in summary.items()
                                                          if "by_tier" not in k and k != "coverage"})})
    table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in result.rows], schema=schema)
    tmp = os.path.join(opts.out, ".results.parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, os.path.join(opts.out, "results.parquet"))


def print_summary(result: Result, opts: Options, file=None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=file or sys.stdout, width=120)
    title = f"crash-consistency campaign (seed {opts.seed}{', short' if opts.short else ', full' if opts.full else ''}"
    title += f", unsafe: {','.join(opts.unsafe)})" if opts.unsafe else ")"
    table = Table(title=title)
    for col, just in (("tier", "left"), ("trials", "right"), ("crashed/failed", "right"), ("checks", "right"),
                      ("violations", "right"), ("other", "left"), ("time", "right")):
        table.add_column(col, justify=just)
    tiers, torchsave = result.by_tier(), result.by_tier("torchsave")

    def add(name: str, t: dict) -> None:
        other = ", ".join(f"{t[k]} {k.replace('_', ' ')}" for k in ("not_fired", "noop", "errors", "skipped") if t[k])
        style = "red" if t["violations"] or t["errors"] else "green"
        table.add_row(name, str(t["trials"]), str(t["fired"]), str(t["checks"]),
                      f"[{style}]{t['violations']}[/{style}]" + (f" in {t['violating_trials']} trials"
                                                                 if t["violations"] else ""),
                      other, f"{t['seconds']:.1f}s")

    for tier in T.TIERS:
        if tier in result.skipped:
            table.add_row(tier, "0", "-", "-", "-", f"[yellow]skipped: {result.skipped[tier]}[/yellow]", "-")
            continue
        if tier not in tiers:
            continue
        add(tier, tiers[tier])
        if tier in torchsave:  # the torchsave writer's share of the row above
            add("  of which torchsave", torchsave[tier])
        for part, why in result.skipped.items():
            if part.startswith(f"{tier} ("):
                table.add_row(f"  {part}", "0", "-", "-", "-", f"[yellow]skipped: {why}[/yellow]", "-")
    total_checks = sum(t["checks"] for t in tiers.values())
    style = "red" if result.exit_code else "green"
    table.add_row("[b]total[/b]", str(len(result.rows)), "", str(total_checks),
                  f"[{style}][b]{result.violations}[/b][/{style}]", f"{result.errors} errors" if result.errors else "",
                  f"{result.seconds:.1f}s wall")
    console.print(table)
    if result.expected and not opts.trial:  # (a few chosen trials: the table would be all "missing")
        console.print(coverage_table(result))
    bad = [r for r in result.rows if r["violations"] or r["outcome"] == "error"]
    for r in bad[:10]:
        console.print(Text.assemble((r["outcome"].upper(), "bold red"),
                                    f" {r['trial']} (seed {r['seed']}): {r['detail'][:600]}"), highlight=False)
        console.print(f"  reproduce: {r['repro']}", markup=False, highlight=False)
    if len(bad) > 10:
        console.print(f"... and {len(bad) - 10} more (see {os.path.join(opts.out, 'results.parquet')})")
    console.print(f"results: {os.path.join(opts.out, 'results.parquet')}"
                  + (f"; violating trials kept in {os.path.join(opts.out, 'violations')}" if bad else ""),
                  markup=False, highlight=False)


def coverage_table(result: Result):
    """Coverage per (tier, writer, action): fault points with trials, out of those expected;
    trials per covered cell; cells empty by design (why: summary.json "coverage")."""
    from rich.table import Table

    table = Table(title="coverage: tier x writer x action over fault points (cells: summary.json \"coverage\")")
    for col in ("tier", "writer", "action", "points covered", "trials/cell", "empty by design", "missing"):
        table.add_column(col, justify="left" if col in ("tier", "writer", "action", "missing") else "right")
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for c in coverage_rows(result):
        groups.setdefault((c["tier"], c["writer"], c["action"]), []).append(c)
    for (tier, writer, action), cs in groups.items():
        wanted = [c for c in cs if c["empty_by_design"] is None]
        hit = [c["trials"] for c in wanted if c["trials"]]
        missing = [c["point"] for c in wanted if not c["trials"]]
        by_design = [c for c in cs if c["empty_by_design"] is not None]
        if not wanted and not any(c["trials"] for c in cs):
            table.add_row(tier, writer, action, "-", "-", f"all {len(cs)}", "", style="dim")
            continue
        table.add_row(tier, writer, action, f"{len(hit)}/{len(wanted)}",
                      f"{min(hit)}-{max(hit)}" if hit else "0", str(len(by_design)) if by_design else "",
                      f"[red]{', '.join(missing)}[/red]" if missing else "")
    reasons = sorted({c["empty_by_design"] for c in coverage_rows(result) if c["empty_by_design"]})
    table.caption = "empty by design: " + "; ".join(reasons) if reasons else None
    return table


# --- command line ------------------------------------------------------------------------------

def _tiers(text: str) -> list[str]:
    out = []
    for t in text.split(","):
        t = t.strip()
        if not t:
            continue
        if t == "all":
            out += list(T.TIERS)
        elif t not in T.TIERS:
            raise argparse.ArgumentTypeError(f"unknown tier {t!r} (known: {', '.join(T.TIERS)}, all)")
        else:
            out.append(t)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ckptlab import _engine

    p.add_argument("--tiers", type=_tiers, action="append", default=None, metavar="LIST",
                   help=f"comma-separated tiers ({', '.join(T.TIERS)}; default all)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--short", action="store_true", help="the quick version (seconds; what `make test` runs)")
    size.add_argument("--full", action="store_true",
                      help="the long version (over 10,000 trials; what `make campaign-full` runs)")
    p.add_argument("--trials", type=int, default=None, metavar="N",
                   help="trials of each randomized tier (random, bitrot x2, powerloss N/30 recordings, ...); "
                        "the exhaustive tiers (points, ioerr) always run their whole space")
    p.add_argument("--seed", type=int, default=1, help="campaign seed; every trial's own seed derives from it")
    p.add_argument("--jobs", "-j", type=int, default=0, help="parallel workers (default: CPU count)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"results directory (default ./{DEFAULT_OUT})")
    p.add_argument("--unsafe", action="append", default=[],
                   choices=list(_engine.durability_mutations()) + list(MULTIRANK_MUTATIONS),
                   help="run every engine with this durability step removed (the campaign must then fail); "
                        f"{', '.join(MULTIRANK_MUTATIONS)}: the multi-rank coordinator's (the multirank tier)")
    p.add_argument("--trial", action="append", default=[], metavar="ID",
                   help="run only this trial id (e.g. points:17), as printed; repeatable")
    p.add_argument("--max-violations", type=int, default=None, metavar="N", help="stop after N violations")
    p.add_argument("--work-dir", default=None, help="where trials run (default: a new temp dir, removed after)")
    p.add_argument("--keep-work", action="store_true", help="keep the working directory")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--list", action="store_true", help="list the trials that would run, and exit")


def options_from_args(args: argparse.Namespace) -> Options:
    tiers = tuple(dict.fromkeys(t for group in (args.tiers or [list(T.TIERS)]) for t in group))
    return Options(tiers=tiers, short=args.short, full=args.full, trials=args.trials, seed=args.seed, jobs=args.jobs, out=args.out,
                   unsafe=tuple(args.unsafe), trial=tuple(args.trial), max_violations=args.max_violations,
                   work_dir=args.work_dir, keep_work=args.keep_work, progress=args.progress)


def run_from_args(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    try:
        if args.list:
            trials, skipped = generate(opts)
            for t in trials:
                print(t["id"], t["seed"], json.dumps(t["p"], sort_keys=True)[:160])
            for tier, why in skipped.items():
                print(f"# {tier} skipped: {why}")
            return 0
        print(f"ckptlab campaign: seed {opts.seed}, tiers {','.join(opts.tiers)}"
              + (", short" if opts.short else ", full" if opts.full else "") + (f", unsafe {','.join(opts.unsafe)}" if opts.unsafe else ""),
              flush=True)
        result = run(opts)
    except ValueError as e:
        print(f"ckptlab campaign: error: {e}", file=sys.stderr)
        return 2
    print_summary(result, opts)
    return result.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--inner-enospc"]:  # inside the mount namespace (faults/tiers/enospc.py run)
        spec_path, result_path = argv[1], argv[2]
        with open(spec_path) as f:
            spec = json.load(f)
        try:
            r = enospc.inner(spec)
        except Exception as e:  # noqa: BLE001
            r = row(spec["trial"], "error", detail=f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")
        with open(result_path, "w") as f:
            json.dump(r, f)
        return 0
    parser = argparse.ArgumentParser(prog="python -m ckptlab.faults.campaign",
                                     description="Crash-consistency campaign for the ckptlab engine.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
