"""core/staging_fill.py StagingWindow: how the staging pool is page-locked for CUDA. The real
registration runs in tests/core/test_gpu.py (-m gpu); here cudart is a recorder, to pin the
call's contract on a CPU machine."""
from __future__ import annotations

import contextlib

import pytest
import torch

from ckptlab import _engine
from ckptlab.core.staging_fill import CUDA_HOST_REGISTER_PORTABLE, StagingWindow


class _Cudart:
    def __init__(self, result: int = 0) -> None:
        self.calls: list[tuple] = []
        self.result = result

    def cudaHostRegister(self, ptr, size, flags):  # noqa: N802 - cudart's names
        self.calls.append(("register", ptr, size, flags, _current[-1]))
        return self.result

    def cudaHostUnregister(self, ptr):  # noqa: N802
        self.calls.append(("unregister", ptr, _current[-1]))
        return 0


_current: list[str] = ["cuda:0"]  # the snapshot thread's current device unless told otherwise


@contextlib.contextmanager
def _device(dev):
    _current.append(str(dev))
    try:
        yield
    finally:
        _current.pop()


@pytest.fixture
def engine(tmp_path):
    e = _engine.Engine(str(tmp_path), staging_bytes=2 << 20, chunk_bytes=1 << 20, writer_threads=1)
    yield e
    e.close()


def test_registration_is_portable_and_runs_under_the_states_device(engine, monkeypatch):
    """A torchrun rank on cuda:3 must not open a context on GPU 0 (the snapshot thread's default
    device), and every device's context must see the pool as pinned."""
    rt = _Cudart()
    monkeypatch.setattr(torch.cuda, "cudart", lambda: rt)
    monkeypatch.setattr(torch.cuda, "device", _device)
    window = StagingWindow(engine)
    window.register_for_cuda(torch.device("cuda", 3))
    window.register_for_cuda(torch.device("cuda", 3))  # once per pool
    base, nbytes = engine.staging_region
    assert rt.calls == [("register", base, nbytes, CUDA_HOST_REGISTER_PORTABLE, "cuda:3")]
    assert window.registered
    window.close()
    assert rt.calls[1:] == [("unregister", base, "cuda:3")] and not window.registered


def test_a_refused_registration_warns_and_is_not_undone(engine, monkeypatch):
    rt = _Cudart(result=2)  # cudaErrorMemoryAllocation
    monkeypatch.setattr(torch.cuda, "cudart", lambda: rt)
    monkeypatch.setattr(torch.cuda, "device", _device)
    window = StagingWindow(engine)
    with pytest.warns(RuntimeWarning, match="cudaHostRegister of the .* staging pool failed"):
        window.register_for_cuda(torch.device("cuda", 0))
    assert not window.registered
    window.close()
    assert [c[0] for c in rt.calls] == ["register"]
