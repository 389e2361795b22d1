"""Save/load round trips: bit-exact, every dtype, live objects restored in place."""
import copy

import numpy as np
import pytest
import torch

from ckptlab.core import (
    CheckpointConfig,
    CheckpointError,
    CheckpointMismatchError,
    UnsafePickleError,
    load_latest,
    open_checkpointer,
)

KINDS = ["pccheck", "torchsave"]
SMALL = CheckpointConfig(chunk_bytes=64 * 1024, writer_threads=3, max_inflight=2)


def make_training_objects(seed: int, dtype=torch.float32):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(37, 64), torch.nn.GELU(), torch.nn.Linear(64, 11)).to(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        loss = model(torch.randn(8, 37, dtype=dtype)).float().pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def states_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_optimizer_scheduler_round_trip_is_bit_exact(kind, dtype, ckpt_dir):
    model, opt, sched = make_training_objects(0, dtype)
    expected = copy.deepcopy({"model": model.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict()})
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.RandomState(3).get_state(), "python": (3, (1, 2), None)}
    with open_checkpointer(kind, ckpt_dir, SMALL) as ck:
        ck.save(7, {"model": model, "optim": opt, "sched": sched, "rng": rng, "extra": {"step": 7}})
        ck.wait()

    model2, opt2, sched2 = make_training_objects(1, dtype)  # different values, same shapes
    with open_checkpointer(kind, ckpt_dir, SMALL) as ck:
        step, loaded = ck.load({"model": model2, "optim": opt2, "sched": sched2, "rng": None, "extra": {}})
    assert step == 7
    assert states_equal(model2.state_dict(), expected["model"])
    assert states_equal(opt2.state_dict(), expected["optim"])
    assert sched2.state_dict() == expected["sched"]
    assert states_equal(loaded["rng"]["numpy"], rng["numpy"])
    assert torch.equal(loaded["rng"]["torch"], rng["torch"])
    assert loaded["extra"] == {"step": 7}


@pytest.mark.parametrize("kind", KINDS)
def test_every_dtype_and_layout_round_trips(kind, ckpt_dir):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(6, 10, generator=g)
    state = {
        "f64": base.double(), "f16": base.half(), "bf16": base.bfloat16(), "c64": torch.complex(base, base * 2),
        "i8": (base * 50).to(torch.int8), "u8": (base * 50).abs().to(torch.uint8), "i64": (base * 1e6).long(),
        "bool": base > 0, "noncontig": base.t(), "sliced": base[::2, 3:7], "empty": torch.empty(0, 5),
        "scalar": torch.tensor(3.5), "expanded": torch.arange(4.0).expand(3, 4),
        "f8": base.to(torch.float8_e4m3fn),
        "tuple": (1, "two", 3.0), "list": [base[0], {"deep": base[1]}],
    }
    with open_checkpointer(kind, ckpt_dir, SMALL) as ck:
        ck.save(1, state)
    step, loaded = load_latest(ckpt_dir)
    assert step == 1
    for k in state:
        if isinstance(state[k], torch.Tensor) and state[k].dtype == torch.float8_e4m3fn:
            assert torch.equal(loaded[k].view(torch.uint8), state[k].view(torch.uint8))
        else:
            assert states_equal(loaded[k], state[k]), k
    for k in ("noncontig", "sliced", "expanded"):  # views come back as views, as from torch.load
        assert loaded[k].stride() == state[k].stride(), k


def test_save_snapshots_cpu_tensors_before_returning(ckpt_dir):
    """Training may mutate the state right after save(): the checkpoint keeps the old values."""
    t = torch.arange(1 << 18, dtype=torch.float32)
    expected = t.clone()
    cfg = SMALL.replace(max_inflight=4)
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        ck.save(1, {"t": t})
        t.mul_(-1)  # mutate immediately, while the writers are still persisting
        ck.wait()
    _, loaded = load_latest(ckpt_dir)
    assert torch.equal(loaded["t"], expected)


def test_large_state_through_small_staging_pool(ckpt_dir):
    """State 8x larger than staging: save() waits for writers (back-pressure) and stays exact."""
    t = torch.randn(2 << 20)  # 8 MiB
    cfg = CheckpointConfig(chunk_bytes=512 * 1024, staging_bytes=1 << 20, writer_threads=2)
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        ck.save(3, {"t": t})
        assert ck.engine.staging_region[1] == 1 << 20
        ck.wait()
    assert torch.equal(load_latest(ckpt_dir)[1]["t"], t)


