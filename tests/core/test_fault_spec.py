"""core/fault_spec.py: one fault grammar for the engine, Python and the command line."""
import argparse
import ast
import os
from pathlib import Path

import pytest
from ckptlab import _engine
from ckptlab.core import CheckpointConfig, fault_spec

ROOT = Path(__file__).resolve().parents[2]


def test_points_are_the_engines():
    assert fault_spec.fault_points() == list(_engine.fault_points())
    assert set(fault_spec.ERROR_POINTS) <= set(fault_spec.fault_points())


def test_parse_and_format_round_trip():
    text = "point=before_rename,ckpt=3,action=kill; point=before_chunk_write,hit=5,action=eio;" \
           "point=after_commit,step=40,action=delay=20"
    rules = fault_spec.parse(text)
    assert rules == [
        fault_spec.FaultRule("before_rename", ckpt=3),
        fault_spec.FaultRule("before_chunk_write", hit=5, action="eio"),
        fault_spec.FaultRule("after_commit", step=40, action="delay=20"),
    ]
    assert fault_spec.parse(fault_spec.join(rules)) == rules
    assert rules[1].is_error and rules[0].is_kill and not rules[2].is_error


@pytest.mark.parametrize("bad, word", [
    ("point=nowhere", "nowhere"),
    ("point=before_rename,action=explode", "explode"),
    ("point=before_rename,ckpt=0", "ckpt"),
    ("ckpt=1", "no point"),
    ("point=before_rename,colour=red", "colour"),
])
def test_bad_specs_name_the_bad_token(bad, word):
    with pytest.raises(ValueError, match=word):
        fault_spec.validate(bad)


def test_child_env_replaces_inherited_faults(monkeypatch):
    monkeypatch.setenv(fault_spec.FAULTS_ENV, "point=before_rename,action=kill")
    env = fault_spec.child_env()
    assert fault_spec.FAULTS_ENV not in env
    env = fault_spec.child_env("point=after_commit,action=eio", io_log="/tmp/x.log", io_log_data=False)
    assert env[fault_spec.FAULTS_ENV] == "point=after_commit,action=eio"
    assert env[fault_spec.IO_LOG_ENV] == "/tmp/x.log" and env[fault_spec.IO_LOG_DATA_ENV] == "0"
    with pytest.raises(ValueError):
        fault_spec.child_env("point=bogus")


def test_fault_arguments_arm_checkpoint_config(monkeypatch, tmp_path):
    monkeypatch.delenv(fault_spec.FAULTS_ENV, raising=False)
    monkeypatch.delenv(fault_spec.IO_LOG_ENV, raising=False)
    p = argparse.ArgumentParser()
    fault_spec.add_fault_arguments(p)
    args = p.parse_args(["--fault", "point=before_rename,ckpt=2,action=kill", "--fault", "point=during_gc,action=eio",
                         "--io-log", str(tmp_path / "io.log")])
    got = fault_spec.apply_fault_arguments(args)
    assert got == "point=before_rename,ckpt=2,action=kill;point=during_gc,action=eio"
    cfg = CheckpointConfig()
    assert cfg.effective_faults() == got
    assert cfg.effective_io_log() == (str(tmp_path / "io.log"), True)
    assert os.environ[fault_spec.IO_LOG_ENV] == str(tmp_path / "io.log")


def test_io_log_data_flag_reaches_checkpoint_config(monkeypatch):
    env = fault_spec.child_env(io_log="/tmp/x.log", io_log_data=False)
    for name in (fault_spec.IO_LOG_ENV, fault_spec.IO_LOG_DATA_ENV):
        monkeypatch.setenv(name, env[name])
    assert CheckpointConfig().effective_io_log() == ("/tmp/x.log", False)


def test_environment_names_are_defined_once():
    """Every other module imports FAULTS_ENV & co. from core/fault_spec.py: no second copy of
    the names as a string constant anywhere in the parts or the tests."""
    names = {fault_spec.FAULTS_ENV, fault_spec.IO_LOG_ENV, fault_spec.IO_LOG_DATA_ENV}
    here = Path(__file__).resolve()
    copies = []
    for folder in ("core", "faults", "profiling", "training", "analysis", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in (ROOT / "core" / "fault_spec.py", here):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value in names:
                    copies.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert copies == [], f"define these in core/fault_spec.py only: {copies}"


def test_persist_mode_round_trips_and_needs_an_error_action():
    rule = fault_spec.FaultRule("before_data_fsync", hit=3, action="eio", persist=True)
    assert str(rule) == "point=before_data_fsync,hit=3,action=eio,mode=persist"
    assert fault_spec.parse(str(rule)) == [rule]
    assert fault_spec.parse("point=before_rename,action=eio,mode=once") == [
        fault_spec.FaultRule("before_rename", action="eio")]
    for bad, word in [("point=before_rename,action=kill,mode=persist", "error action"),
                      ("point=before_rename,mode=persist", "error action"),
                      ("point=before_rename,action=delay=5,mode=persist", "error action"),
                      ("point=before_rename,action=eio,mode=forever", "forever")]:
        with pytest.raises(ValueError, match=word):
            fault_spec.validate(bad)


@pytest.mark.parametrize("action, first, later", [("eio", (5, False), (5, False)),
                                                  ("short", (28, True), (28, False))])
def test_a_persistent_error_fails_every_later_erroring_operation(action, first, later):
    """From the firing pass on, every point of ERROR_POINTS returns the errno (a dying disk);
    the other points never do (nothing fails there, so nothing is injected)."""
    inj = _engine.FaultInjector(f"point=before_chunk_write,hit=2,action={action},mode=persist")
    assert inj.hit("before_data_fsync", 1, 1) == (0, False)
    assert inj.hit("before_chunk_write", 1, 1) == (0, False)
    assert inj.hit("before_chunk_write", 1, 1) == first
    for ckpt in (1, 2):
        for point in fault_spec.fault_points():
            want = later if point in fault_spec.ERROR_POINTS else (0, False)
            assert inj.hit(point, ckpt, 10 * ckpt) == want, point
    once = _engine.FaultInjector(f"point=before_chunk_write,hit=2,action={action}")
    assert [once.hit("before_chunk_write", 1, 1) for _ in range(3)] == [(0, False), first, (0, False)]
