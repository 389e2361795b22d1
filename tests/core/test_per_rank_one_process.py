"""``per_rank`` markers where there is one rank (no torch.distributed): the entry is the
process's own and every kind saves its plain value, at the top, nested, and inside what a
stateful object's ``state_dict()`` returns. Before, pccheck and torchsave refused the marker
as an unsafe pickle and DCP wrote a checkpoint that could not be loaded."""
from __future__ import annotations

import warnings

import pytest
import torch

from ckptlab.core import CheckpointConfig, open_checkpointer, per_rank
from ckptlab.core.state import without_per_rank


class Loader:
    """A data loader of the user's: its position is its rank's own."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.loaded: dict | None = None

    def state_dict(self) -> dict:
        return {"position": per_rank(self.position), "seen": [per_rank(torch.arange(3) + self.position), 2]}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state


@pytest.mark.parametrize("kind, config", [
    ("pccheck", CheckpointConfig()), ("pccheck", CheckpointConfig(snapshot="deferred")),
    ("torchsave", CheckpointConfig()), ("dcp", CheckpointConfig()), ("dcp-async", CheckpointConfig())])
def test_every_kind_saves_the_plain_values_of_per_rank_entries(tmp_path, kind, config):
    rng = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP's own warnings about a process group
        with open_checkpointer(kind, tmp_path / "ckpt", config) as ck:
            ck.save(1, {"rng": per_rank(rng), "weights": torch.ones(4), "data": {"epochs": [per_rank(5), 6]},
                        "loader": Loader(7)})
            ck.save(2, {"rng": per_rank(rng), "weights": torch.ones(4), "data": {"epochs": [per_rank(5), 6]},
                        "loader": Loader(7)})
            ck.wait()
            loader = Loader(0)
            step, loaded = ck.load({"rng": None, "weights": torch.zeros(4), "data": None, "loader": loader})
    assert step == 2
    assert torch.equal(loaded["rng"], rng) and torch.equal(loaded["weights"], torch.ones(4))
    assert loaded["data"] == {"epochs": [5, 6]}
    assert loader.loaded is not None and loader.loaded["position"] == 7
    assert torch.equal(loader.loaded["seen"][0], torch.arange(3) + 7) and loader.loaded["seen"][1] == 2


def test_without_per_rank_copies_only_where_a_marker_is():
    plain = {"a": [1, (2, 3)], "b": {"c": "d"}}
    assert without_per_rank(plain) is plain
    marked = {"a": [1, (per_rank(2), 3)], "b": plain["b"]}
    out = without_per_rank(marked)
    assert out == {"a": [1, (2, 3)], "b": {"c": "d"}} and out["b"] is plain["b"]
    assert isinstance(out["a"][1], tuple) and marked["a"][1][0] == per_rank(2)  # the input is untouched
