"""faults/damage.py: every kind of damage to a committed checkpoint is detected; the loader falls back, never lies."""
import os
import random
import shutil
from pathlib import Path

import pytest
from ckptlab.core import CorruptCheckpointError, ManifestError, verify_checkpoint
from ckptlab.core.commit import committed_step_dirs
from ckptlab.core.manifest import decode_manifest
from ckptlab.faults import oracle
from ckptlab.faults.damage import KINDS, corrupt
from faults_helpers import save_steps, small_setup
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("bitrot") / "ck")
    os.mkdir(d)
    setup = small_setup(seed=11, size=150 * 1024)
    save_steps(d, setup)
    return d, setup


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("newest", [True, False])
def test_every_damage_is_detected_and_skipped(base, kind, newest, tmp_path):
    src, setup = base
    d = str(tmp_path / "ck")
    shutil.copytree(src, d)
    dirs = committed_step_dirs(d)
    ti = len(dirs) - 1 if newest else 0
    rng = random.Random(hash((kind, newest)) & 0xFFFF)
    desc = None
    for _ in range(10):  # a rare draw changes nothing (zeroing zeros): draw again
        _, desc = corrupt(dirs[ti][1], rng, kind, other=dirs[ti - 1][1] if ti else dirs[1][1])
        if desc:
            break
    assert desc, f"{kind} never changed anything"
    with pytest.raises(CorruptCheckpointError):
        verify_checkpoint(dirs[ti][1])
    steps = [s for s, _ in dirs]
    check = oracle.check_directory(d, setup.layout, setup.seed, acked=None, sessions=[steps])
    assert [v for v in check.violations if "are missing" not in v] == []
    assert check.loaded_step == (steps[-2] if newest else steps[-1]), desc
    # A new writer saves over the damage (the damaged newest step itself, via replacement).
    again = steps[-1] if newest else steps[-1] + 1
    assert oracle.check_recoverable(d, setup.layout, setup.seed, again, setup.plan(again)) is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_manifest_parser_fails_closed(base, data):
    """Any damage to MANIFEST bytes gives a ManifestError or a manifest whose own checksum
    held (the damage missed it) — never another exception."""
    src, _ = base
    raw = bytearray(Path(committed_step_dirs(src)[-1][1], "MANIFEST").read_bytes())
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), min_size=1, max_size=4))
    for pos, val in edits:
        raw[pos] = val
    cut = data.draw(st.integers(0, len(raw)))
    blob = bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw)
    try:
        decode_manifest(blob)
    except ManifestError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_manifest_parser_on_random_bytes(blob):
    with pytest.raises(ManifestError):
        decode_manifest(blob)
