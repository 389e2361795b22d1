"""A deferred save() leaves the pickling of a frozen skeleton (plain values only) to the
snapshot thread (core/state.py LiftedState): the values it holds are those at save(), whatever
training changes before the thread pickles them; a state with any other leaf is pickled in save()."""
import threading

import numpy as np
import pytest
import torch

from ckptlab.core import CheckpointConfig, load_latest, open_checkpointer
from ckptlab.core import state as state_module
from ckptlab.core.state import lift_state

CFG = CheckpointConfig(chunk_bytes=1 << 20, writer_threads=2, snapshot="deferred", keep_last=0,
                       allow_pickle=("numpy.ndarray",))


class Counters:
    """A user's object whose state_dict() hands out its own live dict and list."""

    def __init__(self) -> None:
        self.state = {"seen": 0, "history": [0], "name": "run"}

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


class Opaque:
    """Hashable by identity, yet its attributes can change after save()."""

    def __init__(self) -> None:
        self.value = 0


@pytest.fixture
def pickle_gate(monkeypatch):
    """Holds the snapshot thread before it pickles a frozen skeleton; records who pickled."""
    gate = threading.Event()
    pickled_by: list[str] = []
    real = state_module.LiftedState.skeleton

    def held(self):
        pickled_by.append(threading.current_thread().name)
        if threading.current_thread() is not threading.main_thread():
            assert gate.wait(30), "test never opened the pickle gate"
        return real(self)

    monkeypatch.setattr(state_module.LiftedState, "skeleton", held)
    return gate, pickled_by


def test_changes_before_the_thread_pickles_are_not_in_the_checkpoint(ckpt_dir, pickle_gate):
    gate, pickled_by = pickle_gate
    counters, w = Counters(), torch.ones(1 << 12)
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        gate.set()
        ck.save(1, {"c": counters, "w": w, "lr": 0.5})  # the first save pickles in save()
        ck.wait()
        gate.clear()
        counters.state["seen"] = 2
        counters.state["history"].append(2)
        ck.save(2, {"c": counters, "w": w, "lr": 0.25})
        counters.state["seen"] = 99  # in place, before the thread pickled step 2
        counters.state["history"].append(99)
        counters.state["name"] = "changed"
        gate.set()
        ck.wait()
    assert pickled_by == ["MainThread", "ckptlab-snapshot"], pickled_by  # step 2's pickle was the thread's
    fresh = Counters()
    load_latest(ckpt_dir, {"c": fresh}, step=2)
    assert fresh.state == {"seen": 2, "history": [0, 2], "name": "run"}


def test_a_table_keyed_by_tuples_is_pickled_by_the_thread_and_loads_back(ckpt_dir, pickle_gate):
    gate, pickled_by = pickle_gate
    gate.set()
    table = {(0, "q"): 1.5, (1, ("k", 2)): None}
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        for step in (1, 2):
            ck.save(step, {"table": dict(table), "w": torch.ones(8)})
            ck.wait()
    assert pickled_by == ["MainThread", "ckptlab-snapshot"], pickled_by
    assert load_latest(ckpt_dir, step=2)[1]["table"] == table


@pytest.mark.parametrize("leaf", [lambda: {1, 2}, lambda: np.arange(3), lambda: bytearray(b"ab")])
def test_a_state_with_another_leaf_is_pickled_in_save(ckpt_dir, pickle_gate, leaf):
    gate, pickled_by = pickle_gate
    gate.set()
    value = leaf()
    expected = type(value)(value) if not isinstance(value, np.ndarray) else value.copy()
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        ck.save(1, {"w": torch.ones(8), "x": value})
        ck.save(2, {"w": torch.ones(8), "x": value})
        if isinstance(value, set):
            value.add(3)
        else:
            value[0] = 7
        ck.wait()
    assert pickled_by == ["MainThread", "MainThread"]
    loaded = load_latest(ckpt_dir, step=2)[1]["x"]
    assert (loaded == expected).all() if isinstance(value, np.ndarray) else loaded == expected


def test_frozen_means_only_builtins_refs_and_plain_keys():
    assert lift_state({"a": {"b": [1, 2.0, "s", None, (3, b"x")]}, "t": torch.ones(2)}).frozen
    assert not lift_state({"a": {1, 2}}).frozen
    assert not lift_state({"a": np.float32(1.0)}).frozen
    assert lift_state({"a": {(1, ("x", None)): 3}}).frozen  # a tuple of plain values is as immutable as they are
    assert not lift_state({"a": {(1, Opaque()): 3}}).frozen  # a hashable tuple may still hold a mutable object
    assert not lift_state({"a": {frozenset({1}): 3}}).frozen
    assert not lift_state({"a": torch.device("cpu")}).frozen


def test_sequences_are_copied_whatever_they_hold():
    """A run of plain values is copied in one step, a mixed one walked; both stay the
    container they were, and the state's own lists are never the tree's."""
    words, history = tuple(range(625)), [1, 2.5, "x"]
    mixed = [0, torch.ones(1), (1, torch.zeros(2)), [3]]
    lifted = lift_state({"words": words, "history": history, "mixed": mixed})
    tree = lifted.tree
    assert tree["words"] == words and type(tree["words"]) is tuple
    assert tree["history"] == history and type(tree["history"]) is list and tree["history"] is not history
    assert [p for p, _ in lifted.tensors] == ["mixed/1", "mixed/2/1"]
    assert tree["mixed"][0] == 0 and type(tree["mixed"][2]) is tuple and tree["mixed"][3] == [3]
    assert tree["mixed"][3] is not mixed[3]
    assert [r.index for r in (tree["mixed"][1], tree["mixed"][2][1])] == [0, 1]
    assert lifted.frozen
    history.append(4)
    assert tree["history"] == [1, 2.5, "x"]


def test_tensor_refs_are_shared_and_right_when_threads_lift_at_once():
    state = {"t": [torch.ones(1) for _ in range(300)]}
    start = threading.Barrier(4)
    trees = []

    def lift():
        start.wait()
        trees.append(lift_state(state).tree)

    threads = [threading.Thread(target=lift) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for tree in trees:
        assert [r.index for r in tree["t"]] == list(range(300))
    assert all(a is b for a, b in zip(trees[0]["t"], trees[1]["t"]))
