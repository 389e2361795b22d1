"""The saver child (faults/saver.py) starts without torch: the campaign crashes hundreds of
them, and ``import torch`` would cost each ~1.5 s. Checked on the real entry point,
``python -m ckptlab.faults.saver CONFIG``, saving real checkpoints."""
import os
import subprocess
import sys

from ckptlab.core.fault_spec import child_env
from ckptlab.faults import oracle
from ckptlab.faults.tiers.common import Context, session, write_child_config
from faults_helpers import small_setup


def _imported(importtime_stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output ('import time: self | cum | name')."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_saver_child_imports_no_torch(tmp_path):
    setup = small_setup()
    ctx = Context(work=str(tmp_path), states=str(tmp_path))
    cfg = write_child_config(str(tmp_path), setup, [session(setup, ctx)])
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "ckptlab.faults.saver", cfg], capture_output=True,
                       text=True, timeout=120, env=child_env(), cwd=str(tmp_path), check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    modules = _imported(r.stderr)
    assert {"numpy", "ckptlab._engine"} <= modules, "importtime output not understood: the check is blind"
    torch = sorted(m for m in modules if m == "torch" or m.startswith("torch."))
    assert torch == [], f"the saver child imported {torch[:5]}"
    # ...and it did its job: every step acknowledged and on disk.
    hist = oracle.read_history(os.path.join(tmp_path, "ack.log"))
    assert hist.done and sorted(hist.acked) == setup.steps
    check = oracle.check_directory(os.path.join(tmp_path, "ck"), setup.layout, setup.seed, acked=hist.max_acked,
                                   sessions=hist.sessions)
    assert check.violations == [] and check.loaded_step == setup.steps[-1]
