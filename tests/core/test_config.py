import pytest

from ckptlab.core import CheckpointConfig, open_checkpointer


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"max_inflight": 0}, "max_inflight"),
        ({"writer_threads": -1}, "writer_threads"),
        ({"chunk_bytes": 1000}, "chunk_bytes"),
        ({"chunk_bytes": 3 * 65536 + 1}, "multiple of 65536"),
        ({"staging_bytes": 1024}, "staging_bytes"),
        ({"io_mode": "fast"}, "io_mode"),
        ({"keep_last": -1}, "keep_last"),
        ({"unsafe": ("skip_everything",)}, "unknown mutation"),
        ({"max_inflight": True}, "max_inflight"),
    ],
)
def test_bad_config_is_refused_with_the_field_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        CheckpointConfig(**kwargs)


def test_unknown_kind_is_refused(ckpt_dir):
    with pytest.raises(ValueError, match="unknown checkpointer kind 'fast'"):
        open_checkpointer("fast", ckpt_dir)


def test_bad_fault_spec_is_refused_at_open(ckpt_dir):
    with pytest.raises(ValueError, match="unknown point 'before_lunch'"):
        open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(faults="point=before_lunch"))


def test_env_fault_spec_is_appended(monkeypatch):
    monkeypatch.setenv("CKPTLAB_FAULTS", "point=before_rename,action=kill")
    c = CheckpointConfig(faults="point=before_gc,action=eio")
    assert c.effective_faults() == "point=before_gc,action=eio;point=before_rename,action=kill"


def test_checkpoint_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        open_checkpointer("pccheck", str(f))