def test_mismatched_shape_is_refused_naming_the_tensor_and_changes_nothing(ckpt_dir):
    model, opt, _ = make_training_objects(0)
    with open_checkpointer("pccheck", ckpt_dir, SMALL) as ck:
        ck.save(1, {"model": model})
    other = torch.nn.Sequential(torch.nn.Linear(37, 65), torch.nn.GELU(), torch.nn.Linear(65, 11))
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(CheckpointMismatchError, match=r"tensor 'model/0.weight': checkpoint has float32\[64, 37\]"):
        load_latest(ckpt_dir, {"model": other})
    assert states_equal(other.state_dict(), before)


def test_mismatched_dtype_is_refused(ckpt_dir):
    with open_checkpointer("pccheck", ckpt_dir, SMALL) as ck:
        ck.save(1, {"w": torch.zeros(4, dtype=torch.bfloat16)})
    target = {"w": torch.ones(4)}
    with pytest.raises(CheckpointMismatchError, match="bfloat16"):
        load_latest(ckpt_dir, target)
    assert torch.equal(target["w"], torch.ones(4))


def test_missing_model_keys_are_refused(ckpt_dir):
    with open_checkpointer("pccheck", ckpt_dir, SMALL) as ck:
        ck.save(1, {"model": torch.nn.Linear(3, 3)})
    with pytest.raises(CheckpointMismatchError, match="keys differ"):
        load_latest(ckpt_dir, {"model": torch.nn.Sequential(torch.nn.Linear(3, 3))})


def test_plain_tensor_target_is_restored_in_place(ckpt_dir):
    src = torch.randn(10)
    with open_checkpointer("pccheck", ckpt_dir, SMALL) as ck:
        ck.save(2, {"w": src, "meta": {"lr": 0.1}})
    target = {"w": torch.zeros(10), "meta": {}}
    w = target["w"]
    load_latest(ckpt_dir, target)
    assert target["w"] is w and torch.equal(w, src)
    assert target["meta"] == {"lr": 0.1}


class NotAllowed:
    def __eq__(self, other):
        return isinstance(other, NotAllowed)


def test_unknown_pickled_type_fails_at_save_not_after_a_crash(ckpt_dir):
    with open_checkpointer("pccheck", ckpt_dir, SMALL) as ck:
        with pytest.raises(UnsafePickleError, match="NotAllowed"):
            ck.save(1, {"x": NotAllowed()})
    cfg = SMALL.replace(allow_pickle=(f"{__name__}.NotAllowed",))
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        ck.save(1, {"x": NotAllowed()})
    assert load_latest(ckpt_dir, allow_pickle=cfg.allow_pickle)[1]["x"] == NotAllowed()


def test_unpicklable_leaf_is_a_clear_error(ckpt_dir):
    with open_checkpointer("pccheck", ckpt_dir, SMALL) as ck:
        with pytest.raises(CheckpointError, match="cannot be pickled"):
            ck.save(1, {"f": lambda: 1})


@pytest.mark.parametrize("kind", KINDS)
def test_steps_must_increase_and_be_non_negative(kind, ckpt_dir):
    with open_checkpointer(kind, ckpt_dir, SMALL) as ck:
        with pytest.raises(ValueError):
            ck.save(-1, {"x": 1})
        if kind == "pccheck":
            ck.save(5, {"x": 1})
            with pytest.raises(CheckpointError, match="greater than the last saved step 5"):
                ck.save(5, {"x": 1})


def test_state_must_be_a_mapping(ckpt_dir):
    with open_checkpointer("pccheck", ckpt_dir, SMALL) as ck:
        with pytest.raises(TypeError, match="mapping"):
            ck.save(1, [torch.zeros(1)])


def test_saving_after_close_is_refused(ckpt_dir):
    ck = open_checkpointer("pccheck", ckpt_dir, SMALL)
    ck.close()
    with pytest.raises(RuntimeError, match="closed"):
        ck.save(1, {"x": 1})


def test_latest_and_explicit_step(ckpt_dir):
    cfg = SMALL.replace(keep_last=0)
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        assert ck.latest() is None
        for s in (10, 20, 30):
            ck.save(s, {"s": torch.tensor(s)})
        ck.wait()
        assert ck.latest().step == 30
        assert ck.load(step=20)[1]["s"].item() == 20
