"""The ``multirank`` tier: a 2-rank (``--full``: also 3-rank) gloo world of saver children
(faults/multirank_saver.py) checkpointing through the distributed checkpointer.

- ``kill``: SIGKILL one rank at a coordinator fault point (core/distributed.py: part durable,
  gather, inside the global record's write, record durable, before the acknowledgement,
  retention) or at an engine point inside its part's write; the survivors must give up
  (coordination broken), then a relaunched world must agree.
- ``powerloss``: record every rank's I/O log (the parts and rank 0's record writes), merge
  the logs by their monotonic timestamps (one machine: a prefix of the merged log is a
  consistent cut of every rank's log), rebuild the crash states a power cut may leave at every
  cut (faults/replay.py) and verify them in one relaunched world.

The oracle, after relaunch (a verify world of the same size): every rank loads the same step;
it is >= every step acknowledged on *any* rank before the crash (an acknowledgement on one rank
already promises the record is durable: stronger than "on all ranks"), it is a step that was
issued, and its bytes (and each rank's per-rank entry) are exactly what was saved; every
global record on disk loads (no record without all its parts durable); a new step saves and
loads back (O4).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time

from ckptlab.core.fault_spec import COORDINATOR_ERROR_POINTS, coordinator_points, fault_points
from ckptlab.faults import oracle
from ckptlab.faults.iolog import IoRecord, read_io_log
from ckptlab.faults import multirank_saver
from ckptlab.faults.multirank_saver import COORDINATION_BROKEN_RC
from ckptlab.faults.payload import random_layout
from ckptlab.faults.replay import CrashModel, materialize
from ckptlab.faults.tiers.common import KiB, Context, failure, numbered, row

STEPS = [10, 20, 30]
KILL_CKPT = 2  # every point passes in the 2nd coordinated step (keep_last=1: retention deletes step 10)
RANK0_ONLY = {"before_record_fsync", "before_record_rename", "before_record_dir_fsync", "after_record"}
# The inner checkpointer keeps every part (keep_last=0): retention is the coordinator's.
NO_INNER_GC = ("before_gc", "during_gc")
SHORT_KILLS = [("after_part_durable", 1), ("before_record_rename", 0), ("before_global_ack", 1),
               ("before_rename", 1)]
DELAY_MS = 200
FULL_RECORDINGS = 4  # recordings (--full: 2- and 3-rank worlds alternating)
STATE_CAP = {"short": 24, "default": 160, "full": 400}  # crash states verified per recording
O4_EVERY = 5          # every 5th crash state also saves a new step (O4)
WORLD_TIMEOUT_S = 240
COORDINATION_TIMEOUT_S = 20.0


def _ranks_passing(point: str, world: int) -> list[int]:
    return [0] if point in RANK0_ONLY else list(range(world))


def engine_points() -> list[str]:
    """The engine points a rank's part write passes (its inner checkpointer runs no retention)."""
    return [p for p in fault_points() if p not in NO_INNER_GC]


def generate(seed: int, count: int, short: bool) -> list[dict]:
    """Every kill (point x rank) of the size, then the power-loss recordings. ``count`` is the
    number of recordings (faults/campaign.py SCALE); FULL_RECORDINGS or more is ``--full``:
    3-rank worlds too, every engine point, every rank at every coordinator point."""
    full = not short and count >= FULL_RECORDINGS
    trials: list[dict] = []
    if short:
        trials += [{"kind": "kill", "world": 2, "point": p, "rank": r} for p, r in SHORT_KILLS]
        trials.append({"kind": "eio", "world": 2, "point": "before_record_fsync", "rank": 0})
    else:
        for world in ([2, 3] if full else [2]):
            for p in coordinator_points():
                for r in _ranks_passing(p, world):
                    trials.append({"kind": "kill", "world": world, "point": p, "rank": r})
            for p in engine_points():
                for r in range(world) if full else [world - 1]:
                    trials.append({"kind": "kill", "world": world, "point": p, "rank": r})
        # an I/O error inside the record's write fails that step everywhere; a delay at every
        # coordinator point (on its last rank) fails nothing
        trials += [{"kind": "eio", "world": 2, "point": p, "rank": 0} for p in COORDINATOR_ERROR_POINTS]
        trials += [{"kind": "delay", "world": 2, "point": p, "rank": _ranks_passing(p, 2)[-1]}
                   for p in coordinator_points()]
    size = "short" if short else "full" if full else "default"
    # recordings alternate: saves one at a time / overlapping (max_inflight=2: rank 0 writes a
    # record while the parts of the next step are written); --full: 2- and 3-rank worlds
    trials += [{"kind": "powerloss", "world": 3 if full and i // 2 % 2 else 2, "overlap": i % 2 == 1,
                "cap": STATE_CAP[size]} for i in range(max(1, count))]
    return numbered("multirank", seed, trials)


