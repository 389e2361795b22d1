"""DTensor entries of a multi-rank state (FSDP2 ``fully_shard`` parameters and their
optimizer state, tensor-parallel weights): written as each rank's local shard plus where it
lies in the global tensor, so nothing is written twice and any layout can be read back.

Loading assembles the shard a rank needs from the overlapping saved pieces, in the layout of
the live DTensor it loads into (its mesh and placements), so a checkpoint written on N ranks
loads on M (resharding); with no DTensor to load into, the full global tensor is assembled.
Format: docs/FORMAT.md, "Multi-rank"; rules: docs/DISTRIBUTED.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.tensor import DTensor, Replicate, Shard

from ckptlab.core.errors import CheckpointError, CheckpointMismatchError, CorruptCheckpointError
from ckptlab.core.state import dtype_from_name, dtype_name

REPLICATE = "R"


def is_dtensor(t: Any) -> bool:
    return isinstance(t, DTensor)


@dataclass(frozen=True)
class ShardMeta:
    """One saved piece of a DTensor: the global tensor's shape and dtype, the mesh and
    placements it was saved from, and the piece's box (offsets and shape) in the global tensor."""

    path: str
    dtype: str
    global_shape: tuple[int, ...]
    mesh_shape: tuple[int, ...]
    placements: tuple[str, ...]  # "S<dim>" (Shard) or "R" (Replicate), one per mesh dimension
    offsets: tuple[int, ...]
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "dtype": self.dtype, "global_shape": list(self.global_shape),
                "mesh_shape": list(self.mesh_shape), "placements": list(self.placements),
                "offsets": list(self.offsets), "shape": list(self.shape)}

    @staticmethod
    def from_json(d: dict[str, Any], source: str) -> ShardMeta:
        try:
            return ShardMeta(str(d["path"]), str(d["dtype"]), tuple(int(x) for x in d["global_shape"]),
                             tuple(int(x) for x in d["mesh_shape"]), tuple(str(p) for p in d["placements"]),
                             tuple(int(x) for x in d["offsets"]), tuple(int(x) for x in d["shape"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptCheckpointError(source, f"shard record does not decode: {type(e).__name__}: {e}") from None


def placement_names(placements: Any, path: str) -> tuple[str, ...]:
    """Shard(d) and Replicate only: a Partial tensor is not a value yet (reduce it first), and
    strided shards (FSDP2 over TP) lie in the global tensor in a way this format does not record."""
    names = []
    for p in placements:
        if type(p) is Shard:
            names.append(f"S{p.dim}")
        elif type(p) is Replicate:
            names.append(REPLICATE)
        else:
            raise CheckpointError(f"tensor {path!r}: DTensor placement {p} is not supported "
                                  f"(Shard and Replicate only)")
    return tuple(names)


def to_placements(names: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(Replicate() if n == REPLICATE else Shard(int(n[1:])) for n in names)


def local_box(global_shape: tuple[int, ...], mesh_shape: tuple[int, ...], coordinate: tuple[int, ...],
              placements: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(offsets, shape) of the shard at ``coordinate`` of the mesh: each Shard(d) mesh
    dimension splits dimension d as torch.chunk does (pieces of ceil(n/k), the last ones
    shorter or empty), mesh dimensions in order."""
    offsets, shape = [0] * len(global_shape), list(global_shape)
    for mesh_dim, name in enumerate(placements):
        if name == REPLICATE:
            continue
        d, k, c = int(name[1:]), mesh_shape[mesh_dim], coordinate[mesh_dim]
        chunk = -(-shape[d] // k)
        start = min(c * chunk, shape[d])
        offsets[d] += start
        shape[d] = max(0, min(chunk, shape[d] - start))
    return tuple(offsets), tuple(shape)


def shard_of(path: str, t: DTensor) -> tuple[ShardMeta, torch.Tensor] | None:
    """This rank's piece of ``t`` to write, or None where it is a replica another rank writes
    (the one at coordinate 0 of every Replicate mesh dimension)."""
    mesh = t.device_mesh
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        return None
    names = placement_names(t.placements, path)
    if any(n == REPLICATE and c != 0 for n, c in zip(names, coordinate)):
        return None
    offsets, shape = local_box(tuple(t.shape), tuple(mesh.shape), tuple(coordinate), names)
    local = t.to_local().detach()
    if tuple(local.shape) != shape:
        raise CheckpointError(f"tensor {path!r}: the local shard is {list(local.shape)}, torch.chunk sharding of "
                              f"{list(t.shape)} over mesh {list(mesh.shape)} with {list(names)} gives {list(shape)}")
    meta = ShardMeta(path, dtype_name(t.dtype), tuple(t.shape), tuple(mesh.shape), names, offsets, shape)
    return meta, local


def assemble(pieces: list[tuple[ShardMeta, torch.Tensor]], offsets: tuple[int, ...], shape: tuple[int, ...],
             source: str) -> torch.Tensor:
    """The box (offsets, shape) of the global tensor, copied from the saved pieces that overlap it."""
    first = pieces[0][0]
    out = torch.empty(shape, dtype=dtype_from_name(first.dtype), device=pieces[0][1].device)  # where the parts were read
    covered = 0
    for meta, piece in pieces:
        lo = [max(a, b) for a, b in zip(offsets, meta.offsets)]
        hi = [min(a + n, b + m) for a, n, b, m in zip(offsets, shape, meta.offsets, meta.shape)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        src = piece[tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, meta.offsets))]
        out[tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, offsets))] = src
        covered += math.prod(h - l for l, h in zip(lo, hi))
    if covered != math.prod(shape):
        raise CorruptCheckpointError(source, f"tensor {first.path!r}: the saved shards cover {covered} of the "
                                             f"{math.prod(shape)} elements needed")
    return out


def choose_mesh(meta: ShardMeta, target: Any, meshes: list[Any]) -> tuple[Any, tuple[str, ...]] | None:
    """The mesh and placements to load ``meta``'s tensor into: those of the live DTensor at its
    path, else the one mesh of the target's DTensors (a fresh optimizer has no state to
    match); None when the target holds no DTensor (the full tensor is loaded)."""
    if is_dtensor(target):
        return target.device_mesh, placement_names(target.placements, meta.path)
    if not meshes:
        return None
    fits = [m for m in meshes if m.ndim == len(meta.placements)]
    if len(fits) > 1:
        fits = [m for m in fits if tuple(m.shape) == meta.mesh_shape] or fits
    if len(fits) != 1:
        raise CheckpointMismatchError(f"tensor {meta.path!r}: saved as a DTensor on mesh {list(meta.mesh_shape)}; "
                                      f"the target has {len(meshes)} device meshes and no DTensor at this path to "
                                      f"say which to load it into")
    return fits[0], meta.placements


def load_sharded(pieces: list[tuple[ShardMeta, torch.Tensor]], target: Any, meshes: list[Any],
                 source: str) -> torch.Tensor:
    """The tensor to restore from a DTensor's saved pieces: this rank's shard as a DTensor in
    the target's layout (any world size), or the full tensor where there is no layout."""
    meta = pieces[0][0]
    if is_dtensor(target) and (tuple(target.shape) != meta.global_shape or dtype_name(target.dtype) != meta.dtype):
        raise CheckpointMismatchError(f"tensor {meta.path!r}: checkpoint has {meta.dtype}{list(meta.global_shape)}, "
                                      f"the target is {dtype_name(target.dtype)}{list(target.shape)}")
    chosen = choose_mesh(meta, target, meshes)
    if chosen is None:
        return assemble(pieces, (0,) * len(meta.global_shape), meta.global_shape, source)
    mesh, names = chosen
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        raise CheckpointMismatchError(f"tensor {meta.path!r}: this rank is not in the target's device mesh")
    offsets, shape = local_box(meta.global_shape, tuple(mesh.shape), tuple(coordinate), names)
    local = assemble(pieces, offsets, shape, source)
    if mesh.device_type != "cpu":
        local = local.to(mesh.device_type)
    stride = torch.empty(meta.global_shape, device="meta").stride()
    return DTensor.from_local(local, mesh, to_placements(names), run_check=False, shape=torch.Size(meta.global_shape),
                              stride=stride)
