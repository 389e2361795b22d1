"""GPU loads through pinned batches (core/load_pipeline.py): bit-exact onto the device, pinned
memory within the load buffer, each batch's h2d overlapping the next batch's reads, and a
corrupt last chunk that changes nothing on the device. Skipped without CUDA (run with -m gpu)."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

from ckptlab.core import CheckpointConfig, CorruptCheckpointWarning, NoCheckpointError, load_latest, open_checkpointer
from ckptlab.core.load_pipeline import plan_batches
from ckptlab.core.recovery import read_manifest

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MiB = 1 << 20


def _state(step: int, n: int = 1 << 20) -> dict:
    g = torch.Generator().manual_seed(step)
    w = torch.randn(n, generator=g)
    return {"w": w, "head": w[:100], "bits": w[-64:].view(torch.int32), "tied": w,
            "bf16": torch.randn(3000, generator=g).bfloat16(), "i64": torch.arange(777) * step,
            "rows": torch.randn(300, 200, generator=g).t(), "empty": torch.zeros(0), "step": step}


def _save(ckpt_dir, chunk_bytes, *steps, n=1 << 20):
    cfg = CheckpointConfig(chunk_bytes=chunk_bytes, keep_last=0, writer_threads=4)
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        for s in steps:
            ck.save(s, _state(s, n))


def _step_dir(ckpt_dir, step):
    return os.path.join(ckpt_dir, f"step_{step:012d}")


def _same_storage(a, b):
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("buffer_bytes", [128 * 1024, 1 * MiB, 256 * MiB])
def test_map_location_cuda_is_bit_exact_and_keeps_ties(ckpt_dir, buffer_bytes):
    _save(ckpt_dir, 64 * 1024, 1)
    step, got = load_latest(ckpt_dir, map_location="cuda", load_buffer_bytes=buffer_bytes)
    assert step == 1
    for k, v in _state(1).items():
        if isinstance(v, torch.Tensor):
            assert got[k].is_cuda and got[k].dtype == v.dtype and got[k].stride() == v.stride(), k
            assert torch.equal(got[k].cpu(), v), k
        else:
            assert got[k] == v
    assert _same_storage(got["w"], got["head"]) and _same_storage(got["w"], got["tied"])
    assert _same_storage(got["w"], got["bits"])


@cuda
@pytest.mark.gpu
def test_restoring_a_cuda_model_through_many_batches(ckpt_dir):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512)).cuda()
    with open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(chunk_bytes=256 * 1024)) as ck:
        ck.save(1, {"model": model})
    expected = {k: v.cpu() for k, v in model.state_dict().items()}
    fresh = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512)).cuda()
    load_latest(ckpt_dir, {"model": fresh}, load_buffer_bytes=512 * 1024)
    for k, v in fresh.state_dict().items():
        assert v.is_cuda and torch.equal(v.cpu(), expected[k]), k


def _host_stat(which: str) -> int:
    """Pinned bytes handed out by torch's host allocator ("active_bytes.<which>", with or
    without an ".all" level, as torch versions name it)."""
    stats = torch.cuda.host_memory_stats()
    for key in (f"active_bytes.{which}", f"active_bytes.all.{which}"):
        if key in stats:
            return int(stats[key])
    assert which == "current" and not stats, sorted(stats)
    return 0


@cuda
@pytest.mark.gpu
def test_pinned_memory_stays_within_the_load_buffer(ckpt_dir):
    _save(ckpt_dir, 256 * 1024, 1, n=4 << 20)  # 16 MiB of float32
    torch.cuda.init()
    torch.cuda.synchronize()
    before = _host_stat("current")
    torch.cuda.reset_peak_host_memory_stats()
    got = load_latest(ckpt_dir, map_location="cuda", load_buffer_bytes=1 * MiB)[1]
    peak = _host_stat("peak")
    assert 0 < peak - before <= 1 * MiB, peak - before  # two slots of 512 KiB (powers of two)
    assert torch.equal(got["w"].cpu(), _state(1, 4 << 20)["w"])


@cuda
@pytest.mark.gpu
def test_trace_shows_each_batch_h2d_overlapping_the_next_batch_reads(tmp_path):
    from ckptlab.profiling import read_trace, start_trace

    ckpt_dir = tmp_path / "ck"
    _save(ckpt_dir, 4 * MiB, 1, n=64 << 20)  # 256 MiB
    m = read_manifest(_step_dir(ckpt_dir, 1))
    batches = plan_batches([c.nbytes for c in m.chunks], 32 * MiB)
    assert len(batches) >= 8
    with start_trace(tmp_path / "t.arrow", drain_interval_s=None) as session:
        load_latest(ckpt_dir, map_location="cuda", load_buffer_bytes=64 * MiB)
    df = read_trace(session.path).to_pandas()
    df["phase"] = df["phase"].astype(str)
    h2d = df[df.phase == "h2d"].sort_values("t_begin_ns").reset_index(drop=True)
    reads = df[df.phase == "read"]
    load = df[df.phase == "load"].iloc[0]
    assert len(h2d) == len(batches) and h2d.nbytes.sum() == sum(s.nbytes for s in m.storages)
    # placed on the host clock never early, late by at most the origin's synchronize latency
    assert (h2d.t_begin_ns >= load.t_begin_ns).all() and (h2d.t_end_ns <= load.t_end_ns + 1_000_000).all()
    overlapped = 0
    for k, r in enumerate(batches):
        mine = reads[reads.chunk.isin(list(r))]
        assert h2d.t_begin_ns[k] >= mine.t_end_ns.max(), f"batch {k} copied before it was read"
        if k + 1 < len(batches):
            nxt = reads[reads.chunk.isin(list(batches[k + 1]))]
            overlapped += bool(((nxt.t_begin_ns < h2d.t_end_ns[k]) & (nxt.t_end_ns > h2d.t_begin_ns[k])).any())
    assert overlapped >= (len(batches) - 1) // 2, f"only {overlapped} of {len(batches) - 1} copies overlapped reads"


@cuda
@pytest.mark.gpu
def test_a_corrupt_last_chunk_leaves_the_cuda_target_untouched_and_falls_back(ckpt_dir):
    _save(ckpt_dir, 64 * 1024, 1, 2)
    path = _step_dir(ckpt_dir, 2)
    m = read_manifest(path)
    last = m.chunks[-1]
    with open(os.path.join(path, m.files[last.file].name), "r+b") as f:
        f.seek(last.offset + last.nbytes // 2)
        b = f.read(1)[0]
        f.seek(last.offset + last.nbytes // 2)
        f.write(bytes([b ^ 1]))
    w = torch.full((1 << 20,), -1.0, device="cuda")
    with pytest.raises(NoCheckpointError, match="CRC32C"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CorruptCheckpointWarning)
            load_latest(ckpt_dir, {"w": w}, step=2, load_buffer_bytes=128 * 1024)
    assert (w == -1.0).all()
    with pytest.warns(CorruptCheckpointWarning):
        step, _ = load_latest(ckpt_dir, {"w": w}, load_buffer_bytes=128 * 1024)
    assert step == 1 and torch.equal(w.cpu(), _state(1)["w"])
