"""What every tier shares: the campaign context, trials, run shapes, the saver child, crash
checks and result rows.

A trial is a plain dict ``{"tier", "id", "seed", "p": params}``, generated deterministically
from the campaign seed, so ``ckptlab campaign --seed S --trial ID`` reruns exactly it (the
random-time tier reruns the same kill delay; where the OS schedules threads is not ours).
Running a trial returns one result row (:func:`row`). Every trial that crashes something runs
a real child process: the light saver (faults/saver.py, the engine), the torchsave child
(faults/torchsave_saver.py), or the reference training loop. A run shape (:class:`Setup`)
names its writer; the helpers here (sessions, children, point counts, O4) follow it.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckptlab.core.fault_spec import child_env
from ckptlab.faults import oracle
from ckptlab.faults.payload import TensorSpec, plan_step, random_layout

KiB, MiB = 1 << 10, 1 << 20
CHILD_TIMEOUT_S = 120
WRITERS = {"pccheck": "ckptlab.faults.saver", "torchsave": "ckptlab.faults.torchsave_saver"}  # writer -> child


@dataclass
class Context:
    """Where a campaign works and what it applies to every child engine."""

    work: str                      # trial directories (a real disk: fsync matters)
    states: str                    # materialized crash states (tmpfs when there is one)
    unsafe: tuple[str, ...] = ()   # durability mutations under test (the teeth)
    short: bool = False
    python: str = sys.executable


# --- trials ------------------------------------------------------------------------------------

def trial_seed(seed: int, tier: str, index: int) -> int:
    return int(hashlib.sha256(f"{seed}:{tier}:{index}".encode()).hexdigest()[:12], 16)


def numbered(tier: str, seed: int, params: list[dict]) -> list[dict]:
    """Trials ``tier:0``, ``tier:1``, ... from their parameters, each with its own seed."""
    return [{"tier": tier, "id": f"{tier}:{i}", "seed": trial_seed(seed, tier, i), "p": p}
            for i, p in enumerate(params)]


def seeded(tier: str, seed: int, count: int, params: Callable[[int, random.Random], dict]) -> list[dict]:
    """``count`` trials whose parameters ``params(index, rng)`` draws from the trial's own seed."""
    return numbered(tier, seed, [params(i, random.Random(trial_seed(seed, tier, i))) for i in range(count)])


def made_once(path: str, make: Callable[[str], None]) -> str:
    """``path``, built by ``make(tmp)`` unless it exists: a cache shared by the campaign's
    worker processes. Each builds its own temp copy; the first rename wins (a later file
    replaces an equal one, a later directory loses and is removed)."""
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        make(tmp)
        os.rename(tmp, path)
    except OSError:
        if not os.path.exists(path):
            raise
    finally:
        _remove(tmp)
    return path


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


# --- setups: one saver run's shape ----------------------------------------------------------

