"""The campaign's tiers (reliability.md §5.3): how each one makes its trials and runs one.

A trial is a plain dict ``{"tier", "id", "seed", "p": params}``, generated deterministically
from the campaign seed, so ``ckptlab campaign --seed S --trial ID`` reruns exactly it (the
random-time tier reruns the same kill delay; where the OS schedules threads is not ours).
Running a trial returns one result row. Every trial that crashes something runs a real child
process: the light saver (faults/saver.py), or the reference training loop.

    points     SIGKILL at every named fault point x checkpoint x occurrence; commit-order
               scenarios (a slow checkpoint overtaken); consecutive crashes (crash again
               during the first save after recovery)
    random     SIGKILL at a uniformly random time in a run of overlapping saves
    ioerr      the N-th occurrence of each failing operation returns EIO/ENOSPC/EDQUOT or a
               short write (SQLite ioerr style), N over every occurrence
    powerloss  record a run's file-system operations, rebuild every crash state a power cut
               may leave (faults/replay.py), recover each
    bitrot     flip bits, truncate, zero, delete, swap, misdirect files of committed checkpoints
    enospc     a real full disk: a size-limited tmpfs in a user namespace (unshare -Urm)
    training   crash the reference training loop (fault point, --fail-at-step, random time),
               resume it, compare its loss file with an uninterrupted run bit for bit
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ckptlab.faults import oracle
from ckptlab.faults.payload import TensorSpec, plan_step, random_layout

TIERS = ("points", "random", "ioerr", "powerloss", "bitrot", "enospc", "training")
KiB, MiB = 1 << 10, 1 << 20
CHILD_TIMEOUT_S = 120


@dataclass
class Context:
    """Where a campaign works and what it applies to every child engine."""

    work: str                      # trial directories (a real disk: fsync matters)
    states: str                    # materialized crash states (tmpfs when there is one)
    unsafe: tuple[str, ...] = ()   # durability mutations under test (the teeth)
    short: bool = False
    python: str = sys.executable


def trial_seed(seed: int, tier: str, index: int) -> int:
    return int(hashlib.sha256(f"{seed}:{tier}:{index}".encode()).hexdigest()[:12], 16)


# --- setups: one saver run's shape ----------------------------------------------------------

@dataclass
class Setup:
    seed: int
    layout: list[TensorSpec]
    engine: dict[str, Any]
    steps: list[int]
    compute_ms: float = 0.0
    wait_each: bool = False
    plans: dict[int, dict] = field(default_factory=dict)

    def plan(self, step: int) -> dict:
        if step not in self.plans:
            self.plans[step] = plan_step(self.layout, self.seed, step)
        return self.plans[step]

    def as_json(self) -> dict:
        return {"seed": self.seed, "layout": [t.as_json() for t in self.layout], "engine": self.engine,
                "steps": self.steps, "compute_ms": self.compute_ms, "wait_each": self.wait_each}

    @staticmethod
    def from_json(d: dict) -> Setup:
        return Setup(d["seed"], [TensorSpec.from_json(t) for t in d["layout"]], dict(d["engine"]), list(d["steps"]),
                     d.get("compute_ms", 0.0), d.get("wait_each", False))

    # Analytic fault-point counts (as the engine will pass them, per checkpoint).
    def chunks(self, step: int) -> int:
        total = self.plan(step)["total_bytes"]
        stream = (max(total, 1) + 4095) // 4096 * 4096
        return -(-stream // self.engine["chunk_bytes"])

    def shards(self, step: int) -> int:
        return min(self.engine["shards"] or self.engine["writer_threads"], self.chunks(step))

    def point_count(self, point: str, ckpt: int) -> int:
        step = self.steps[ckpt - 1]
        keep = self.engine["keep_last"]
        if point in ("before_chunk_write", "after_chunk_write"):
            return self.chunks(step)
        if point in ("before_data_fsync", "after_data_fsync"):
            return self.shards(step)
        if point == "before_gc":
            return 1 if keep > 0 else 0
        if point == "during_gc":
            return 1 if 0 < keep < ckpt else 0
        return 1


def random_setup(rng: random.Random, small: bool = False) -> Setup:
    chunk = rng.choice([64 * KiB, 64 * KiB, 128 * KiB, 256 * KiB])
    size = rng.choice([96 * KiB, 300 * KiB, 640 * KiB] + ([] if small else [1200 * KiB]))
    stride = rng.choice([1, 5, 10])
    engine = dict(writer_threads=rng.choice([1, 2, 3, 4]), shards=rng.choice([0, 0, 1, 2, 3, 5]), chunk_bytes=chunk,
                  staging_bytes=chunk * rng.choice([1, 2, 4, 8, 32]), max_inflight=rng.choice([1, 2, 2, 3]),
                  keep_last=rng.choice([0, 1, 2, 2, 3]), io_mode=rng.choice(["auto", "auto", "buffered"]),
                  prefault=False)
    return Setup(rng.getrandbits(31), random_layout(rng, size), engine,
                 [stride * (i + 1) for i in range(rng.randint(3, 5 if small else 6))],
                 compute_ms=rng.choice([0.0, 0.0, 2.0, 10.0]), wait_each=rng.random() < 0.25)


# Fixed shapes for the exhaustive point tiers: several chunks and shards per checkpoint,
# retention on, and a single-writer single-file variant.
POINT_SETUPS = [
    dict(engine=dict(writer_threads=2, shards=2, chunk_bytes=64 * KiB, staging_bytes=256 * KiB, max_inflight=2,
                     keep_last=2, io_mode="auto", prefault=False), size=300 * KiB, steps=[10, 20, 30, 40]),
    dict(engine=dict(writer_threads=4, shards=3, chunk_bytes=128 * KiB, staging_bytes=2 * MiB, max_inflight=1,
                     keep_last=1, io_mode="buffered", prefault=False), size=700 * KiB, steps=[1, 2, 3, 4, 5]),
    dict(engine=dict(writer_threads=1, shards=1, chunk_bytes=256 * KiB, staging_bytes=256 * KiB, max_inflight=3,
                     keep_last=3, io_mode="auto", prefault=False), size=200 * KiB, steps=[5, 10, 15, 20, 25]),
]


def point_setup(index: int) -> Setup:
    spec = POINT_SETUPS[index]
    rng = random.Random(1000 + index)
    return Setup(rng.getrandbits(31), random_layout(rng, spec["size"]), dict(spec["engine"]), list(spec["steps"]))


# --- running the saver child ------------------------------------------------------------------

@dataclass
class ChildRun:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    killed_by_us: bool = False

    @property
    def sigkilled(self) -> bool:
        return self.rc == -signal.SIGKILL


def write_child_config(tdir: str, setup: Setup, sessions: list[dict], ckdir: str | None = None,
                       filler: str | None = None, ack_log: str | None = None) -> str:
    ckdir = ckdir or os.path.join(tdir, "ck")
    os.makedirs(ckdir, exist_ok=True)
    steps = sorted({s for sess in sessions for s in sess["steps"]})
    cfg = {"dir": ckdir, "seed": setup.seed, "layout": [t.as_json() for t in setup.layout],
           "plans": {str(s): setup.plan(s) for s in steps}, "ack_log": ack_log or os.path.join(tdir, "ack.log"),
           "sessions": sessions, "filler": filler}
    path = os.path.join(tdir, f"child-{len([n for n in os.listdir(tdir) if n.startswith('child-')])}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def session(setup: Setup, ctx: Context, steps: list[int] | None = None, faults: str = "", io_log: str = "",
            io_log_data: bool = True, **engine_overrides) -> dict:
    engine = dict(setup.engine, faults=faults, unsafe=list(ctx.unsafe), io_log=io_log, io_log_data=io_log_data)
    engine.update(engine_overrides)
    return {"engine": engine, "steps": list(steps if steps is not None else setup.steps),
            "compute_ms": setup.compute_ms, "wait_each": setup.wait_each}


def _child_env() -> dict[str, str]:
    from ckptlab.core.fault_spec import child_env

    return child_env()


def run_child(ctx: Context, cfg_path: str, kill_after: float | None = None) -> ChildRun:
    """Run the saver; with ``kill_after``, SIGKILL it that many seconds after it is ready."""
    cmd = [ctx.python, "-m", "ckptlab.faults.saver", cfg_path]
    t0 = time.monotonic()
    if kill_after is None:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=_child_env(),
                           cwd=os.path.dirname(cfg_path), check=False)
        return ChildRun(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(),
                         cwd=os.path.dirname(cfg_path))
    ready = p.stdout.readline()
    killed = False
    if ready.strip() == "ready":
        try:
            p.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            killed = True
    out, err = p.communicate(timeout=CHILD_TIMEOUT_S)
    return ChildRun(p.returncode, ready + out, err, time.monotonic() - t0, killed)


def _tail(text: str, n: int = 400) -> str:
    text = text.strip()
    return text[-n:]


# --- result rows -------------------------------------------------------------------------------

def row(trial: dict, outcome: str, *, checks: int = 1, violations: list[str] | None = None,
        fired: bool | None = None, loaded: int | None = None, acked: int | None = None, detail: str = "",
        seconds: float = 0.0, extra: dict | None = None, count: int | None = None) -> dict:
    """One result row; ``violations`` are the messages, ``count`` how many checks failed
    (default: one per message)."""
    violations = violations or []
    if violations and outcome in ("ok", "not_fired"):
        outcome = "violation"
    return {"tier": trial["tier"], "trial": trial["id"], "seed": trial["seed"], "outcome": outcome,
            "checks": checks, "violations": len(violations) if count is None else count, "fired": fired, "loaded_step": loaded,
            "acked_step": acked, "detail": ("; ".join(violations) if violations else detail)[:4000],
            "seconds": round(seconds, 3), "params": oracle.dump(trial["p"] | (extra or {}))}


def _crash_checks(ctx: Context, setup: Setup, ckdir: str, hist: oracle.History, strict: bool = True,
                  recover: bool = True) -> tuple[list[str], oracle.DiskCheck]:
    d = oracle.check_directory(ckdir, setup.layout, setup.seed, acked=hist.max_acked, sessions=hist.sessions,
                               failed=hist.failed, strict_committed=strict)
    v = list(d.violations)
    order = oracle.check_commit_order(hist.commits)
    if order:
        v.append(order)
    if recover:
        new_step = max(hist.submitted + setup.steps + [0]) + 1000
        problem = oracle.check_recoverable(ckdir, setup.layout, setup.seed, new_step, setup.plan(new_step))
        if problem:
            v.append(problem)
    return v, d


# --- points ------------------------------------------------------------------------------------

def gen_points(seed: int, short: bool) -> list[dict]:
    from ckptlab.core.fault_spec import fault_points

    trials: list[dict] = []
    setups = [0] if short else list(range(len(POINT_SETUPS)))
    for si in setups:
        setup = point_setup(si)
        n = len(setup.steps)
        ckpts = [2] if short else sorted({1, 2, n})
        for point in fault_points():
            for ck in ckpts:
                count = setup.point_count(point, ck)
                if count == 0 and short:
                    count, ck = setup.point_count(point, n), n
                if count == 0:
                    continue
                for hit in ([1] if short else sorted({1, count})):
                    trials.append({"kind": "kill", "setup": si, "point": point, "ckpt": ck, "hit": hit})
        # Commit order: checkpoint 2 made slow so 3 finishes first; with and without a kill
        # right after 3 commits.
        trials.append({"kind": "order", "setup": si, "kill": True})
        if not short:
            trials.append({"kind": "order", "setup": si, "kill": False})
    if not short:
        rng = random.Random(seed)
        points = fault_points()
        for _ in range(12):
            trials.append({"kind": "double", "setup": rng.randrange(len(POINT_SETUPS)),
                           "first": [rng.choice(points), rng.randint(1, 3)], "second": rng.choice(points)})
    return [{"tier": "points", "id": f"points:{i}", "seed": trial_seed(seed, "points", i), "p": p}
            for i, p in enumerate(trials)]


def run_points(trial: dict, ctx: Context, tdir: str) -> dict:
    p = trial["p"]
    t0 = time.monotonic()
    setup = point_setup(p["setup"])
    ckdir = os.path.join(tdir, "ck")
    if p["kind"] == "order":
        setup.engine.update(max_inflight=3, writer_threads=3, shards=3, staging_bytes=4 * MiB)
        setup.wait_each = False
        faults = "point=before_data_fsync,ckpt=2,action=delay=300"
        if p["kill"]:
            faults += ";point=after_commit,ckpt=3,action=kill"
        cfg = write_child_config(tdir, setup, [session(setup, ctx, faults=faults)])
        run = run_child(ctx, cfg)
        fired = run.sigkilled if p["kill"] else True
    elif p["kind"] == "kill":
        rule = f"point={p['point']},ckpt={p['ckpt']},hit={p['hit']},action=kill"
        cfg = write_child_config(tdir, setup, [session(setup, ctx, faults=rule)])
        run = run_child(ctx, cfg)
        fired = run.sigkilled
    else:  # double: crash, recover, crash again in the first save after recovery
        point, ck = p["first"]
        ck = min(ck, len(setup.steps))
        if setup.point_count(point, ck) == 0:
            point = "before_rename"
        cfg = write_child_config(tdir, setup, [session(setup, ctx, faults=f"point={point},ckpt={ck},action=kill")])
        run = run_child(ctx, cfg)
        hist = oracle.read_history(os.path.join(tdir, "ack.log"))
        v, d = _crash_checks(ctx, setup, ckdir, hist, recover=False)
        if v or run.rc not in (0, -signal.SIGKILL):
            return row(trial, "violation", violations=v or [f"child failed rc={run.rc}: {_tail(run.stderr)}"],
                       fired=run.sigkilled, loaded=d.loaded_step, acked=hist.max_acked,
                       seconds=time.monotonic() - t0)
        start = d.loaded_step or 0
        steps = [start + i + 1 for i in range(3)]
        second = p["second"] if setup.point_count(p["second"], 1) else "before_rename"
        cfg = write_child_config(tdir, setup, [session(setup, ctx, steps=steps,
                                                       faults=f"point={second},ckpt=1,action=kill")])
        run2 = run_child(ctx, cfg)
        fired = run.sigkilled and run2.sigkilled
        run = run2
    if run.rc not in (0, -signal.SIGKILL):
        return row(trial, "violation", violations=[f"child failed rc={run.rc}: {_tail(run.stderr)}"],
                   seconds=time.monotonic() - t0)
    hist = oracle.read_history(os.path.join(tdir, "ack.log"))
    v, d = _crash_checks(ctx, setup, ckdir, hist)
    return row(trial, "ok" if fired else "not_fired", violations=v, fired=fired, loaded=d.loaded_step,
               acked=hist.max_acked, seconds=time.monotonic() - t0)


# --- random-time kills ---------------------------------------------------------------------------

RANDOM_SETUPS = 12  # distinct run shapes; each is timed once (calibration) and killed many times


def gen_random(seed: int, count: int) -> list[dict]:
    pool = []
    for j in range(min(RANDOM_SETUPS, count)):
        rng = random.Random(trial_seed(seed, "random-setup", j))
        setup = random_setup(rng, small=True)
        setup.steps = [setup.steps[0] * (i + 1) for i in range(rng.randint(4, 7))]
        pool.append((setup.as_json(), 2 if j % 4 == 3 else 1))
    out = []
    for i in range(count):
        s = trial_seed(seed, "random", i)
        rng = random.Random(s)
        setup, sessions = pool[i % len(pool)]
        out.append({"tier": "random", "id": f"random:{i}", "seed": s,
                    "p": {"setup": setup, "u": rng.random(), "sessions": sessions}})
    return out


def _calibrate(ctx: Context, setup: Setup) -> float:
    """Seconds from 'ready' to exit of an undisturbed run of this setup (cached per setup)."""
    key = hashlib.sha256(oracle.dump(setup.as_json()).encode()).hexdigest()[:16]
    cache = os.path.join(ctx.work, "calibration", key + ".json")
    if os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)["seconds"]
    tdir = os.path.join(ctx.work, "calibration", key + f"-{os.getpid()}")
    os.makedirs(tdir, exist_ok=True)
    cfg = write_child_config(tdir, setup, [session(setup, ctx)])
    p = subprocess.Popen([ctx.python, "-m", "ckptlab.faults.saver", cfg], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env=_child_env())
    p.stdout.readline()
    t0 = time.monotonic()
    p.wait(timeout=CHILD_TIMEOUT_S)
    seconds = time.monotonic() - t0
    shutil.rmtree(tdir, ignore_errors=True)
    tmp = cache + f".{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"seconds": seconds}, f)
    os.replace(tmp, cache)
    return seconds


def run_random(trial: dict, ctx: Context, tdir: str) -> dict:
    p = trial["p"]
    t0 = time.monotonic()
    setup = Setup.from_json(p["setup"])
    sessions = [session(setup, ctx)]
    if p["sessions"] == 2:  # a second writer continues in the same directory
        last = setup.steps[-1]
        sessions.append(session(setup, ctx, steps=[last + s for s in setup.steps]))
    total = _calibrate(ctx, setup) * p["sessions"]
    delay = p["u"] * total * 0.85  # undisturbed runs are a little faster than the first (timed) one
    cfg = write_child_config(tdir, setup, sessions)
    run = run_child(ctx, cfg, kill_after=delay)
    if run.rc not in (0, -signal.SIGKILL):
        return row(trial, "violation", violations=[f"child failed rc={run.rc}: {_tail(run.stderr)}"],
                   seconds=time.monotonic() - t0)
    hist = oracle.read_history(os.path.join(tdir, "ack.log"))
    v, d = _crash_checks(ctx, setup, os.path.join(tdir, "ck"), hist)
    return row(trial, "ok" if run.killed_by_us else "not_fired", violations=v, fired=run.killed_by_us,
               loaded=d.loaded_step, acked=hist.max_acked, seconds=time.monotonic() - t0,
               extra={"kill_after_s": round(delay, 4)})


# --- N-th I/O error --------------------------------------------------------------------------------

IOERR_SETUPS = [0, 1]


def gen_ioerr(seed: int, short: bool) -> list[dict]:
    from ckptlab.core.fault_spec import ERROR_POINTS

    trials = []
    actions = ["eio", "enospc", "edquot"]
    for si in IOERR_SETUPS[:1] if short else IOERR_SETUPS:
        setup = point_setup(si)
        n = len(setup.steps)
        for point in ERROR_POINTS:
            total = sum(setup.point_count(point, c) for c in range(1, n + 1))
            hits = sorted({1, total}) if short else list(range(1, total + 1))
            for h in hits:
                action = actions[(h + len(trials)) % len(actions)]
                if point == "before_chunk_write" and h % 4 == 0:
                    action = "short"
                trials.append({"setup": si, "point": point, "hit": h, "action": action})
    return [{"tier": "ioerr", "id": f"ioerr:{i}", "seed": trial_seed(seed, "ioerr", i), "p": p}
            for i, p in enumerate(trials)]


def run_ioerr(trial: dict, ctx: Context, tdir: str) -> dict:
    from ckptlab.faults.iolog import marks, read_io_log

    p = trial["p"]
    t0 = time.monotonic()
    setup = point_setup(p["setup"])
    steps = setup.steps + [setup.steps[-1] + 1]  # one more save: the engine must go on
    log = os.path.join(tdir, "io.log")
    rule = f"point={p['point']},hit={p['hit']},action={p['action']}"
    cfg = write_child_config(tdir, setup, [session(setup, ctx, steps=steps, faults=rule, io_log=log,
                                                   io_log_data=False)])
    run = run_child(ctx, cfg)
    ckdir = os.path.join(tdir, "ck")
    if run.rc != 0:
        return row(trial, "violation", violations=[(f"an injected error crashed the process: rc={run.rc} "
                                                    f"{_tail(run.stderr)}")], seconds=time.monotonic() - t0)
    injected = [m.detail() for m in marks(read_io_log(log), "inject")]
    hist = oracle.read_history(os.path.join(tdir, "ack.log"))
    setup.steps = steps
    v, d = _crash_checks(ctx, setup, ckdir, hist)
    for inj in injected:
        step = int(inj["step"])
        if step not in hist.failed:
            v.append(f"errno {inj['errno']} injected at {inj['point']} of step {step} was never reported")
        if step in hist.acked:
            v.append(f"step {step} was acknowledged although errno {inj['errno']} was injected at {inj['point']}")
        if step in d.valid:
            v.append(f"step {step} is on disk although its {inj['point']} failed")
        later = [s for s in hist.submitted if s > step]
        if later and not any(s in hist.acked for s in later):
            v.append(f"no save after the failed step {step} succeeded (engine wedged by errno {inj['errno']})")
    leaked = [n for n in os.listdir(ckdir) if n.startswith(".step_") and ".tmp-" in n]
    if leaked and not v:
        v.append(f"temp directories left behind after a failed checkpoint and a clean close: {leaked}")
    return row(trial, "ok" if injected else "not_fired", violations=v, fired=bool(injected),
               loaded=d.loaded_step, acked=hist.max_acked, seconds=time.monotonic() - t0,
               extra={"injected": injected})


# --- power loss: replayed crash states ------------------------------------------------------------

def gen_powerloss(seed: int, count: int) -> list[dict]:
    out = []
    for i in range(count):
        s = trial_seed(seed, "powerloss", i)
        rng = random.Random(s)
        setup = random_setup(rng, small=True)
        setup.engine["chunk_bytes"] = rng.choice([64 * KiB, 128 * KiB])
        setup.engine["staging_bytes"] = max(setup.engine["staging_bytes"], setup.engine["chunk_bytes"])
        setup.steps = setup.steps[:4]
        setup.compute_ms = 0.0
        if i % 3 == 0:  # with retention on and overlapping saves, a slow checkpoint 2
            setup.engine.update(keep_last=2, max_inflight=3, writer_threads=3, staging_bytes=4 * MiB)
            setup.wait_each = False
        delay = i % 3 == 0
        out.append({"tier": "powerloss", "id": f"powerloss:{i}", "seed": s,
                    "p": {"setup": setup.as_json(), "sessions": 2 if i % 4 == 1 else 1, "delay": delay,
                          "random_variants": 1 if i % 2 else 2}})
    return out


def _sessions_before(model, k: int) -> list[list[int]]:
    sessions: list[list[int]] = []
    for r in model.records[:k]:
        if r.is_mark and r.path == "start":
            sessions.append([])
        elif r.is_mark and r.path == "submit":
            if not sessions:
                sessions.append([])
            sessions[-1].append(int(r.detail()["step"]))
    return sessions


def run_powerloss(trial: dict, ctx: Context, tdir: str, max_report: int = 3) -> dict:
    from ckptlab.faults.iolog import read_io_log
    from ckptlab.faults.replay import CrashModel, materialize

    p = trial["p"]
    t0 = time.monotonic()
    setup = Setup.from_json(p["setup"])
    log = os.path.join(tdir, "io.log")
    faults = "point=before_data_fsync,ckpt=2,action=delay=150" if p["delay"] else ""
    sessions = [session(setup, ctx, faults=faults, io_log=log)]
    if p["sessions"] == 2:
        last = setup.steps[-1]
        sessions.append(session(setup, ctx, steps=[last + s for s in setup.steps[:2]], io_log=log))
    cfg = write_child_config(tdir, setup, sessions)
    run = run_child(ctx, cfg)
    if run.rc != 0:
        return row(trial, "violation", violations=[f"recording run failed rc={run.rc}: {_tail(run.stderr)}"],
                   seconds=time.monotonic() - t0)
    records = read_io_log(log)
    model = CrashModel(records)
    v: list[str] = []
    acks = [(int(r.detail()["step"]), True) for r in records if r.is_mark and r.path in ("ack", "fail")]
    order = oracle.check_commit_order(acks)
    if order:
        v.append(order)
    rng = random.Random(trial["seed"])
    checks = 0
    bad_states = 0
    state_root = os.path.join(ctx.states, os.path.basename(tdir))
    all_steps = sorted({int(r.detail()["step"]) for r in records if r.is_mark and r.path == "submit"})
    new_step = max(all_steps + [0]) + 1000
    new_plan = setup.plan(new_step)
    recover_every = 1 if not ctx.short else 4

    def context(k: int) -> tuple:
        acked = [int(m["step"]) for m in model.marks_before("ack", k)]
        failed = frozenset(int(m["step"]) for m in model.marks_before("fail", k))
        sessions = tuple(tuple(x) for x in _sessions_before(model, k))
        return (max(acked) if acked else None, failed, sessions)

    try:
        for state in model.states(rng, random_variants=p["random_variants"], context=context):
            checks += 1
            sdir = os.path.join(state_root, f"s{checks}")
            materialize(state.files, sdir)
            acked, failed, sessions = context(state.k)
            d = oracle.check_directory(sdir, setup.layout, setup.seed, acked=acked,
                                       sessions=[list(x) for x in sessions], failed=set(failed))
            sv = list(d.violations)
            if not sv and checks % recover_every == 0:
                problem = oracle.check_recoverable(sdir, setup.layout, setup.seed, new_step, new_plan)
                if problem:
                    sv.append(problem)
            if sv:
                bad_states += 1
                where = records[state.k - 1] if state.k else None
                if len(v) < max_report:
                    v.append(f"crash after record {state.k} ({where}), variant {state.variant}, "
                             f"{state.pending} ops pending: " + "; ".join(sv))
                keep = os.path.join(tdir, f"state-{state.k}-{state.variant}")
                if bad_states <= max_report:
                    shutil.copytree(sdir, keep, dirs_exist_ok=True)
            shutil.rmtree(sdir, ignore_errors=True)
            if bad_states >= 20:
                v.append("stopped after 20 violating states")
                break
    finally:
        shutil.rmtree(state_root, ignore_errors=True)
    if bad_states > max_report:
        v.append(f"{bad_states} crash states violate the oracle in all")
    return row(trial, "ok", checks=checks, violations=v, fired=True, count=bad_states + (1 if order else 0),
               acked=max([s for s, ok in acks if ok], default=None), seconds=time.monotonic() - t0,
               extra={"records": len(records), "bad_states": bad_states})


# --- bit rot --------------------------------------------------------------------------------------

def gen_bitrot(seed: int, count: int, bases: int) -> list[dict]:
    from ckptlab.faults.damage import KINDS

    out = []
    for i in range(count):
        s = trial_seed(seed, "bitrot", i)
        rng = random.Random(s)
        out.append({"tier": "bitrot", "id": f"bitrot:{i}", "seed": s,
                    "p": {"base": i % bases, "base_seed": trial_seed(seed, "bitrot-base", i % bases),
                          "kind": KINDS[i % len(KINDS)], "newest": rng.random() < 0.7}})
    return out


def _bitrot_base(ctx: Context, index: int, base_seed: int) -> tuple[str, Setup]:
    """Committed checkpoints to damage, made once per base by a saver child (cached)."""
    final = os.path.join(ctx.work, "bases", f"b{index}-{base_seed}")
    meta = os.path.join(final, "setup.json")
    if not os.path.exists(meta):
        rng = random.Random(base_seed)
        setup = random_setup(rng, small=True)
        setup.engine.update(keep_last=0)
        setup.steps = setup.steps[:3]
        tmp = final + f".tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        cfg = write_child_config(tmp, setup, [session(setup, ctx)])
        run = run_child(ctx, cfg)
        if run.rc != 0:
            raise RuntimeError(f"bit-rot base run failed rc={run.rc}: {_tail(run.stderr)}")
        with open(os.path.join(tmp, "setup.json"), "w") as f:
            json.dump(setup.as_json(), f)
        hist = oracle.read_history(os.path.join(tmp, "ack.log"))
        with open(os.path.join(tmp, "history.json"), "w") as f:
            json.dump({"acked": hist.acked}, f)
        try:
            os.rename(tmp, final)
        except OSError:  # another worker made it first
            shutil.rmtree(tmp, ignore_errors=True)
    with open(meta) as f:
        return final, Setup.from_json(json.load(f))


def run_bitrot(trial: dict, ctx: Context, tdir: str) -> dict:
    from ckptlab.core import CorruptCheckpointError, verify_checkpoint
    from ckptlab.core.layout import committed_step_dirs
    from ckptlab.faults.damage import corrupt

    p = trial["p"]
    t0 = time.monotonic()
    base, setup = _bitrot_base(ctx, p["base"], p["base_seed"])
    ckdir = os.path.join(ctx.states, os.path.basename(tdir) + "-ck")
    shutil.copytree(os.path.join(base, "ck"), ckdir)
    try:
        rng = random.Random(trial["seed"])
        dirs = committed_step_dirs(ckdir)
        steps = [s for s, _ in dirs]
        if len(dirs) < 2:
            return row(trial, "violation", violations=[f"base has {len(dirs)} committed checkpoints, expected >= 2"])
        ti = len(dirs) - 1 if p["newest"] else rng.randrange(len(dirs) - 1)
        target, path = dirs[ti]
        other = dirs[ti - 1][1] if ti else dirs[ti + 1][1]
        kind, desc = corrupt(path, rng, p["kind"], other=other)
        if desc is None:
            return row(trial, "noop", checks=0, detail=f"{kind} changed nothing", seconds=time.monotonic() - t0)
        v: list[str] = []
        try:
            verify_checkpoint(path)
            v.append(f"{desc}: step {target} still verifies (corruption not detected)")
        except CorruptCheckpointError:
            pass
        d = oracle.check_directory(ckdir, setup.layout, setup.seed, acked=None, sessions=[steps])
        v += [x for x in d.violations if "are missing" not in x]
        expected = max(s for s in steps if s != target)
        if d.loaded_step != (expected if target == steps[-1] else steps[-1]):
            v.append(f"{desc}: loaded step {d.loaded_step}, expected the fallback to step "
                     f"{expected if target == steps[-1] else steps[-1]}")
        # Recovery saves over the damage: the damaged newest step is saved again (replaced).
        new_step = target if target == steps[-1] else steps[-1] + 1
        problem = oracle.check_recoverable(ckdir, setup.layout, setup.seed, new_step, setup.plan(new_step))
        if problem:
            v.append(f"{desc}: {problem}")
        return row(trial, "ok", violations=v, fired=True, loaded=d.loaded_step, detail=desc,
                   seconds=time.monotonic() - t0, extra={"corruption": desc})
    finally:
        shutil.rmtree(ckdir, ignore_errors=True)


# --- real ENOSPC on a size-limited tmpfs ------------------------------------------------------------

def namespace_prefix() -> tuple[list[str] | None, str]:
    """The command prefix that gives a private mount namespace, or (None, why not)."""
    if not shutil.which("unshare"):
        return None, "unshare(1) is not installed"
    for prefix in (["unshare", "-Urm"], ["unshare", "-m"]):
        try:
            probe = "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d && rmdir $d"
            r = subprocess.run([*prefix, "sh", "-c", probe], capture_output=True, text=True, timeout=20,
                               check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            last = str(e)
            continue
        if r.returncode == 0:
            return prefix, ""
        last = r.stderr.strip() or f"rc={r.returncode}"
    return None, f"cannot mount a tmpfs in a private mount namespace here ({last})"


def gen_enospc(seed: int, count: int) -> list[dict]:
    out = []
    for i in range(count):
        s = trial_seed(seed, "enospc", i)
        rng = random.Random(s)
        setup = random_setup(rng, small=True)
        setup.steps = [1, 2, 3, 4, 5]
        # keep_last=2 and one save in flight: up to 3 checkpoints on disk at once, so every
        # level below 3 checkpoints of free space fills the disk at some save.
        setup.engine.update(keep_last=2, max_inflight=1)
        out.append({"tier": "enospc", "id": f"enospc:{i}", "seed": s,
                    "p": {"setup": setup.as_json(), "free_ckpts": [0.4, 0.9, 1.4, 1.9, 2.4, 2.8][i % 6]}})
    return out


def run_enospc(trial: dict, ctx: Context, tdir: str) -> dict:
    t0 = time.monotonic()
    prefix, why = namespace_prefix()
    if prefix is None:
        return row(trial, "skipped", checks=0, detail=why)
    mnt = os.path.join(tdir, "mnt")
    os.makedirs(mnt)
    spec_path, result_path = os.path.join(tdir, "inner.json"), os.path.join(tdir, "result.json")
    with open(spec_path, "w") as f:
        json.dump({"trial": trial, "mnt": mnt, "unsafe": list(ctx.unsafe), "work": tdir}, f)
    size = 16 * MiB
    script = (f"mount -t tmpfs -o size={size} tmpfs '{mnt}' && exec '{ctx.python}' -m ckptlab.faults.campaign "
              f"--inner-enospc '{spec_path}' '{result_path}'")
    r = subprocess.run(prefix + ["sh", "-c", script], capture_output=True, text=True, timeout=300,
                       env=_child_env(), check=False)
    if r.returncode != 0 or not os.path.exists(result_path):
        return row(trial, "error", detail=f"namespace run failed rc={r.returncode}: {_tail(r.stderr)}",
                   seconds=time.monotonic() - t0)
    with open(result_path) as f:
        res = json.load(f)
    res["seconds"] = round(time.monotonic() - t0, 3)
    return res


def enospc_inner(spec: dict) -> dict:
    """Runs inside the namespace with the tmpfs mounted at spec['mnt']."""
    trial, mnt = spec["trial"], spec["mnt"]
    ctx = Context(work=spec["work"], states=spec["work"], unsafe=tuple(spec["unsafe"]))
    p = trial["p"]
    setup = Setup.from_json(p["setup"])
    # tmpfs charges whole pages: the data files (the stream, padded to 4 KiB) + the MANIFEST.
    ckpt_bytes = max((setup.plan(s)["total_bytes"] + 4095) // 4096 * 4096 for s in setup.steps) + 8 * KiB
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    filler = os.path.join(mnt, "filler")
    fill = max(0, free - int(p["free_ckpts"] * ckpt_bytes))
    with open(filler, "wb") as f:
        block = bytes(MiB)
        left = fill
        while left > 0:
            left -= f.write(block[:min(left, MiB)])
    ckdir = os.path.join(mnt, "ck")
    cfg = write_child_config(spec["work"], setup, [session(setup, ctx)], ckdir=ckdir, filler=filler)
    run = run_child(ctx, cfg)
    hist = oracle.read_history(os.path.join(spec["work"], "ack.log"))
    if run.rc != 0:
        return row(trial, "violation", violations=[f"ENOSPC crashed the process: rc={run.rc} {_tail(run.stderr)}"])
    v, d = _crash_checks(ctx, setup, ckdir, hist)
    failed = sorted(hist.failed)
    for step in failed:
        if step in hist.acked:
            v.append(f"step {step} failed with a full disk and was also acknowledged")
        if step in d.valid:
            v.append(f"step {step} failed with a full disk but is on disk as committed")
        later = [s for s in hist.submitted if s > step]
        if hist.freed and later and not any(s in hist.acked for s in later):
            v.append(f"after space was freed no later save succeeded (failed step {step})")
    return row(trial, "ok" if failed else "not_fired", violations=v, fired=bool(failed), loaded=d.loaded_step,
               acked=hist.max_acked, extra={"failed_steps": failed, "filled_bytes": fill,
                                            "errnos": sorted({e for _, e, _ in hist.failures} |
                                                             {e for _, e in hist.errors})})


# --- the reference training loop -----------------------------------------------------------------

def training_available() -> tuple[bool, str]:
    try:
        import ckptlab.training.cli  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"ckptlab.training is not importable ({type(e).__name__}: {e})"
    return True, ""


TRAIN_STEPS, TRAIN_FREQ = 24, 4


def gen_training(seed: int, count: int) -> list[dict]:
    kinds = [("point", "before_rename,ckpt=3"), ("point", "after_chunk_write,ckpt=2"), ("step", 14),
             ("point", "after_commit,ckpt=4"), ("time", None), ("point", "during_gc,ckpt=4"), ("step", 21),
             ("time", None)]
    out = []
    for i in range(count):
        s = trial_seed(seed, "training", i)
        kind, arg = kinds[i % len(kinds)]
        out.append({"tier": "training", "id": f"training:{i}", "seed": s,
                    "p": {"kind": kind, "arg": arg, "u": random.Random(s).random(), "train_seed": seed % 1000}})
    return out


def _train_cmd(ctx: Context, ckdir: str, loss: str, train_seed: int, *extra: str) -> list[str]:
    return [ctx.python, "-m", "ckptlab.training.cli", "--checkpointer", "pccheck", "--preset", "tiny",
            "--training-steps", str(TRAIN_STEPS), "--checkpoint-freq", str(TRAIN_FREQ), "--ckpt-dir", ckdir,
            "--loss-file", loss, "--seed", str(train_seed), "--writer-threads", "2", "--no-progress", *extra]


def _training_reference(ctx: Context, train_seed: int) -> str:
    path = os.path.join(ctx.work, "training-ref", f"loss-{train_seed}.txt")
    if os.path.exists(path):
        return path
    tmp = path + f".{os.getpid()}"
    ckdir = os.path.join(ctx.work, "training-ref", f"ck-{os.getpid()}")
    os.makedirs(ckdir, exist_ok=True)
    r = subprocess.run(_train_cmd(ctx, ckdir, tmp, train_seed), capture_output=True, text=True, timeout=600,
                       env=_child_env(), check=False)
    shutil.rmtree(ckdir, ignore_errors=True)
    if r.returncode != 0:
        raise RuntimeError(f"reference training failed rc={r.returncode}: {_tail(r.stderr)}")
    os.replace(tmp, path)
    return path


def run_training(trial: dict, ctx: Context, tdir: str) -> dict:
    from ckptlab.faults.iolog import marks, read_io_log
    from ckptlab.core.fault_spec import child_env

    p = trial["p"]
    t0 = time.monotonic()
    ok, why = training_available()
    if not ok:
        return row(trial, "skipped", checks=0, detail=why)
    ref = _training_reference(ctx, p["train_seed"])
    ckdir, loss, log = os.path.join(tdir, "ck"), os.path.join(tdir, "loss.txt"), os.path.join(tdir, "io.log")
    extra: list[str] = []
    faults = ""
    if p["kind"] == "point":
        faults = f"point={p['arg']},action=kill"
    elif p["kind"] == "step":
        extra = ["--fail-at-step", str(p["arg"])]
    env = child_env(faults=faults, io_log=log, io_log_data=False)
    cmd = _train_cmd(ctx, ckdir, loss, p["train_seed"], *extra)
    if p["kind"] == "time":
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        # Kill somewhere in the training proper: once the first loss line is out, within
        # about the time the remaining steps take on this machine (~25 ms a step).
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if os.path.exists(loss) and os.path.getsize(loss) > 0:
                break
            time.sleep(0.005)
        try:
            proc.wait(timeout=p["u"] * TRAIN_STEPS * 0.025)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
        rc = proc.returncode
    else:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
        rc, err = r.returncode, r.stderr
    fired = rc == -signal.SIGKILL
    if rc not in (0, -signal.SIGKILL):
        return row(trial, "violation", violations=[f"training failed rc={rc}: {_tail(err)}"],
                   seconds=time.monotonic() - t0)
    acked = [int(m.detail()["step"]) for m in marks(read_io_log(log), "ack")] if os.path.exists(log) else []
    summary = os.path.join(tdir, "summary.json")
    r = subprocess.run(_train_cmd(ctx, ckdir, loss, p["train_seed"], "--load-checkpoint", "--allow-fresh-start",
                                  "--summary-json", summary), capture_output=True, text=True, timeout=600,
                       env=_child_env(), check=False)
    v: list[str] = []
    resumed = None
    if r.returncode != 0:
        v.append(f"resume failed rc={r.returncode}: {_tail(r.stderr)}")
    else:
        with open(summary) as f:
            resumed = json.load(f).get("resumed_from")
        a = max(acked) if acked else None
        if a is not None and (resumed or 0) < a:
            v.append(f"resumed from step {resumed} but step {a} was acknowledged")
        with open(ref, "rb") as f1, open(loss, "rb") as f2:
            want, got = f1.read(), f2.read()
        if want != got:
            wl, gl = want.decode().splitlines(), got.decode().splitlines()
            first = next((i for i, (a_, b_) in enumerate(zip(wl, gl)) if a_ != b_), min(len(wl), len(gl)))
            v.append(f"losses differ from the uninterrupted run from line {first + 1} "
                     f"(resumed from {resumed}; {len(gl)} vs {len(wl)} lines)")
    return row(trial, "ok" if fired else "not_fired", violations=v, fired=fired, loaded=resumed,
               acked=max(acked) if acked else None, seconds=time.monotonic() - t0)


RUNNERS = {"points": run_points, "random": run_random, "ioerr": run_ioerr, "powerloss": run_powerloss,
           "bitrot": run_bitrot, "enospc": run_enospc, "training": run_training}
