"""GPU: device-to-host copies of a save and host-to-device copies of a load appear as `d2h` /
`h2d` records inside `capture` / the load. Skipped without CUDA (run with -m gpu)."""
from __future__ import annotations

import pytest
import torch

from ckptlab.core import CheckpointConfig, load_latest, open_checkpointer
from ckptlab.profiling import read_trace, start_trace

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.gpu
def test_d2h_and_h2d_records(tmp_path):
    state = {"w": torch.randn(1 << 20, device="cuda"), "b": torch.randn(4096, device="cuda"), "cpu": torch.ones(8)}
    gpu_bytes = sum(t.numel() * t.element_size() for t in state.values() if t.is_cuda)
    ck = open_checkpointer("pccheck", tmp_path / "ck", CheckpointConfig(chunk_bytes=1 << 20, writer_threads=2))
    with start_trace(tmp_path / "t.arrow", drain_interval_s=None) as session:
        ck.save(1, state)
        ck.wait()
        load_latest(tmp_path / "ck", map_location="cuda")
    ck.close()
    df = read_trace(session.path).to_pandas()
    df["phase"] = df["phase"].astype(str)
    d2h = df[df.phase == "d2h"]
    assert len(d2h) == 2 and d2h.nbytes.sum() == gpu_bytes
    cap = df[df.phase == "capture"].iloc[0]
    assert ((d2h.t_begin_ns >= cap.t_begin_ns) & (d2h.t_end_ns <= cap.t_end_ns)).all()
    h2d = df[df.phase == "h2d"]
    assert len(h2d) == 1 and h2d["nbytes"].iloc[0] == gpu_bytes + 8 * 4 and h2d["step"].iloc[0] == 1
