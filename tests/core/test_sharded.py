"""core/sharded.py in one process: shard boxes follow torch.chunk, and any saved tiling
reassembles into any other (the resharding a load on another world size does)."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptlab.core.sharded import ShardMeta, assemble, local_box


def pieces_of(full: torch.Tensor, world: int, dim: int) -> list[tuple[ShardMeta, torch.Tensor]]:
    out = []
    for rank in range(world):
        offsets, shape = local_box(tuple(full.shape), (world,), (rank,), (f"S{dim}",))
        piece = full.narrow(dim, offsets[dim], shape[dim])
        out.append((ShardMeta("w", "float32", tuple(full.shape), (world,), (f"S{dim}",), offsets, shape), piece))
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 13), k=st.integers(1, 5))
def test_boxes_match_torch_chunk(n, k):
    chunks = torch.arange(n).chunk(k) if n else ()
    sizes = [local_box((n,), (k,), (c,), ("S0",))[1][0] for c in range(k)]
    assert sizes[:len(chunks)] == [len(c) for c in chunks] and sum(sizes) == n


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 11), cols=st.integers(1, 4), saved=st.integers(1, 4), loaded=st.integers(1, 4),
       dim=st.integers(0, 1))
def test_any_tiling_reassembles_into_any_other(rows, cols, saved, loaded, dim):
    full = torch.randn(rows, cols)
    pieces = pieces_of(full, saved, dim)
    for rank in range(loaded):
        offsets, shape = local_box((rows, cols), (loaded,), (rank,), (f"S{dim}",))
        got = assemble(pieces, offsets, shape, "<test>")
        assert torch.equal(got, full.narrow(dim, offsets[dim], shape[dim]))
    assert torch.equal(assemble(pieces, (0, 0), (rows, cols), "<test>"), full)


def test_a_missing_piece_is_corruption():
    import pytest

    from ckptlab.core.errors import CorruptCheckpointError

    pieces = pieces_of(torch.randn(6, 2), 3, 0)
    with pytest.raises(CorruptCheckpointError, match="cover 8 of the 12 elements"):
        assemble(pieces[:2], (0, 0), (6, 2), "<test>")
