"""The torchsave writer in the campaign: its I/O log is the engine's format (faults/iolog.py
reads it, faults/replay.py replays it), it passes the points the tiers count on, its crash
states hold up under the oracle, and its child writes the saver's ack log."""
import os
import random

from ckptlab.core import CheckpointConfig, open_checkpointer
from ckptlab.core.fault_spec import fault_points
from ckptlab.core.manifest import MANIFEST_NAME, decode_manifest
from ckptlab.faults import oracle
from ckptlab.faults.iolog import marks, read_io_log
from ckptlab.faults.payload import state_for
from ckptlab.faults.replay import CrashModel, materialize, snapshot
from ckptlab.faults.tiers.common import Context, Setup, run_saver, session, torchsave_point_setup


def _manifest(d: str, step: int):
    with open(os.path.join(d, f"step_{step:012d}", MANIFEST_NAME), "rb") as f:
        return decode_manifest(f.read())


def _record(tmp_path, setup: Setup, **config) -> tuple[str, list]:
    d, log = str(tmp_path / "ck"), str(tmp_path / "io.log")
    cfg = CheckpointConfig(**setup.engine, io_log=log, **config)
    with open_checkpointer("torchsave", d, cfg) as ck:
        for step in setup.steps:
            ck.save(step, state_for(setup.layout, setup.seed, step))
    return d, read_io_log(log)


def test_the_log_counts_the_points_the_tiers_enumerate(tmp_path):
    setup = torchsave_point_setup()
    d, recs = _record(tmp_path, setup)
    passed: dict[tuple[int, str], int] = {}
    order: list[str] = []
    for m in marks(recs, "point"):
        det = m.detail()
        passed[int(det["ckpt"]), det["point"]] = passed.get((int(det["ckpt"]), det["point"]), 0) + 1
        if det["ckpt"] == "3" and det["point"] not in order:
            order.append(det["point"])
    for ck in range(1, len(setup.steps) + 1):
        for point in fault_points():
            assert passed.get((ck, point), 0) == setup.point_count(point, ck), (ck, point)
    assert order == fault_points()  # checkpoint 3 passes every point, in protocol order
    assert setup.chunks(setup.steps[0]) >= 3
    files = _manifest(d, 40).files
    assert files[0].nbytes == setup.plan(40)["payload_bytes"]
    assert [m.detail()["step"] for m in marks(recs, "ack")] == [str(s) for s in setup.steps]
    assert len(marks(recs, "start")) == len(marks(recs, "close")) == 1


def test_the_replay_ends_in_the_real_directory_and_its_states_hold(tmp_path):
    setup = torchsave_point_setup()
    setup.steps = setup.steps[:3]
    d, recs = _record(tmp_path, setup)
    model = CrashModel(recs)
    assert model.build(len(recs), lambda op: True, lambda op: None) == snapshot(d)
    states = bad = recovered = 0
    acked_seen = set()

    def acked_at(k: int) -> int | None:
        return max((int(m["step"]) for m in model.marks_before("ack", k)), default=None)

    for st in model.states(random.Random(5), random_variants=1, context=acked_at):
        states += 1
        sdir = str(tmp_path / f"s{states}")
        materialize(st.files, sdir)
        acked = acked_at(st.k)
        check = oracle.check_directory(sdir, setup.layout, setup.seed, acked=acked, sessions=[setup.steps])
        bad += bool(check.violations)
        if st.variant in ("durable", "all") and st.k % 7 == 0:  # O4 with a torchsave writer, on some
            recovered += 1
            assert oracle.check_recoverable(sdir, setup.layout, setup.seed, 99, None, writer="torchsave") is None
        if acked is not None and check.loaded_step is not None:
            acked_seen.add(acked)
    assert bad == 0 and states > 50 and recovered > 3
    assert acked_seen == set(setup.steps)


def test_the_torchsave_child_writes_the_savers_ack_log(tmp_path):
    setup = torchsave_point_setup()
    ctx = Context(work=str(tmp_path), states=str(tmp_path))
    child = run_saver(ctx, str(tmp_path), setup, session(setup, ctx, steps=setup.steps[:2]),
                      session(setup, ctx, steps=[50]))
    assert child.rc == 0, child.stderr[-2000:]
    hist = child.history()
    assert hist.done and hist.sessions == [setup.steps[:2], [50]] and hist.acked == setup.steps[:2] + [50]
    check = oracle.check_directory(child.ckdir, setup.layout, setup.seed, acked=50, sessions=hist.sessions)
    assert check.violations == [] and check.loaded_step == 50
    assert _manifest(child.ckdir, 50).writer == "torchsave"


def test_an_injected_error_is_reported_in_the_ack_log(tmp_path):
    setup = torchsave_point_setup()
    ctx = Context(work=str(tmp_path), states=str(tmp_path))
    child = run_saver(ctx, str(tmp_path), setup, session(setup, ctx, faults="point=before_rename,ckpt=2,action=enospc"))
    assert child.rc == 0, child.stderr[-2000:]
    hist = child.history()
    assert [(step, err) for step, err, _ in hist.failures] == [(20, 28)]
    assert hist.acked == [10, 30, 40] and hist.commits[1] == (20, False)
