"""One rank of the FSDP2 / DTensor multi-rank tests (tests/core/test_distributed_fsdp.py),
started with torch.multiprocessing; writes what it saw to OUT/fsdp_rank<R>.pt."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from ckptlab.core import CheckpointConfig, CheckpointMismatchError, open_checkpointer, per_rank
from ckptlab.core.recovery import read_manifest


def config() -> CheckpointConfig:
    return CheckpointConfig(writer_threads=1, chunk_bytes=64 << 10, reader_threads=1, keep_last=0,
                            coordination_timeout_s=20.0)


def make_training(mesh, seed: int, hidden: int = 96):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(33, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 7))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def train_step(model, opt, rank: int, step: int) -> float:
    torch.manual_seed(1000 * step + rank)
    opt.zero_grad()
    loss = model(torch.randn(5, 33)).square().mean()
    loss.backward()
    opt.step()
    return loss.item()


def local_state(model, opt) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        out[f"param/{name}"] = p.to_local().detach().clone()
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"{key}/{name}"] = opt.state[p][key].to_local().clone()
    return out


def main(rank: int, world: int, init_file: str, directory: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    model, opt = make_training(mesh, seed=0)
    r: dict = {}
    for step in (1, 2):
        train_step(model, opt, rank, step)
    with open_checkpointer("pccheck", directory, config()) as ck:
        ck.save(2, {"model": model, "optim": opt, "rng": per_rank(torch.get_rng_state())})
        ck.wait()
        r["saved"] = local_state(model, opt)
        r["full"] = {n: p.full_tensor() for n, p in model.named_parameters()}
        m = read_manifest(os.path.join(directory, f"rank_{rank:05d}", "step_000000000002"))
        r["part_tensor_bytes"] = sum(t.nbytes for t in m.tensors if not t.name.startswith("per_rank/"))
        r["state_bytes"] = sum(p.numel() * p.element_size() * 3 for p in model.parameters())  # param, 2 moments

        fresh, fresh_opt = make_training(mesh, seed=7)
        step, _ = ck.load({"model": fresh, "optim": fresh_opt, "rng": None})
        r["loaded_step"] = step
        r["loaded"] = local_state(fresh, fresh_opt)
        r["loaded_types"] = sorted({type(v).__name__ for s in fresh_opt.state.values() for v in s.values()})
        r["losses_after"] = [train_step(model, opt, rank, 3), train_step(fresh, fresh_opt, rank, 3)]

        other, other_opt = make_training(mesh, seed=7, hidden=80)
        before = local_state(other, other_opt) if other_opt.state else {n: p.to_local().clone()
                                                                          for n, p in other.named_parameters()}
        try:
            ck.load({"model": other, "optim": other_opt, "rng": None})
            r["mismatch_error"] = None
        except CheckpointMismatchError as e:
            r["mismatch_error"] = str(e)
        r["unchanged_after_mismatch"] = all(torch.equal(before[n], p.to_local()) for n, p in other.named_parameters())
    torch.save(r, os.path.join(out, f"fsdp_rank{rank}.pt"))
    dist.destroy_process_group()
