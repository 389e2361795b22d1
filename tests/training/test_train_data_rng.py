"""Synthetic data, the O(1) resumable sampler and the RNG bundle."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from ckptlab.training.data import ResumableSampler, SyntheticTokens
from ckptlab.training.rng import RNGState

DATA = SyntheticTokens(vocab_size=256, seq_len=32, seed=7)


def test_samples_are_a_pure_function_of_seed_and_index() -> None:
    assert np.array_equal(DATA.sample(5), SyntheticTokens(256, 32, 7).sample(5))
    assert not np.array_equal(DATA.sample(5), DATA.sample(6))
    assert not np.array_equal(DATA.sample(5), SyntheticTokens(256, 32, 8).sample(5))
    tokens = DATA.sample(123)
    assert tokens.shape == (33,) and tokens.min() >= 0 and tokens.max() < 256


def test_targets_are_inputs_shifted_by_one() -> None:
    inputs, targets = DATA.batch([0, 1])
    assert inputs.shape == targets.shape == (2, 32)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_sampler_restores_in_o1_from_its_state() -> None:
    a = ResumableSampler(DATA, batch_size=3, epoch_size=16)
    for _ in range(7):  # crosses an epoch boundary (21 samples > 16)
        a.next_batch()
    state = a.state_dict()
    assert set(state) == {"epoch", "index", "seed"} and state["epoch"] == 1
    b = ResumableSampler(DATA, batch_size=3, epoch_size=16)
    b.load_state_dict(state)
    for _ in range(5):
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_each_epoch_visits_every_sample_once_in_a_new_order() -> None:
    sampler = ResumableSampler(DATA, batch_size=4, epoch_size=16)
    epoch0 = [i for _ in range(4) for i in sampler.next_ids()]
    epoch1 = [i - 16 for _ in range(4) for i in sampler.next_ids()]
    assert sorted(epoch0) == sorted(epoch1) == list(range(16))
    assert epoch0 != epoch1


def test_sampler_refuses_state_of_another_seed() -> None:
    sampler = ResumableSampler(DATA, batch_size=2)
    with pytest.raises(ValueError, match="seed"):
        sampler.load_state_dict({"epoch": 0, "index": 0, "seed": 8})


def _draws() -> tuple:
    return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())


def test_rng_state_round_trips_every_generator() -> None:
    random.gauss(0, 1)  # leaves a cached gauss value in the python state
    rng = RNGState()
    state = rng.state_dict()
    first = _draws()
    _draws()
    rng.load_state_dict(state)
    assert _draws() == first


def test_rng_state_survives_weights_only_torch_load() -> None:
    state = RNGState().state_dict()
    first = _draws()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    RNGState().load_state_dict(torch.load(buf, weights_only=True))
    assert _draws() == first


def test_rng_state_of_the_earlier_tensor_format_still_loads() -> None:
    """Checkpoints written before 2026-12-03 hold Python's words and NumPy's key as int64 tensors."""
    state = RNGState().state_dict()
    first = _draws()
    old = {**state,
           "python": {**state["python"], "internal": torch.tensor(state["python"]["internal"], dtype=torch.int64)},
           "numpy": {**state["numpy"],
                     "key": torch.from_numpy(np.frombuffer(state["numpy"]["key"], dtype="<u4").astype(np.int64))}}
    RNGState().load_state_dict(old)
    assert _draws() == first


def test_rng_state_holds_plain_values_a_save_can_pickle_later() -> None:
    state = RNGState().state_dict()
    assert type(state["python"]["internal"]) is tuple and len(state["python"]["internal"]) == 625
    assert type(state["numpy"]["key"]) is bytes and len(state["numpy"]["key"]) == 624 * 4
