"""One rank of the multi-rank checkpoint tests (tests/core/test_distributed*.py).

Started as users start ranks: ``torch.multiprocessing`` (the ``*_main(rank, ...)`` functions)
or ``torchrun`` (``python -m torch.distributed.run ... dist_worker.py SCENARIO DIR OUT``).
Each rank writes what it saw to ``OUT/<scenario>_rank<R>.json``; the test asserts on it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ckptlab.core import CheckpointConfig, CheckpointError, CorruptCheckpointWarning, open_checkpointer, per_rank
from ckptlab.core import global_commit as gc
from ckptlab.core.recovery import read_manifest

KiB = 1024


def config(**changes) -> CheckpointConfig:
    base = dict(writer_threads=1, chunk_bytes=64 * KiB, reader_threads=1, keep_last=0, coordination_timeout_s=20.0)
    return CheckpointConfig(**(base | changes))


def make_training(seed: int = 0):
    torch.manual_seed(seed)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    return model, opt


def train_step(model, opt, rank: int) -> None:
    x = torch.randn(4, 16) + rank
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def state_of(model, opt, step: int) -> dict:
    return {"model": model, "optim": opt, "rng": per_rank(torch.get_rng_state()),
            "data": per_rank({"rank": dist.get_rank(), "position": step * 10 + dist.get_rank()}), "extra": {"step": step}}


def part_bytes(directory: str, rank: int, step: int) -> tuple[int, int]:
    """(bytes of the replicated tensors in rank's part, the part's whole byte stream)."""
    m = read_manifest(os.path.join(directory, f"rank_{rank:05d}", f"step_{step:012d}"))
    return sum(t.nbytes for t in m.tensors if t.name.startswith("tensors/")), m.total_bytes


def chunk_reads(call):
    """``call()``'s result and how often it read each (file, offset) chunk of a checkpoint."""
    from ckptlab.core import load_pipeline

    seen: dict[str, int] = {}
    real = load_pipeline.run_reads

    def counting(path, m, tasks, threads):
        for task in tasks:
            key = f"{os.path.relpath(task[0], path.rsplit(os.sep, 2)[0])}@{task[1]}"
            seen[key] = seen.get(key, 0) + 1
        return real(path, m, tasks, threads)

    load_pipeline.run_reads = counting
    try:
        return call(), seen
    finally:
        load_pipeline.run_reads = real


def part_chunks(directory: str, step: int, world: int) -> list[str]:
    """Every (file, offset) chunk of every part of ``step``, keyed as chunk_reads() keys them."""
    out = []
    for r in range(world):
        path = gc.part_path(directory, r, step)
        m = read_manifest(path)
        out += [f"{os.path.relpath(os.path.join(path, m.files[c.file].name), directory)}@{c.offset}" for c in m.chunks]
    return out


def error_of(call) -> str | None:
    """The CheckpointError ``call()`` raised, as text; None if it returned."""
    try:
        call()
    except CheckpointError as e:
        return str(e)
    return None


def write(out: str, name: str, rank: int, result: dict) -> None:
    with open(os.path.join(out, f"{name}_rank{rank}.json"), "w") as f:
        json.dump(result, f)


