"""The engine's C++ self-test built natively and cross-built for aarch64 from the CMake
description, the latter run under qemu with 4 KiB and 64 KiB pages (`make test-arm64`,
docs/ARM64.md). Slow (1.5 to 2.5 minutes on 2 cores: two builds, three runs): only with
`-m slow`; skipped where the cross toolchain or qemu-user is not installed."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = {"make": "make", "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "qemu-aarch64": "qemu-user"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_engine_selftest_native_and_aarch64_under_qemu(tmp_path):
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs the Debian packages {' '.join(missing)}")
    nvtx = subprocess.run([sys.executable, os.path.join(ROOT, "csrc", "find_nvtx.py")],
                          capture_output=True, text=True, check=True).stdout.strip()
    if not nvtx:
        pytest.skip("NVTX3 headers not found (pip install nvidia-nvtx)")
    proc = subprocess.run(["make", "-s", "test-arm64", f"SELFTEST_DIR={tmp_path}", f"NVTX_INCLUDE={nvtx}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=540)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "built for aarch64, running on aarch64 (page size 4096)" in out
    assert "built for aarch64, running on aarch64 (page size 65536)" in out
    assert out.count("dispatch=armv8-crc") == 2, out
    assert out.count("OK: ") == 3 and "FAIL" not in out, out
