"""Fixtures shared by the core tests."""
from __future__ import annotations

import threading

import pytest

from ckptlab.core import snapshot as snapshot_module


@pytest.fixture
def copy_gate(monkeypatch):
    """Holds the snapshot thread's host copies until set: a change made meanwhile is
    deterministically before the copy completed (a later one would be harmless)."""
    gate = threading.Event()
    real = snapshot_module.copy_into

    def held(dst, src):
        assert gate.wait(30), "test never opened the copy gate"
        real(dst, src)

    monkeypatch.setattr(snapshot_module, "copy_into", held)
    return gate