def init(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def flip_bytes(path: str) -> None:
    """Invert 16 bytes in the middle of the file (inside a checksummed chunk)."""
    offset = os.path.getsize(path) // 2
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(16)
        f.seek(offset)
        f.write(bytes(x ^ 0xFF for x in b))
        f.flush()
        os.fsync(f.fileno())


def data_file(part: str) -> str:
    m = read_manifest(part)
    return os.path.join(part, max(m.files, key=lambda f: f.nbytes).name)


def main_world_main(rank: int, world: int, init_file: str, directory: str, out: str) -> None:
    """Round trip, bytes per rank, mismatched steps, a corrupt part, a rank that never saves."""
    init(rank, world, init_file)
    r: dict = {}
    model, opt = make_training()
    torch.manual_seed(100 + rank)  # per-rank RNG streams
    with open_checkpointer("pccheck", directory, config(max_inflight=2)) as ck:
        r["type"] = type(ck).__name__
        for step in (1, 2, 3):
            train_step(model, opt, rank)
            ck.save(step, state_of(model, opt, step))
        ck.wait()
        r["rng3"] = torch.get_rng_state().tolist()[:64]
        r["params3"] = [p.detach().flatten().tolist() for p in model.module.parameters()]
        r["exp_avg3"] = [opt.state[p]["exp_avg"].flatten().tolist() for p in model.parameters()]
        r["part_bytes"], r["part_stream_bytes"] = part_bytes(directory, rank, 3)
        r["replicated_bytes"] = sum(p.numel() * p.element_size() * 3 + opt.state[p]["step"].nbytes
                                    for p in model.parameters())  # param, exp_avg, exp_avg_sq, step

        # round trip into fresh objects
        model2, opt2 = make_training(seed=7)
        target = {"model": model2, "optim": opt2, "rng": None, "data": None, "extra": None}
        (step, loaded), reads = chunk_reads(lambda: ck.load(target))
        r["load_chunk_reads"], r["part_chunks"] = reads, part_chunks(directory, 3, world)
        r["loaded_step"] = step
        r["loaded_params_equal"] = all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
        r["loaded_optim_equal"] = all(torch.equal(opt.state[a]["exp_avg_sq"], opt2.state[b]["exp_avg_sq"])
                                      for a, b in zip(model.parameters(), model2.parameters()))
        r["loaded_rng_prefix"] = loaded["rng"].tolist()[:64]
        r["loaded_data"] = loaded["data"]
        r["latest"] = ck.latest().step

        # mismatched steps: a clear error on every rank, nothing committed
        t0 = time.monotonic()
        ck.save(4 if rank == 0 else 5, state_of(model, opt, 4))
        r["mismatch_error"] = error_of(ck.wait)
        r["mismatch_s"] = time.monotonic() - t0
    r["records_after_mismatch"] = sorted(os.listdir(os.path.join(directory, "global")))

    # a corrupt part on rank 1 (step 3): every rank falls back to step 2 together
    dist.barrier()
    if rank == 1:
        flip_bytes(data_file(os.path.join(directory, "rank_00001", "step_000000000003")))
    dist.barrier()
    with open_checkpointer("pccheck", directory, config()) as ck:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r["latest_after_corruption"] = ck.latest().step
            step, loaded = ck.load()
        r["load_after_corruption"] = step
        r["corruption_warnings"] = [str(w.message) for w in caught if issubclass(w.category, CorruptCheckpointWarning)]
        r["loaded_data_after_corruption"] = loaded["data"]

    # re-saving step 3 (after falling back to 2): the parts of the old step 3 still on disk are
    # not the new save's; the step commits only once the new parts are durable (a 300 ms delay
    # keeps them in flight while the old ones are there to be mistaken for them)
    train_step(model, opt, rank)
    with open_checkpointer("pccheck", directory, config(faults="point=before_rename,step=3,action=delay=300")) as ck:
        ck.save(3, state_of(model, opt, 3))
        ck.wait()
    with open_checkpointer("pccheck", directory, config()) as ck:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step, _ = ck.load({"model": make_training(seed=7)[0], "optim": None, "rng": None, "data": None,
                               "extra": None})
        r["resaved_step"] = step
        r["resave_warnings"] = [str(w.message) for w in caught if issubclass(w.category, CorruptCheckpointWarning)]

    # retention: keep_last globally committed steps; older records, their parts and parts of
    # steps never committed (4, 5) go; opening removes a crashed record write's temp file
    leftover = os.path.join(directory, "global", ".step_000000000009.json.tmp-1-deadbeef")
    if rank == 0:
        open(leftover, "wb").close()
    dist.barrier()
    with open_checkpointer("pccheck", directory, config(keep_last=2)) as ck:
        r["leftover_after_open"] = os.path.exists(leftover)
        for step in (30, 31):
            ck.save(step, state_of(model, opt, step))
        ck.wait()
    r["params31"] = [p.detach().tolist() for p in model.module.parameters()]
    r["records_after_retention"] = sorted(os.listdir(os.path.join(directory, "global")))
    r["parts_after_retention"] = sorted(os.listdir(os.path.join(directory, f"rank_{rank:05d}")))

    shrunken_world_retention(rank, directory + "-shrunk", model, opt, r)
    per_rank_inside_a_stateful(rank, directory + "-stateful", r)

    # a rank that never calls save: a clear error within the timeout on the others, no hang
    with open_checkpointer("pccheck", directory, config(coordination_timeout_s=3.0)) as ck:
        t0 = time.monotonic()
        if rank == 0:
            ck.save(20, state_of(model, opt, 20))
            r["absent_error"] = error_of(ck.wait)
        else:
            time.sleep(6.0)  # never arrives (ends only after rank 0 has given up)
        r["absent_s"] = time.monotonic() - t0
        try:
            ck.close()
        except CheckpointError:
            pass
    write(out, "main", rank, r)


def _listing(path: str) -> list[str] | None:
    return sorted(os.listdir(path)) if os.path.isdir(path) else None


def shrunken_world_retention(rank: int, directory: str, model, opt, r: dict) -> None:
    """This world of 2 after one of 4: rank_00002/3 hold the larger world's parts. Step 2's
    record is the 4-rank world's (its parts 2 and 3 stay while it is kept); step 1 of ranks 2
    and 3 and step 3 of rank 2 are named by no 4-rank record; step 9 is newer than anything
    committed here; rank 3 has a crashed write's temp dir. Retention (keep_last=2) cleans rank
    2's directory on rank 0 and rank 3's on rank 1."""
    from ckptlab.core import global_commit as gc

    with open_checkpointer("pccheck", directory, config(keep_last=2)) as ck:
        for step in (1, 2):
            ck.save(step, state_of(model, opt, step))
    dist.barrier()
    if rank == 0:
        own = os.path.join(directory, "rank_00000")
        for q, steps in ((2, (1, 2, 3, 9)), (3, (1, 2))):
            orphan = os.path.join(directory, f"rank_{q:05d}")
            os.makedirs(orphan)
            open(os.path.join(orphan, ".ckptlab.lock"), "wb").close()
            for s in steps:
                shutil.copytree(os.path.join(own, "step_000000000001"), os.path.join(orphan, f"step_{s:012d}"))
        os.makedirs(os.path.join(directory, "rank_00003", ".step_000000000005.tmp-1-deadbeef"))
        two = gc.read_record(os.path.join(directory, "global", "step_000000000002.json"))
        gc.write_record(directory, gc.GlobalRecord(2, 4, two.parts + tuple(
            gc.PartIdentity(q, 0, 0) for q in (2, 3)), two.plan))
    dist.barrier()
    for step, name in ((3, "shrunk_after_3"), (4, "shrunk_after_4")):
        with open_checkpointer("pccheck", directory, config(keep_last=2)) as ck:
            ck.save(step, state_of(model, opt, step))
        dist.barrier()  # both ranks' retention is done (close joined the coordinator)
        r[name] = {q: _listing(os.path.join(directory, f"rank_{q:05d}")) for q in (0, 2, 3)}


class Loader:
    """A user's data loader whose state_dict() marks its position as the rank's own."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.loaded = None

    def state_dict(self) -> dict:
        return {"position": per_rank(self.position), "order": [3, 1, 2]}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state


def per_rank_inside_a_stateful(rank: int, directory: str, r: dict) -> None:
    with open_checkpointer("pccheck", directory, config()) as ck:
        ck.save(1, {"loader": Loader(100 + rank), "weights": torch.ones(3)})
        ck.wait()
        loader = Loader(0)
        ck.load({"loader": loader, "weights": torch.zeros(3)})
    r["stateful_per_rank_loaded"] = loader.loaded


def kill_main(rank: int, world: int, init_file: str, directory: str, out: str) -> None:
    """Step 1 commits; rank 1 then sits inside its step-2 write (a fault-spec delay) until the
    test SIGKILLs it; rank 0 records the error it gets."""
    init(rank, world, init_file)
    model, opt = make_training()
    faults = "point=before_data_fsync,step=2,action=delay=120000" if rank == 1 else ""
    r: dict = {}
    ck = open_checkpointer("pccheck", directory, config(coordination_timeout_s=8.0, faults=faults))
    train_step(model, opt, rank)
    ck.save(1, state_of(model, opt, 1))
    ck.wait()
    train_step(model, opt, rank)
    t0 = time.monotonic()
    ck.save(2, state_of(model, opt, 2))
    r["error"] = error_of(ck.wait)
    r["error_after_s"] = time.monotonic() - t0
    write(out, "kill", rank, r)
    os._exit(0)  # the group lost a member: no orderly teardown


def relaunch_main(rank: int, world: int, init_file: str, directory: str, out: str) -> None:
    init(rank, world, init_file)
    with open_checkpointer("pccheck", directory, config()) as ck:
        r = {"latest": ck.latest().step}
        step, loaded = ck.load()
        r.update(loaded_step=step, data=loaded["data"])
    write(out, "relaunch", rank, r)


def torchrun_load() -> None:
    """Under torchrun: load a checkpoint saved by another world size (the replicated state;
    rank 0's per-rank entries, asked for explicitly) and also see the error without asking."""
    directory, out = sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    r: dict = {"world": dist.get_world_size()}
    with open_checkpointer("pccheck", directory, config()) as ck:
        r["without_per_rank_of"] = error_of(ck.load)
        step, loaded = ck.load(per_rank_of=0)
        r["step"] = step
        r["params"] = [loaded["model"][k].flatten().tolist() for k in sorted(loaded["model"])]
        r["data"] = loaded["data"]
    write(out, "torchrun", rank, r)
    dist.destroy_process_group()


if __name__ == "__main__":
    {"load": torchrun_load}[sys.argv[1]]()
