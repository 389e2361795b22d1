"""Deterministic synthetic token data and a sampler that resumes in O(1).

Each sample is drawn from a counter-based generator (NumPy's Philox) keyed by the run's seed
and addressed by the sample's global id, so sample ``i`` is the same bytes whoever asks and
however many were drawn before. The sampler's whole state is ``{"epoch", "index", "seed"}``:
restoring it is three assignments, not replaying ``train_step`` batches as the seeds'
baseline did.

The tokens follow a noisy walk, ``x[t+1] = x[t] + delta (mod vocab)`` with small deltas most of
the time and a uniform jump otherwise, so the model has something to learn and the loss curve
falls visibly (the floor is the entropy of ``delta``, about 1.3 nats).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["SyntheticTokens", "ResumableSampler"]

_MASK64 = (1 << 64) - 1
# Step distribution of the walk: +1, +2, +3, +5 or a uniform jump.
_DELTAS = np.array([1, 2, 3, 5], dtype=np.int64)
_DELTA_CDF = np.cumsum([0.55, 0.2, 0.1, 0.07])  # the remaining 0.08 is a uniform jump


def _mix64(*words: int) -> int:
    """SplitMix64 over several words: a stable hash (Python's ``hash`` is salted)."""
    h = 0x9E3779B97F4A7C15
    for w in words:
        h = (h ^ (w & _MASK64)) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h


@dataclass(frozen=True)
class SyntheticTokens:
    """Sample ``i`` is a LongTensor of ``seq_len + 1`` tokens, a pure function of (seed, i)."""

    vocab_size: int
    seq_len: int
    seed: int

    def sample(self, sample_id: int) -> np.ndarray:
        # The sample id sits in the second counter word; draws advance the first, so the
        # streams of different samples never overlap.
        gen = np.random.Generator(np.random.Philox(key=[self.seed & _MASK64, 0x636B70746C6162],
                                                   counter=[0, sample_id, 0, 0]))
        n = self.seq_len + 1
        u = gen.random(n - 1)
        jumps = gen.integers(0, self.vocab_size, size=n - 1)
        choice = np.searchsorted(_DELTA_CDF, u, side="right")
        steps = np.where(choice < len(_DELTAS), _DELTAS[np.minimum(choice, len(_DELTAS) - 1)],
                         jumps)
        start = gen.integers(0, self.vocab_size)
        walk = np.concatenate(([start], start + np.cumsum(steps)))
        return walk % self.vocab_size

    def batch(self, sample_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each [len(sample_ids), seq_len], targets shifted by one."""
        tokens = torch.from_numpy(np.stack([self.sample(i) for i in sample_ids]))
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


class ResumableSampler:
    """Hands out batches in a per-epoch shuffled order; state is (epoch, index, seed).

    The shuffle is an affine bijection ``i -> (a*i + b) mod epoch_size`` over a power-of-two
    epoch with ``a`` odd, keyed by (seed, epoch), so any position is reached in O(1).

    Under DDP rank ``r`` of ``world_size`` takes the epoch's positions ``r, r + W, r + 2W, ...``:
    disjoint shards of the same shuffled order, each rank's position (``index``) its own
    (saved per rank). One rank of one is the unsharded sampler, unchanged.
    """

    def __init__(self, data: SyntheticTokens, batch_size: int,
                 epoch_size: int = 1 << 20, rank: int = 0, world_size: int = 1) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if epoch_size <= 0 or epoch_size & (epoch_size - 1):
            raise ValueError(f"epoch_size must be a power of two, got {epoch_size}")
        if not 0 <= rank < world_size or world_size > epoch_size:
            raise ValueError(f"rank {rank} of world size {world_size} does not fit an epoch of {epoch_size}")
        self.data, self.batch_size, self.epoch_size = data, batch_size, epoch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.epoch, self.index = data.seed, 0, 0

    def _sample_id(self, epoch: int, index: int) -> int:
        key = _mix64(self.seed, epoch)
        a, b = (key | 1) % self.epoch_size, (key >> 32) % self.epoch_size
        return epoch * self.epoch_size + (a * index + b) % self.epoch_size

    def next_ids(self) -> list[int]:
        ids = []
        for _ in range(self.batch_size):
            ids.append(self._sample_id(self.epoch, self.index * self.world_size + self.rank))
            self.index += 1
            if (self.index * self.world_size + self.rank) >= self.epoch_size:
                self.epoch, self.index = self.epoch + 1, 0
        return ids

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.batch(self.next_ids())

    def state_dict(self) -> dict[str, int]:
        state = {"epoch": self.epoch, "index": self.index, "seed": self.seed}
        if self.world_size > 1:  # a shard's position means nothing to another rank
            state.update(rank=self.rank, world_size=self.world_size)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, index, seed = (int(state["epoch"]), int(state["index"]), int(state["seed"]))
        if seed != self.data.seed:
            raise ValueError(f"sampler state is for data seed {seed}, this run's data uses "
                             f"seed {self.data.seed}")
        shard = (int(state.get("rank", 0)), int(state.get("world_size", 1)))
        if shard != (self.rank, self.world_size):
            raise ValueError(f"sampler state is rank {shard[0]}'s of {shard[1]}, this sampler is rank "
                             f"{self.rank}'s of {self.world_size}")
        if not (0 <= index * self.world_size + self.rank < self.epoch_size and epoch >= 0):
            raise ValueError(f"sampler state out of range: epoch {epoch}, index {index} "
                             f"(epoch size {self.epoch_size})")
        self.epoch, self.index, self.seed = epoch, index, seed
