"""benchmarks/thread_cpu.py: per-thread user/system time and faults of a real child process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "thread_cpu.py")

# The main thread spins in user space; a thread it names "sys-burner" (through prctl, as the
# engine names its threads) spends its time in the kernel faulting in fresh pages, inside
# ctypes.memset, which releases the GIL (so the two do not trade it). Each stops after its own
# ~0.6 s of CPU, so the figures do not hang on scheduling.
CHILD = textwrap.dedent("""
    import ctypes, mmap, threading, time
    def burner():
        ctypes.CDLL(None).prctl(15, b"sys-burner", 0, 0, 0)  # PR_SET_NAME
        size = 16 << 20
        while time.thread_time() < 0.6:
            m = mmap.mmap(-1, size)
            view = ctypes.c_char.from_buffer(m)
            ctypes.memset(ctypes.addressof(view), 1, size)  # 4096 fresh pages, GIL released
            del view
            m.close()
    t = threading.Thread(target=burner)
    t.start()
    x = 0
    while time.thread_time() < 0.6:  # a system call: checked once per 100k additions
        for _ in range(100_000):
            x += 1
    t.join()
    time.sleep(0.3)  # the sampler's last look sees both threads' totals
""")


def test_splits_cpu_by_thread(tmp_path):
    out = tmp_path / "cpu.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--interval", "0.05", "--json", str(out), "--",
                           sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    rows = {r["name"]: r for r in doc["by_name"]}
    main = next(r for name, r in rows.items() if name.endswith("[main]"))
    burner = rows["sys-burner"]
    assert main["threads"] == 1 and burner["threads"] == 1, rows
    # each thread's time is its own: user time on the spinner, kernel time and faults on the burner
    assert main["user_s"] >= 0.3 and main["user_s"] > 3 * main["sys_s"] and main["user_s"] > 3 * burner["user_s"], rows
    assert burner["sys_s"] >= 0.2 and burner["sys_s"] > 3 * burner["user_s"], rows
    assert burner["minflt"] > 1000 and burner["minflt"] > 10 * main["minflt"], rows
    assert "sys-burner" in proc.stderr and "wall" in proc.stderr


def test_child_exit_status_is_passed_on(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--", sys.executable, "-c", "raise SystemExit(3)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr


def test_refuses_without_a_command():
    proc = subprocess.run([sys.executable, SCRIPT, "--interval", "0.1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "command" in proc.stderr
