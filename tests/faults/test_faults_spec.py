"""The fault spec language: one grammar for the engine, Python and the command line."""
import argparse
import os

import pytest
from ckptlab import _engine
from ckptlab.core import CheckpointConfig
from ckptlab.faults import spec


def test_points_are_the_engines():
    assert spec.fault_points() == list(_engine.fault_points())
    assert set(spec.ERROR_POINTS) <= set(spec.fault_points())


def test_parse_and_format_round_trip():
    text = "point=before_rename,ckpt=3,action=kill; point=before_chunk_write,hit=5,action=eio;" \
           "point=after_commit,step=40,action=delay=20"
    rules = spec.parse(text)
    assert rules == [
        spec.FaultRule("before_rename", ckpt=3),
        spec.FaultRule("before_chunk_write", hit=5, action="eio"),
        spec.FaultRule("after_commit", step=40, action="delay=20"),
    ]
    assert spec.parse(spec.join(rules)) == rules
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
        spec.validate(bad)


def test_child_env_replaces_inherited_faults(monkeypatch):
    monkeypatch.setenv(spec.FAULTS_ENV, "point=before_rename,action=kill")
    env = spec.child_env()
    assert spec.FAULTS_ENV not in env
    env = spec.child_env("point=after_commit,action=eio", io_log="/tmp/x.log", io_log_data=False)
    assert env[spec.FAULTS_ENV] == "point=after_commit,action=eio"
    assert env[spec.IO_LOG_ENV] == "/tmp/x.log" and env[spec.IO_LOG_DATA_ENV] == "0"
    with pytest.raises(ValueError):
        spec.child_env("point=bogus")


def test_fault_arguments_arm_checkpoint_config(monkeypatch, tmp_path):
    monkeypatch.delenv(spec.FAULTS_ENV, raising=False)
    monkeypatch.delenv(spec.IO_LOG_ENV, raising=False)
    p = argparse.ArgumentParser()
    spec.add_fault_arguments(p)
    args = p.parse_args(["--fault", "point=before_rename,ckpt=2,action=kill", "--fault", "point=during_gc,action=eio",
                         "--io-log", str(tmp_path / "io.log")])
    got = spec.apply_fault_arguments(args)
    assert got == "point=before_rename,ckpt=2,action=kill;point=during_gc,action=eio"
    cfg = CheckpointConfig()
    assert cfg.effective_faults() == got
    assert cfg.effective_io_log() == (str(tmp_path / "io.log"), True)
    assert os.environ[spec.IO_LOG_ENV] == str(tmp_path / "io.log")
