"""Fixtures for every test; shared helpers live in ckpt_testutil.py (tests/ is put on sys.path)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def ckpt_dir(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    return str(d)


@pytest.fixture(autouse=True)
def _isolate_ckptlab_environment():
    """No test may leak CKPTLAB_* variables (a leaked fault spec would SIGKILL pytest itself)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("CKPTLAB_")}
    for k in saved:
        del os.environ[k]
    yield
    for k in [k for k in os.environ if k.startswith("CKPTLAB_")]:
        del os.environ[k]
    os.environ.update(saved)
