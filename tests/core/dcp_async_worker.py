"""One rank of the ``dcp-async`` across-ranks test (tests/core/test_dcp_ranks_async.py),
started with torch.multiprocessing; writes what it saw to ``OUT/dcp_async_rank<R>.json``."""
from __future__ import annotations

import os
import threading

import torch
import torch.distributed as dist

import dist_worker
from dist_worker import config, init, make_training, train_step, write

from ckptlab.core import CheckpointError, open_checkpointer


def _params(model) -> list[list[float]]:
    return [p.detach().flatten().tolist() for p in model.parameters()]


def _published(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("step_"))


def main(rank: int, world: int, init_file: str, directory: str, out: str) -> None:
    init(rank, world, init_file)
    from ckptlab.core import dcp_ranks

    r: dict = {}
    model, opt = make_training()
    saved: dict[int, list] = {}
    with open_checkpointer("dcp-async", directory, config(max_inflight=2)) as ck:
        r["kind"] = ck.kind
        for step in range(1, 5):  # DDP's all-reduces run while the previous saves commit
            train_step(model, opt, rank)
            state = {"model": model, "optim": opt, "data": {"rank": rank, "position": step}}
            ck.save(step, state)
            saved[step] = _params(model)
            r.setdefault("inflight", []).append(ck.stats()["inflight"])
        r["wait"] = ck.wait()
        r["after_wait"] = _published(directory)

        # rank 1 cannot write its side file of step 5: save() returns, the next wait() names the step
        real_write = dcp_ranks.write_file_durable
        if rank == 1:
            def broken(path, *args, **kwargs):
                if ".step_000000000005." in path:
                    raise OSError(28, "No space left on device", path)
                return real_write(path, *args, **kwargs)
            dcp_ranks.write_file_durable = broken
        train_step(model, opt, rank)
        ck.save(5, {"model": model, "optim": opt, "data": {"rank": rank, "position": 5}})
        try:
            ck.wait()
            r["step5_error"] = None
        except CheckpointError as e:
            r["step5_error"] = str(e)
        dcp_ranks.write_file_durable = real_write
        r["after_failure"] = _published(directory)

        # rank 0's publish held back: save() still returns, wait() does not until it is published
        gate = threading.Event()
        real_publish = dcp_ranks.commit.publish
        if rank == 0:
            def held(*args, **kwargs):
                gate.wait()
                return real_publish(*args, **kwargs)
            dcp_ranks.commit.publish = held
        for step in (6, 7):
            train_step(model, opt, rank)
            ck.save(step, {"model": model, "optim": opt, "data": {"rank": rank, "position": step}})
            saved[step] = _params(model)
        r["held_wait"] = ck.wait(timeout=0.2)
        r["held_published"] = _published(directory)
        dist.barrier()  # every rank has seen step 6 unacknowledged
        gate.set()
        r["released_wait"] = ck.wait()
        dcp_ranks.commit.publish = real_publish
        r["released_published"] = _published(directory)
        r["side_files"] = sorted(os.listdir(os.path.join(directory, "step_000000000007")))

        fresh, fresh_opt = make_training(seed=1)
        step, loaded = ck.load({"model": fresh, "optim": fresh_opt, "data": {}})
        r["loaded_step"] = step
        r["loaded_data"] = loaded["data"]
        r["bit_exact"] = _params(fresh) == saved[7]
        step4, _ = ck.load({"model": fresh, "optim": fresh_opt, "data": {}}, step=4)
        r["bit_exact_4"] = (step4, _params(fresh) == saved[4])
        r["committed"] = ck.stats()["committed"]
    write(out, "dcp_async", rank, r)
    dist.destroy_process_group()


assert dist_worker  # the shared helpers' module, re-imported by spawn from sys.path
