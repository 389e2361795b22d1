"""FSDP2 (fully_shard) / DTensor state in multi-rank checkpoints (core/sharded.py): each rank
writes its local shards with their global offsets; one 2-rank gloo world serves every test."""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.multiprocessing as mp

from ckptlab.core import load_global

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fsdp_worker  # noqa: E402  (the ranks' code; spawn re-imports it from sys.path)


@pytest.fixture(scope="module")
def fsdp_world(tmp_path_factory):
    base = tmp_path_factory.mktemp("fsdp")
    directory, out = str(base / "ckpt"), str(base / "out")
    os.makedirs(out)
    mp.spawn(fsdp_worker.main, args=(2, str(base / "init"), directory, out), nprocs=2, join=True)
    return directory, [torch.load(os.path.join(out, f"fsdp_rank{r}.pt"), weights_only=True) for r in range(2)]


def test_fsdp2_model_and_adam_round_trip_bit_exact(fsdp_world):
    _, ranks = fsdp_world
    for r in ranks:
        assert r["loaded_step"] == 2
        assert r["loaded_types"] == ["DTensor", "Tensor"], "Adam's moments load back as DTensors"
        assert r["saved"].keys() == r["loaded"].keys()
        for name, t in r["saved"].items():
            assert torch.equal(t, r["loaded"][name]), f"local shard {name} differs after load"
        a, b = r["losses_after"]
        assert a == b, "a step after loading differs from a step of the original"
    assert not torch.equal(ranks[0]["saved"]["param/0.weight"], ranks[1]["saved"]["param/0.weight"])


def test_each_rank_part_holds_its_own_shards(fsdp_world):
    _, ranks = fsdp_world
    total = ranks[0]["state_bytes"]
    parts = [r["part_tensor_bytes"] for r in ranks]
    for p in parts:  # the shards plus a share of Adam's replicated step counters
        assert 0.4 * total < p < 0.6 * total, f"parts {parts} of {total}: not ~1/2 each"
    assert total <= sum(parts) < total + 64, f"parts {parts}: not one copy of {total} bytes (+ step counters)"


def test_mismatched_model_is_refused_and_left_unchanged(fsdp_world):
    _, ranks = fsdp_world
    for r in ranks:
        assert r["mismatch_error"] and "0.weight" in r["mismatch_error"], r["mismatch_error"]
        assert r["unchanged_after_mismatch"]


def test_one_process_reshards_to_full_tensors(fsdp_world):
    directory, ranks = fsdp_world
    step, loaded = load_global(directory, per_rank_of=0)
    assert step == 2
    for name, full in ranks[0]["full"].items():
        assert torch.equal(loaded["model"][name], full), f"{name} assembled from both ranks' shards differs"
