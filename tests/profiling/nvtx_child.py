"""Child process for test_nvtx_injection.py: a save and a load with NVTX collected by the test
tool (NVTX_INJECTION64_PATH is set by the parent). Prints the facts the parent checks."""
from __future__ import annotations

import json
import sys
import threading

from profiling_helpers import CHUNK, SPREAD_FAULT, traced_state
from ckptlab.core import CheckpointConfig, load_latest, open_checkpointer
from ckptlab.core.recovery import read_manifest
from ckptlab.profiling import nvtx_enabled, nvtx_range, phase


def main(ckpt_dir: str) -> None:
    ck = open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(writer_threads=2, chunk_bytes=CHUNK,
                                                                  faults=SPREAD_FAULT))
    with phase("save", step=5):
        ck.save(5, traced_state())
    with phase("wait", step=5):
        ck.wait()
    path = ck.latest().path
    ck.close()
    with nvtx_range("custom-range", category="tests", payload=1.5):
        load_latest(ckpt_dir)
    m = read_manifest(path)
    print(json.dumps({
        "main_tid": threading.get_native_id(),
        "nvtx_enabled": nvtx_enabled(),
        "nchunks": len(m.chunks),
        "chunk_bytes": [c.nbytes for c in m.chunks],
        "total_bytes": m.total_bytes,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