# --- worlds ------------------------------------------------------------------------------------

def _layout(trial: dict):
    return random_layout(random.Random(trial["seed"]), 96 * KiB)


def _rank_config(mode: str, world: int, rank: int, ckdir: str, init_file: str, trial: dict, ctx: Context,
                 tdir: str, **extra) -> dict:
    layout = _layout(trial)
    return {"mode": mode, "world": world, "rank": rank, "dir": ckdir, "init_file": init_file,
            "seed": trial["seed"] % (1 << 31), "layout": [t.as_json() for t in layout],
            "unsafe": list(ctx.unsafe), "kind": "pccheck",
            "ack_log": os.path.join(tdir, f"ack-{rank}.log"),
            "config": {"writer_threads": 1, "chunk_bytes": 64 * KiB, "reader_threads": 1, "max_inflight": 1,
                       "coordination_timeout_s": COORDINATION_TIMEOUT_S, "keep_last": 1}} | extra


def run_world(ctx: Context, tdir: str, name: str, configs: list[dict]) -> list[tuple[int, str]]:
    """Start one process per rank config with ``torch.multiprocessing`` (forked from this
    process, which has imported torch once: a world starts in well under a second instead of
    an ``import torch`` per rank), wait for all (killing the rest past WORLD_TIMEOUT_S);
    (returncode, stderr tail) per rank, a signal's death as its negative number."""
    import torch.multiprocessing as tmp

    import ckptlab.core.distributed  # noqa: F401 - imported before the fork, not in every rank

    paths = []
    for c in configs:
        path = os.path.join(tdir, f"{name}-{c['rank']}.json")
        with open(path, "w") as f:
            json.dump(c, f)
        paths.append(path)
    procs = tmp.start_processes(world_rank, args=(paths,), nprocs=len(paths), join=False,
                                start_method="fork").processes
    deadline = time.monotonic() + WORLD_TIMEOUT_S
    out = []
    try:
        for p, path in zip(procs, paths):
            p.join(max(1.0, deadline - time.monotonic()))
            if p.exitcode is None:
                p.kill()
                p.join()
            with open(path + ".stderr", errors="replace") as f:
                out.append((p.exitcode, f.read()))
    finally:
        for p in procs:
            if p.exitcode is None:
                p.kill()
                p.join()
    return out


