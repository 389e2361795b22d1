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


@pytest.mark.parametrize("value, cpus", [("", ()), ("3", (3,)), ("0-2,5", (0, 1, 2, 5)), (" 4-5, 1 ,4", (1, 4, 5)),
                                         ((2, 0, 2), (0, 2)), ([], ())])
def test_writer_cpus_lists(value, cpus):
    from ckptlab.profiling.metadata import cpu_list_string

    assert CheckpointConfig(writer_cpus=value).writer_cpus == cpus
    assert cpu_list_string(cpus) == {(): "", (3,): "3", (0, 1, 2, 5): "0-2,5", (1, 4, 5): "1,4-5", (0, 2): "0,2"}[cpus]


@pytest.mark.parametrize("value, needle", [("x", "'x' is not a CPU"), ("5-2", "runs backwards"), ("-3", "not a CPU"),
                                           ((1.5,), "1.5 is not a CPU number"), ((-1,), ">= 0")])
def test_bad_writer_cpus(value, needle):
    with pytest.raises(ValueError, match=f"writer_cpus: .*{needle}"):
        CheckpointConfig(writer_cpus=value)


def test_writer_cpus_this_process_may_not_use_are_refused_at_open(ckpt_dir):
    import os

    bad = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(ValueError, match=f"writer_cpus: CPU {bad} not available to this process"):
        open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(writer_cpus=(bad,)))


def test_engine_options_are_keywords_the_engine_takes(ckpt_dir):
    """Every option the config hands the engine is one of Engine's keyword arguments (a knob
    added to engine_options() but not to the binding fails here, not at a user's first save)."""
    from ckptlab import _engine

    opts = CheckpointConfig(writer_threads=1, chunk_bytes=65536, writer_cpus=()).engine_options()
    _engine.Engine(ckpt_dir, **opts, staging_bytes=65536).close()


def test_bad_chunk_assignment_is_refused():
    with pytest.raises(ValueError, match="chunk_assignment must be one of"):
        CheckpointConfig(chunk_assignment="random")


def test_static_chunk_assignment_is_pccheck_only(ckpt_dir):
    with pytest.raises(ValueError, match="chunk_assignment='static'.*torchsave has none"):
        open_checkpointer("torchsave", ckpt_dir, CheckpointConfig(chunk_assignment="static"))


def test_static_chunk_assignment_gives_each_writer_its_fixed_share(ckpt_dir, tmp_path):
    """chunk_assignment="static": chunk i is written by writer i mod writer_threads (PCcheck's
    fixed per-thread share), and the checkpoint loads back exactly."""
    import numpy as np
    import torch

    from ckptlab.analysis.tables import column
    from ckptlab.profiling import read_trace, start_trace

    state = {"w": torch.arange(10 * 16384, dtype=torch.float32)}  # 640 KiB: 10+ chunks of 64 KiB
    cfg = CheckpointConfig(writer_threads=3, chunk_bytes=65536, trace=True, chunk_assignment="static")
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        with start_trace(tmp_path / "t.arrow", ck) as session:
            for step in (1, 2):
                ck.save(step, state)
            ck.wait()
        out = {"w": torch.zeros_like(state["w"])}
        assert ck.load(out)[0] == 2
    assert torch.equal(out["w"], state["w"])
    table = read_trace(session.path)
    writes = np.flatnonzero(column(table, "phase") == "write")
    chunks = column(table, "chunk").astype(np.int64)[writes]
    names = column(table, "thread_name")[writes]
    assert len(writes) >= 20 and set(chunks % 3) == {0, 1, 2}
    assert all(str(n).endswith(f"ckptlab-writer-{c % 3}") for c, n in zip(chunks.tolist(), names.tolist()))
