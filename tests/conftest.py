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