def world_rank(index: int, paths: list[str]) -> None:
    """One forked rank: its stderr to a file beside its config, then the saver's run()."""
    from ckptlab.core.fault_spec import FAULTS_ENV, IO_LOG_DATA_ENV, IO_LOG_ENV

    for name in (FAULTS_ENV, IO_LOG_ENV, IO_LOG_DATA_ENV):  # the config arms this rank, nothing else
        os.environ.pop(name, None)
    fd = os.open(paths[index] + ".stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    with open(paths[index]) as f:
        cfg = json.load(f)
    try:
        multirank_saver.run(cfg)
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def _prepare(tdir: str, world: int, sub: str = "ck") -> str:
    """The checkpoint directory with every rank's directory made durable before the run (so a
    replay starts from them)."""
    ckdir = os.path.join(tdir, sub)
    for r in range(world):
        os.makedirs(os.path.join(ckdir, f"rank_{r:05d}"), exist_ok=True)
    for d in [ckdir, tdir]:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return ckdir


def verify(ctx: Context, tdir: str, trial: dict, world: int, dirs: list[dict], issued: list[int]
           ) -> tuple[list[list[dict]], list[str]]:
    """Relaunch a world over ``dirs``; per directory, every rank's result; and harness failures."""
    init = os.path.join(tdir, f"init-verify-{time.monotonic_ns()}")
    new_step = max(issued + [0]) + 1000
    configs = [_rank_config("verify", world, r, "", init, trial, ctx, tdir, dirs=dirs, issued=issued,
                            new_step=new_step, out=os.path.join(tdir, f"verify-{r}.jsonl"))
               | {"config": {"writer_threads": 1, "chunk_bytes": 64 * KiB, "reader_threads": 1, "keep_last": 0,
                             "coordination_timeout_s": COORDINATION_TIMEOUT_S}}
               for r in range(world)]
    rcs = run_world(ctx, tdir, "verify", configs)
    bad = [failure(f"verify rank {r} failed", rc, err) for r, (rc, err) in enumerate(rcs) if rc != 0]
    results: list[list[dict]] = [[] for _ in dirs]
    for r in range(world):
        path = configs[r]["out"]
        lines = open(path).read().splitlines() if os.path.exists(path) else []
        for i, line in enumerate(lines):
            results[i].append(json.loads(line))
    return results, bad


def judge(per_rank: list[dict], world: int, acked: set[int], issued: set[int]) -> list[str]:
    """The oracle on one directory's verify results (one dict per rank)."""
    if len(per_rank) != world:
        return [f"only {len(per_rank)} of {world} ranks verified the directory"]
    v = [p for res in per_rank for p in res["problems"]]
    steps = {res["step"] for res in per_rank}
    if len(steps) > 1:
        v.append(f"the ranks disagree: {[(res['rank'], res['step']) for res in per_rank]}")
    step = per_rank[0]["step"]
    if acked and (step is None or step < max(acked)):
        v.append(f"loaded step {step} but step {max(acked)} was acknowledged (on some rank) before the crash")
    if step is not None and step not in issued:
        v.append(f"loaded step {step}, which was never issued")
    return v


# --- trials ------------------------------------------------------------------------------------

def run(trial: dict, ctx: Context, tdir: str) -> dict:
    """(Mutations it lacks make the campaign skip its trials first: common.unsupported.)"""
    kind = trial["p"]["kind"]
    return _powerloss(trial, ctx, tdir) if kind == "powerloss" else _kill(trial, ctx, tdir)


def _save_world(trial: dict, ctx: Context, tdir: str, ckdir: str, faults: dict[int, str], io_logs: bool
                ) -> list[tuple[int, str]]:
    world, overlap = trial["p"]["world"], trial["p"].get("overlap", False)
    init = os.path.join(tdir, "init-save")
    configs = []
    for r in range(world):
        c = _rank_config("save", world, r, ckdir, init, trial, ctx, tdir, steps=STEPS, overlap=overlap)
        c["config"]["faults"] = faults.get(r, "")
        c["config"]["max_inflight"] = 2 if overlap else 1
        if io_logs:
            c["config"]["io_log"] = os.path.join(tdir, f"io-{r}.log")
        configs.append(c)
    return run_world(ctx, tdir, "save", configs)


def _acks(tdir: str, world: int) -> tuple[set[int], set[int]]:
    """(steps acknowledged on any rank, steps issued) from the ranks' ack logs."""
    acked, issued = set(), set()
    for r in range(world):
        h = oracle.read_history(os.path.join(tdir, f"ack-{r}.log"))
        acked |= set(h.acked)
        issued |= set(h.submitted)
    return acked, issued


def _failed_everywhere(tdir: str, world: int, step: int) -> tuple[bool, list[str]]:
    """(the step failed on every rank, violations): never acknowledged, the next step was."""
    v, failed_all = [], True
    for r in range(world):
        h = oracle.read_history(os.path.join(tdir, f"ack-{r}.log"))
        if step in h.acked:
            v.append(f"rank {r} acknowledged step {step} although its global record's write failed")
        failed_all = failed_all and step in h.failed
        if not any(s in h.acked for s in STEPS if s > step):
            v.append(f"rank {r}: no step after the failed step {step} was acknowledged")
    return failed_all, v


def _kill(trial: dict, ctx: Context, tdir: str) -> dict:
    """A kill (the rank must die; the others give up), an eio (that step fails on every rank,
    later ones commit) or a delay (nothing fails) at one point of one rank, then the oracle."""
    p = trial["p"]
    world, kind = p["world"], p["kind"]
    ckdir = _prepare(tdir, world)
    action = {"kill": "kill", "eio": "eio", "delay": f"delay={DELAY_MS}"}[kind]
    spec = f"point={p['point']},ckpt={KILL_CKPT},action={action}"
    rcs = _save_world(trial, ctx, tdir, ckdir, {p["rank"]: spec}, io_logs=False)
    want = [-signal.SIGKILL if kind == "kill" and r == p["rank"] else None for r in range(world)]
    bad = [failure(f"rank {r} ended unexpectedly", rc, err) for r, (rc, err) in enumerate(rcs)
           if not (rc == want[r] or want[r] is None and rc in ((0, COORDINATION_BROKEN_RC) if kind == "kill" else (0,)))]
    fired = True if kind == "delay" else rcs[p["rank"]][0] == -signal.SIGKILL
    if bad:
        return row(trial, "violation", violations=bad, fired=fired)
    acked, issued = _acks(tdir, world)
    pre: list[str] = []
    if kind == "eio":
        fired, pre = _failed_everywhere(tdir, world, STEPS[KILL_CKPT - 1])
    if kind == "delay" and acked != set(STEPS):
        pre.append(f"a {DELAY_MS} ms delay at {p['point']} and only steps {sorted(acked)} were acknowledged")
    results, harness = verify(ctx, tdir, trial, world, [{"dir": ckdir, "o4": True}], sorted(issued) or STEPS)
    if harness:
        return row(trial, "violation", violations=harness, fired=fired)
    v = pre + judge(results[0], world, acked, issued)
    loaded = results[0][0]["step"] if results[0] else None
    return row(trial, "ok" if fired else "not_fired", violations=v, fired=fired, loaded=loaded,
               acked=max(acked) if acked else None)


def merged_log(tdir: str, world: int) -> list[IoRecord]:
    """Every rank's I/O log, merged by monotonic timestamp (one clock on one machine)."""
    records: list[tuple[int, int, int, IoRecord]] = []
    for r in range(world):
        for i, rec in enumerate(read_io_log(os.path.join(tdir, f"io-{r}.log"))):
            records.append((rec.t_ns, r, i, rec))
    records.sort(key=lambda x: x[:3])
    return [x[3] for x in records]


def _near_record(records: list[IoRecord], radius: int = 3) -> set[int]:
    """Crash points around the global record's operations and the acknowledgements."""
    near: set[int] = set()
    for i, r in enumerate(records):
        if "/global/" in r.path or r.is_mark and r.path == "global_ack":
            near |= set(range(max(0, i + 1 - radius), i + 2 + radius))
    return near


def _powerloss(trial: dict, ctx: Context, tdir: str) -> dict:
    p = trial["p"]
    world = p["world"]
    ckdir = _prepare(tdir, world)
    rcs = _save_world(trial, ctx, tdir, ckdir, {}, io_logs=True)
    bad = [failure(f"recording rank {r} failed", rc, err) for r, (rc, err) in enumerate(rcs) if rc != 0]
    if bad:
        return row(trial, "violation", violations=bad, fired=False)
    records = merged_log(tdir, world)
    initial = {f"rank_{r:05d}": None for r in range(world)}
    model = CrashModel(records, root=ckdir, initial=initial)
    ack_at = [(i, int(r.detail()["step"])) for i, r in enumerate(records) if r.is_mark and r.path == "global_ack"]

    def acked_before(k: int) -> frozenset[int]:
        return frozenset(s for i, s in ack_at if i < k)

    points = sorted(set(model.crash_points()) | {i + 1 for i, _ in ack_at})
    rng = random.Random(trial["seed"])
    states = list(model.states(rng, random_variants=1, points=points, context=acked_before))
    near = _near_record(records)
    keep = [s for s in states if s.k in near]
    rest = [s for s in states if s.k not in near]
    room = max(0, p["cap"] - len(keep))
    if len(keep) > p["cap"]:
        keep = sorted(rng.sample(keep, p["cap"]), key=lambda s: s.k)
        room = 0
    chosen = sorted(keep + (rest if len(rest) <= room else rng.sample(rest, room)), key=lambda s: (s.k, s.variant))
    state_root = os.path.join(ctx.states, os.path.basename(tdir))
    try:
        dirs: list[dict] = []
        for n, s in enumerate(chosen):
            sdir = os.path.join(state_root, f"s{n}")
            materialize(s.files, sdir)
            dirs.append({"dir": sdir, "o4": n % O4_EVERY == 0})
        _, issued = _acks(tdir, world)
        results, harness = verify(ctx, tdir, trial, world, dirs, sorted(issued))
        if harness:
            return row(trial, "violation", violations=harness, fired=True)
        v: list[str] = []
        bad_states = 0
        for n, (s, res) in enumerate(zip(chosen, results)):
            sv = judge(res, world, set(acked_before(s.k)), issued)
            if sv:
                bad_states += 1
                if len(v) < 3:
                    where = records[s.k - 1] if s.k else None
                    v.append(f"crash after merged record {s.k} ({where}), variant {s.variant}: " + "; ".join(sv))
                    shutil.copytree(str(dirs[n]["dir"]), os.path.join(tdir, f"state-{s.k}-{s.variant}"), dirs_exist_ok=True)
        if bad_states > 3:
            v.append(f"{bad_states} crash states violate the oracle in all")
    finally:
        shutil.rmtree(state_root, ignore_errors=True)
    acks = [s for _, s in ack_at]
    return row(trial, "ok", checks=len(chosen), violations=v, fired=True, count=bad_states,
               acked=max(acks) if acks else None,
               extra={"records": len(records), "states": len(states), "verified": len(chosen)})

