"""Child process for crash tests: saves det_state(step) for steps 1..N with a pccheck (or,
with a sixth argument, a torchsave) checkpointer and appends every step it sees acknowledged
to an ack log (fsynced), so the parent knows the last acknowledged step when a fault point
SIGKILLs this process."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ckptlab.core import CheckpointConfig, open_checkpointer  # noqa: E402
from ckpt_testutil import det_state  # noqa: E402


def main() -> None:
    directory, ack_path, nsteps, nbytes, keep = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    kind = sys.argv[6] if len(sys.argv) > 6 else "pccheck"
    ack = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    acked = -1

    def record(ck) -> None:
        nonlocal acked
        if kind == "torchsave":  # synchronous: save() returned, so the step is durable
            step = saved
        else:
            step = ck.engine.last_committed_step if ck.engine is not None else -1
        if step > acked:
            acked = step
            os.write(ack, f"{step}\n".encode())
            os.fsync(ack)

    saved = -1
    cfg = CheckpointConfig(chunk_bytes=64 * 1024, writer_threads=3, max_inflight=2, keep_last=keep)
    with open_checkpointer(kind, directory, cfg) as ck:
        for step in range(1, nsteps + 1):
            ck.save(step, det_state(step, nbytes))
            saved = step
            record(ck)
        ck.wait()
        record(ck)
    print("FINISHED", flush=True)


if __name__ == "__main__":
    main()