@dataclass
class Setup:
    """One saver run's shape. ``writer`` "pccheck": ``engine`` holds Engine options;
    "torchsave": CheckpointConfig fields (chunk_bytes, keep_last) and ``wait_each`` is moot."""

    seed: int
    layout: list[TensorSpec]
    engine: dict[str, Any]
    steps: list[int]
    compute_ms: float = 0.0
    wait_each: bool = False
    plans: dict[int, dict] = field(default_factory=dict)
    writer: str = "pccheck"
    fill: str = "submit"  # pccheck: "stream" fills engine streams chunk by chunk, as deferred snapshots do

    def plan(self, step: int) -> dict:
        """pccheck: what the saver submits for ``step``; torchsave: the size of its state.pt."""
        if step not in self.plans:
            if self.writer == "torchsave":
                from ckptlab.core.state import capture
                from ckptlab.core.torchsave import serialize
                from ckptlab.faults.payload import state_for

                self.plans[step] = {"payload_bytes": len(serialize(capture(state_for(self.layout, self.seed, step))))}
            else:
                self.plans[step] = plan_step(self.layout, self.seed, step)
        return self.plans[step]

    def as_json(self) -> dict:
        d = {"seed": self.seed, "layout": [t.as_json() for t in self.layout], "engine": self.engine,
             "steps": self.steps, "compute_ms": self.compute_ms, "wait_each": self.wait_each}
        if self.fill != "submit":
            d["fill"] = self.fill
        return d if self.writer == "pccheck" else d | {"writer": self.writer}

    @staticmethod
    def from_json(d: dict) -> Setup:
        return Setup(d["seed"], [TensorSpec.from_json(t) for t in d["layout"]], dict(d["engine"]), list(d["steps"]),
                     d.get("compute_ms", 0.0), d.get("wait_each", False), writer=d.get("writer", "pccheck"),
                     fill=d.get("fill", "submit"))

    # Analytic fault-point counts (as the writer will pass them, per checkpoint).
    def chunks(self, step: int) -> int:
        if self.writer == "torchsave":  # state.pt written in chunk_bytes pieces
            return -(-self.plan(step)["payload_bytes"] // self.engine["chunk_bytes"])
        total = self.plan(step)["total_bytes"]
        stream = (max(total, 1) + 4095) // 4096 * 4096
        return -(-stream // self.engine["chunk_bytes"])

    def shards(self, step: int) -> int:
        if self.writer == "torchsave":
            return 1
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




def torchsave_setup(rng: random.Random, size: int, steps: list[int], **config: Any) -> Setup:
    """A torchsave run shape: ``config`` holds its CheckpointConfig fields."""
    return Setup(rng.getrandbits(31), random_layout(rng, size), dict(config), list(steps), writer="torchsave")


def torchsave_point_setup() -> Setup:
    """The torchsave shape of the exhaustive tiers: state.pt in several chunks, retention on."""
    return torchsave_setup(random.Random(2000), 200 * KiB, [10, 20, 30, 40], chunk_bytes=64 * KiB, keep_last=2)


def random_torchsave_setup(rng: random.Random) -> Setup:
    stride = rng.choice([1, 5, 10])
    return torchsave_setup(rng, rng.choice([96 * KiB, 300 * KiB, 640 * KiB]),
                           [stride * (i + 1) for i in range(rng.randint(3, 5))],
                           chunk_bytes=rng.choice([64 * KiB, 128 * KiB]), keep_last=rng.choice([0, 1, 2, 2, 3]))


def setup_of(trial: dict) -> Setup:
    """A trial's run shape: ``p["setup"]`` is an index into POINT_SETUPS, "torchsave" (the
    torchsave point setup) or a Setup as JSON."""
    s = trial["p"]["setup"]
    if s == "torchsave":
        return torchsave_point_setup()
    setup = point_setup(s) if isinstance(s, int) else Setup.from_json(s)
    setup.fill = trial["p"].get("fill", setup.fill)
    return setup


def writer_of(trial: dict) -> str:
    return trial["p"].get("writer", "pccheck")


def unsupported(trial: dict, ctx: Context) -> str | None:
    """Why ``trial`` cannot run under ``ctx`` (a durability mutation its writer lacks), or None.
    The multirank tier's mutations (the coordinator's) exist there only, and it has none of
    the engine's."""
    from ckptlab.faults.multirank_saver import MUTATIONS as MULTIRANK
    from ckptlab.faults.torchsave_saver import MUTATIONS

    if trial["tier"] == "multirank":
        missing = [m for m in ctx.unsafe if m not in MULTIRANK]
        return f"the multirank tier has no {', '.join(missing)} mutation" if missing else None
    coordinator = [m for m in ctx.unsafe if m in MULTIRANK]
    if coordinator:
        return f"{', '.join(coordinator)} is a mutation of the multi-rank coordinator (the multirank tier)"
    missing = [m for m in ctx.unsafe if writer_of(trial) == "torchsave" and m not in MUTATIONS]
    return f"the torchsave writer has no {', '.join(missing)} mutation" if missing else None


# --- running the saver child ------------------------------------------------------------------

def tail(text: str, n: int = 400) -> str:
    return text.strip()[-n:]


def failure(what: str, rc: int, stderr: str) -> str:
    return f"{what} (rc={rc}): {tail(stderr)}"


@dataclass
class ChildRun:
    rc: int
    stdout: str
    stderr: str
    seconds: float                 # start to exit
    ready_s: float                 # start to the child's "ready" line
    killed_by_us: bool = False
    ckdir: str = ""                # its checkpoint directory and ack log (from its config)
    ack_log: str = ""

    @property
    def sigkilled(self) -> bool:
        return self.rc == -signal.SIGKILL

    @property
    def clean_or_killed(self) -> bool:
        """It exited 0 or died of SIGKILL (an injected kill); anything else is a failure."""
        return self.rc == 0 or self.sigkilled

    def failure(self, what: str = "child failed") -> str:
        return failure(what, self.rc, self.stderr)

    def history(self) -> oracle.History:
        return oracle.read_history(self.ack_log)


def write_child_config(tdir: str, setup: Setup, sessions: list[dict], ckdir: str | None = None,
                       filler: str | None = None, ack_log: str | None = None) -> str:
    ckdir = ckdir or os.path.join(tdir, "ck")
    os.makedirs(ckdir, exist_ok=True)
    steps = sorted({s for sess in sessions for s in sess["steps"]})
    plans = {str(s): setup.plan(s) for s in steps} if setup.writer == "pccheck" else {}
    cfg = {"dir": ckdir, "seed": setup.seed, "layout": [t.as_json() for t in setup.layout], "writer": setup.writer,
           "plans": plans, "ack_log": ack_log or os.path.join(tdir, "ack.log"), "sessions": sessions,
           "filler": filler}
    path = os.path.join(tdir, f"child-{len([n for n in os.listdir(tdir) if n.startswith('child-')])}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def session(setup: Setup, ctx: Context, steps: list[int] | None = None, faults: str = "", io_log: str = "",
            io_log_data: bool = True, **engine_overrides) -> dict:
    if setup.writer == "torchsave":  # faults/torchsave_saver.py's session
        return {"config": dict(setup.engine, faults=faults, io_log=io_log, **engine_overrides),
                "io_log_data": io_log_data, "unsafe": list(ctx.unsafe),
                "steps": list(steps if steps is not None else setup.steps), "compute_ms": setup.compute_ms}
    engine = dict(setup.engine, faults=faults, unsafe=list(ctx.unsafe), io_log=io_log, io_log_data=io_log_data)
    engine.update(engine_overrides)
    return {"engine": engine, "steps": list(steps if steps is not None else setup.steps),
            "compute_ms": setup.compute_ms, "wait_each": setup.wait_each, "fill": setup.fill}


def run_child(ctx: Context, cfg_path: str, kill_after: float | None = None) -> ChildRun:
    """Run the saver of the config's writer; with ``kill_after``, SIGKILL it that many seconds
    after it is ready. The child's environment carries no fault spec of ours: its faults come
    from its config."""
    with open(cfg_path) as f:
        cfg = json.load(f)
    t0 = time.monotonic()
    module = WRITERS[cfg.get("writer", "pccheck")]
    p = subprocess.Popen([ctx.python, "-m", module, cfg_path], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=child_env(), cwd=os.path.dirname(cfg_path))
    killed = False
    try:
        ready = p.stdout.readline()
        ready_s = time.monotonic() - t0
        if kill_after is not None and ready.strip() == "ready":
            try:
                p.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                killed = True
        out, err = p.communicate(timeout=CHILD_TIMEOUT_S)
    except BaseException:  # a hung child (or ^C) must not outlive the trial
        p.kill()
        p.communicate()
        raise
    return ChildRun(p.returncode, ready + out, err, time.monotonic() - t0, ready_s, killed, cfg["dir"], cfg["ack_log"])


def run_saver(ctx: Context, tdir: str, setup: Setup, *sessions: dict, ckdir: str | None = None,
              filler: str | None = None, kill_after: float | None = None) -> ChildRun:
    """Write the child config of ``sessions`` (default: one plain session of ``setup``) into
    ``tdir`` and run the saver on it."""
    cfg = write_child_config(tdir, setup, list(sessions) or [session(setup, ctx)], ckdir=ckdir, filler=filler)
    return run_child(ctx, cfg, kill_after=kill_after)


# --- checks and result rows --------------------------------------------------------------------

def crash_checks(setup: Setup, child: ChildRun, recover: bool = True
                 ) -> tuple[oracle.History, list[str], oracle.DiskCheck]:
    """The child's history, the oracle's violations after it ended (O1, O2, and O4 with
    ``recover``) and what is on disk."""
    hist = child.history()
    d = oracle.check_directory(child.ckdir, setup.layout, setup.seed, acked=hist.max_acked, sessions=hist.sessions,
                               failed=hist.failed, strict_committed=True)
    v = list(d.violations)
    if setup.fill == "stream":  # O6: a stream is committed only once the saver sealed it
        v += [f"step {s} is committed but its stream was never sealed" for s in sorted(set(d.valid) | set(d.corrupt))
              if s in hist.submitted and s not in hist.sealed]
    order = oracle.check_commit_order(hist.commits)
    if order:
        v.append(order)
    if recover:
        new_step = max(hist.submitted + setup.steps + [0]) + 1000
        problem = oracle.check_recoverable(child.ckdir, setup.layout, setup.seed, new_step,
                                           recovery_plan(setup, new_step), writer=setup.writer)
        if problem:
            v.append(problem)
    return hist, v, d


def recovery_plan(setup: Setup, step: int) -> dict | None:
    """What O4's new pccheck writer submits (torchsave needs none: it saves the state itself)."""
    return setup.plan(step) if setup.writer == "pccheck" else None


def failed_step_checks(step: int, hist: oracle.History, disk: oracle.DiskCheck, cause: str,
                       later_must_succeed: bool = True) -> list[str]:
    """O3 for a checkpoint that failed because ``cause``: never acknowledged, never on disk,
    and (with ``later_must_succeed``) a later save succeeded: the engine is not wedged."""
    v = []
    if step in hist.acked:
        v.append(f"step {step} was acknowledged although {cause}")
    if step in disk.valid:
        v.append(f"step {step} is on disk as committed although {cause}")
    later = [s for s in hist.submitted if s > step]
    if later_must_succeed and later and not any(s in hist.acked for s in later):
        v.append(f"no save after the failed step {step} succeeded ({cause})")
    return v


def row(trial: dict, outcome: str, *, checks: int = 1, violations: list[str] | None = None,
        fired: bool | None = None, loaded: int | None = None, acked: int | None = None, detail: str = "",
        extra: dict | None = None, count: int | None = None) -> dict:
    """One result row; ``violations`` are the messages, ``count`` how many checks failed
    (default: one per message). The campaign fills in ``seconds``."""
    violations = violations or []
    if violations and outcome in ("ok", "not_fired"):
        outcome = "violation"
    return {"tier": trial["tier"], "trial": trial["id"], "writer": writer_of(trial), "seed": trial["seed"],
            "outcome": outcome,
            "checks": checks, "violations": len(violations) if count is None else count, "fired": fired,
            "loaded_step": loaded, "acked_step": acked,
            "detail": ("; ".join(violations) if violations else detail)[:4000],
            "seconds": 0.0, "params": oracle.dump(trial["p"] | (extra or {}))}


def verdict(trial: dict, fired: bool, violations: list[str], hist: oracle.History, disk: oracle.DiskCheck,
            extra: dict | None = None) -> dict:
    """The row of a trial that ran to its checks: ok, not fired (the fault never happened), or
    a violation."""
    return row(trial, "ok" if fired else "not_fired", violations=violations, fired=fired, loaded=disk.loaded_step,
               acked=hist.max_acked, extra=extra)


def failed_row(trial: dict, child: ChildRun, what: str = "child failed") -> dict:
    """The row of a trial whose child ended in a way the fault does not explain."""
    return row(trial, "violation", violations=[child.failure(what)])


def checked(trial: dict, setup: Setup, child: ChildRun, fired: bool, extra: dict | None = None) -> dict:
    """A trial that crashes the saver: it must exit cleanly or by SIGKILL, then pass the
    crash checks."""
    if not child.clean_or_killed:
        return failed_row(trial, child)
    hist, v, d = crash_checks(setup, child)
    return verdict(trial, fired, v, hist, d, extra)
