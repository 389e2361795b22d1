"""The ``training`` tier: the reference training loop (tiny preset, 24 steps, a checkpoint
every 4) crashed at a fault point (through ``CKPTLAB_FAULTS``), with ``--fail-at-step``, or at
a random time; resumed with ``--load-checkpoint``; its loss file must equal an uninterrupted
run's, byte for byte, and it must resume from a step >= the last acknowledged one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time

from ckptlab.core.fault_spec import child_env
from ckptlab.faults.iolog import marks, read_io_log
from ckptlab.faults.tiers.common import Context, failure, made_once, row, seeded

TRAIN_STEPS, TRAIN_FREQ = 24, 4
TRAIN_TIMEOUT_S = 600
STEP_S = 0.025  # about the time a tiny-preset step takes here: random kills land within the run
KINDS = [("point", "before_rename,ckpt=3"), ("point", "after_chunk_write,ckpt=2"), ("step", 14),
         ("point", "after_commit,ckpt=4"), ("time", None), ("point", "during_gc,ckpt=4"), ("step", 21),
         ("time", None)]


def available() -> tuple[bool, str]:
    try:
        import ckptlab.training.cli  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"ckptlab.training is not importable ({type(e).__name__}: {e})"
    return True, ""


def generate(seed: int, count: int, short: bool) -> list[dict]:
    def params(i: int, rng: random.Random) -> dict:
        kind, arg = KINDS[i % len(KINDS)]
        return {"kind": kind, "arg": arg, "u": rng.random(), "train_seed": seed % 1000}

    return seeded("training", seed, count, params)


def _train_cmd(ctx: Context, ckdir: str, loss: str, train_seed: int, *extra: str) -> list[str]:
    return [ctx.python, "-m", "ckptlab.training.cli", "--checkpointer", "pccheck", "--preset", "tiny",
            "--training-steps", str(TRAIN_STEPS), "--checkpoint-freq", str(TRAIN_FREQ), "--ckpt-dir", ckdir,
            "--loss-file", loss, "--seed", str(train_seed), "--writer-threads", "2", "--no-progress", *extra]


def _train(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S,
                          env=env or child_env(), check=False)


def _reference(ctx: Context, train_seed: int) -> str:
    """The loss file of an uninterrupted run (made once per training seed)."""
    def make(tmp: str) -> None:
        ckdir = tmp + ".ck"
        os.makedirs(ckdir)
        try:
            r = _train(_train_cmd(ctx, ckdir, tmp, train_seed))
        finally:
            shutil.rmtree(ckdir, ignore_errors=True)
        if r.returncode != 0:
            raise RuntimeError(failure("reference training failed", r.returncode, r.stderr))

    return made_once(os.path.join(ctx.work, "training-ref", f"loss-{train_seed}.txt"), make)


def _kill_at_random_time(cmd: list[str], env: dict[str, str], loss: str, u: float) -> tuple[int, str]:
    """Start training; SIGKILL it somewhere in the training proper: once the first loss line
    is out, within about the time the remaining steps take. (returncode, stderr)"""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if os.path.exists(loss) and os.path.getsize(loss) > 0:
            break
        time.sleep(0.005)
    try:
        proc.wait(timeout=u * TRAIN_STEPS * STEP_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=TRAIN_TIMEOUT_S)
    return proc.returncode, err


def run(trial: dict, ctx: Context, tdir: str) -> dict:
    p = trial["p"]
    ok, why = available()
    if not ok:
        return row(trial, "skipped", checks=0, detail=why)
    ref = _reference(ctx, p["train_seed"])
    ckdir, loss, log = os.path.join(tdir, "ck"), os.path.join(tdir, "loss.txt"), os.path.join(tdir, "io.log")
    faults = f"point={p['arg']},action=kill" if p["kind"] == "point" else ""
    extra = ["--fail-at-step", str(p["arg"])] if p["kind"] == "step" else []
    env = child_env(faults=faults, io_log=log, io_log_data=False)
    cmd = _train_cmd(ctx, ckdir, loss, p["train_seed"], *extra)
    if p["kind"] == "time":
        rc, err = _kill_at_random_time(cmd, env, loss, p["u"])
    else:
        r = _train(cmd, env)
        rc, err = r.returncode, r.stderr
    fired = rc == -signal.SIGKILL
    if rc not in (0, -signal.SIGKILL):
        return row(trial, "violation", violations=[failure("training failed", rc, err)])
    acked = [int(m.detail()["step"]) for m in marks(read_io_log(log), "ack")] if os.path.exists(log) else []
    summary = os.path.join(tdir, "summary.json")
    r = _train(_train_cmd(ctx, ckdir, loss, p["train_seed"], "--load-checkpoint", "--allow-fresh-start",
                          "--summary-json", summary))
    v: list[str] = []
    resumed = None
    if r.returncode != 0:
        v.append(failure("resume failed", r.returncode, r.stderr))
    else:
        with open(summary) as f:
            resumed = json.load(f).get("resumed_from")
        v += _compare(ref, loss, resumed, max(acked) if acked else None)
    return row(trial, "ok" if fired else "not_fired", violations=v, fired=fired, loaded=resumed,
               acked=max(acked) if acked else None)


def _compare(ref: str, loss: str, resumed: int | None, acked: int | None) -> list[str]:
    """What is wrong with a resumed run that started from ``resumed`` after ``acked`` was
    acknowledged and wrote ``loss`` (the reference run wrote ``ref``)."""
    v = []
    if acked is not None and (resumed or 0) < acked:
        v.append(f"resumed from step {resumed} but step {acked} was acknowledged")
    with open(ref, "rb") as f1, open(loss, "rb") as f2:
        want, got = f1.read(), f2.read()
    if want != got:
        wl, gl = want.decode().splitlines(), got.decode().splitlines()
        first = next((i for i, (a, b) in enumerate(zip(wl, gl)) if a != b), min(len(wl), len(gl)))
        v.append(f"losses differ from the uninterrupted run from line {first + 1} "
                 f"(resumed from {resumed}; {len(gl)} vs {len(wl)} lines)")
    return v
