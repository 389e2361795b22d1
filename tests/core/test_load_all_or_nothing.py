"""Loads are all or nothing: a checkpoint that does not fit the objects it is loaded into
(param groups, another optimizer or scheduler class, state shapes, list lengths, a user
object that refuses its state) raises and leaves every tensor of the model and optimizer
byte-identical. Tested with Hugging Face models, optimizers and schedulers built from tiny
configs (no downloads), through every load path (ckptlab format: pccheck, torchsave; DCP)."""
from __future__ import annotations

import hashlib
from typing import Any

import pytest
import torch

from ckptlab.core import CheckpointConfig, CheckpointMismatchError, open_checkpointer

transformers = pytest.importorskip("transformers")

# pccheck and torchsave share one load path (core/recovery.py), dcp has its own: the default
# run covers both paths, -m slow adds pccheck (its engine-written checkpoints)
KINDS = [pytest.param("pccheck", marks=pytest.mark.slow), "torchsave", "dcp"]
FORMAT_KINDS = [pytest.param("pccheck", marks=pytest.mark.slow), "torchsave"]
CONFIG = CheckpointConfig(max_inflight=1, writer_threads=1, chunk_bytes=64 * 1024, staging_bytes=16 << 20,
                          keep_last=0, io_mode="buffered")


def gpt2(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=64,
                                 bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def llama(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                   num_attention_heads=2, num_key_value_heads=1, vocab_size=64,
                                   max_position_embeddings=16)
    return transformers.LlamaForCausalLM(cfg)


def decay_groups(model: torch.nn.Module, weight_decay: float = 0.01, move: int = 0) -> list[dict[str, Any]]:
    """Hugging Face Trainer's split: no weight decay for biases and norms. `move` puts that
    many decayed parameters into the no-decay group instead."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    no_decay, decay = no_decay + decay[:move], decay[move:]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, steps: int = 2, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, 64, (2, 8), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad()


def hf_run(seed: int = 0, groups: int = 2, steps: int = 2, make=gpt2, scheduler: str = "linear"):
    model = make(seed)
    params = decay_groups(model) if groups == 2 else [{"params": list(model.parameters())}]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = (transformers.get_linear_schedule_with_warmup(opt, 2, 20) if scheduler == "linear"
             else transformers.get_cosine_schedule_with_warmup(opt, 2, 20))
    if steps:
        train(model, opt, sched, steps, seed=seed + 1)
    return model, opt, sched


def fingerprint(*objs: Any) -> dict[str, str]:
    """A digest of every tensor of each object's state dict, and of its other values."""
    out: dict[str, str] = {}

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            out[path] = f"{t.dtype}{list(t.shape)}:" + hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()
                                                                      if t.numel() else b"").hexdigest()
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{path}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{path}/{i}")
        else:
            out[path] = repr(obj)

    for i, obj in enumerate(objs):
        walk(obj.state_dict() if hasattr(obj, "state_dict") else obj, str(i))
    return out


def save(kind: str, directory, state: dict[str, Any], step: int = 1) -> None:
    with open_checkpointer(kind, directory, CONFIG) as ck:
        ck.save(step, state)
        ck.wait()


def load(kind: str, directory, state: dict[str, Any]):
    with open_checkpointer(kind, directory, CONFIG) as ck:
        return ck.load(state)


def assert_refused_unchanged(kind: str, directory, state: dict[str, Any], match: str) -> None:
    objs = list(state.values())
    before = fingerprint(*objs)
    with pytest.raises(CheckpointMismatchError, match=match):
        load(kind, directory, state)
    after = fingerprint(*objs)
    changed = [k for k in before if before[k] != after.get(k)]
    assert not changed and before.keys() == after.keys(), f"a refused load changed {len(changed)}: {changed[:5]}"


# --- optimizers ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "stepped"])
def test_decay_split_checkpoint_into_one_group_is_refused_unchanged(tmp_path, kind, fresh):
    """The resume case: a new process, its optimizer without state yet (fresh)."""
    model, opt, sched = hf_run(groups=2)
    save(kind, tmp_path, {"model": model, "optim": opt, "sched": sched})
    m2, o2, s2 = hf_run(seed=5, groups=1, steps=0 if fresh else 1)
    assert_refused_unchanged(kind, tmp_path, {"model": m2, "optim": o2, "sched": s2},
                             match=r"optim: the checkpoint has 2 param groups, the AdamW 1")


@pytest.mark.parametrize("kind", KINDS)
def test_group_with_other_parameter_count_is_refused_naming_it(tmp_path, kind):
    model, opt, sched = hf_run()
    save(kind, tmp_path, {"model": model, "optim": opt, "sched": sched})
    n = len(opt.param_groups[0]["params"])
    m2 = gpt2(seed=3)
    o2 = torch.optim.AdamW(decay_groups(m2, move=1), lr=1e-3)
    s2 = transformers.get_linear_schedule_with_warmup(o2, 2, 20)
    assert_refused_unchanged(kind, tmp_path, {"model": m2, "optim": o2, "sched": s2},
                             match=rf"optim/param_groups/0: the checkpoint's group has {n} parameters, the AdamW's {n - 1}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("other, fresh", [("SGD", True), ("Adagrad", False),
                                          pytest.param("SGD", False, marks=pytest.mark.slow),
                                          pytest.param("Adagrad", True, marks=pytest.mark.slow)],
                         ids=["SGD-fresh", "Adagrad-stepped", "SGD-stepped", "Adagrad-fresh"])
def test_adamw_checkpoint_into_another_optimizer_is_refused(tmp_path, kind, other, fresh):
    model, opt, sched = hf_run()
    save(kind, tmp_path, {"model": model, "optim": opt})
    m2 = gpt2(seed=4)
    o2 = getattr(torch.optim, other)(decay_groups(m2), lr=1e-2, **({"momentum": 0.9} if other == "SGD" else {}))
    if not fresh:
        train(m2, o2, None, 1)
    assert_refused_unchanged(kind, tmp_path, {"model": m2, "optim": o2}, match=r"another optimizer")


@pytest.mark.parametrize("kind", FORMAT_KINDS)
def test_per_parameter_state_of_another_shape_is_refused(tmp_path, kind):
    """Same group sizes, other parameters in them: AdamW's moments would not fit."""
    model = gpt2()
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    rest = [p for p in model.parameters() if p is not wte and p is not wpe]
    opt = torch.optim.AdamW([{"params": [wte]}, {"params": [wpe]}, {"params": rest}], lr=1e-3)
    train(model, opt, None, 1)
    save(kind, tmp_path, {"model": model, "optim": opt})
    m2 = gpt2(seed=2)
    wte2, wpe2 = m2.transformer.wte.weight, m2.transformer.wpe.weight
    rest2 = [p for p in m2.parameters() if p is not wte2 and p is not wpe2]
    o2 = torch.optim.AdamW([{"params": [wpe2]}, {"params": [wte2]}, {"params": rest2}], lr=1e-3)
    train(m2, o2, None, 1)
    assert_refused_unchanged(kind, tmp_path, {"model": m2, "optim": o2},
                             match=r"optim/param_groups/0/params/0/exp_avg.*\[64, 32\].*\[16, 32\]")


@pytest.mark.parametrize("kind", KINDS)
def test_a_parameter_without_state_loads_as_torch_does(tmp_path, kind):
    """A parameter that never had a gradient has no optimizer state in the checkpoint; the
    load is valid, and afterwards it has none here either, as torch's own load leaves it."""
    model = llama()
    frozen = model.model.layers[1].mlp.down_proj.weight
    frozen.requires_grad_(False)
    opt = torch.optim.AdamW(decay_groups(model), lr=1e-3)
    train(model, opt, None, 2)
    frozen.requires_grad_(True)
    assert frozen not in opt.state
    save(kind, tmp_path, {"model": model, "optim": opt})
    m2 = llama(seed=7)
    o2 = torch.optim.AdamW(decay_groups(m2), lr=1e-3)
    train(m2, o2, None, 1)
    load(kind, tmp_path, {"model": m2, "optim": o2})
    assert fingerprint(m2) == fingerprint(model)
    reference = torch.optim.AdamW(decay_groups(m2), lr=1e-3)
    reference.load_state_dict(opt.state_dict())
    assert fingerprint(o2) == fingerprint(reference)


# --- schedulers ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_hf_schedules_round_trip(tmp_path, kind):
    model, opt, sched = hf_run(scheduler="cosine", steps=3)
    save(kind, tmp_path, {"model": model, "optim": opt, "sched": sched})
    m2, o2, s2 = hf_run(seed=9, scheduler="cosine", steps=1)
    load(kind, tmp_path, {"model": m2, "optim": o2, "sched": s2})
    assert fingerprint(m2, o2) == fingerprint(model, opt)
    assert s2.last_epoch == sched.last_epoch == 3 and s2.get_last_lr() == sched.get_last_lr()


@pytest.mark.parametrize("kind", KINDS)
def test_scheduler_of_another_class_is_refused_unchanged(tmp_path, kind):
    model, opt, _ = hf_run(steps=0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3)
    train(model, opt, sched, 2)
    save(kind, tmp_path, {"model": model, "optim": opt, "sched": sched})
    m2, o2, _ = hf_run(seed=3, steps=0)
    s2 = torch.optim.lr_scheduler.CosineAnnealingLR(o2, T_max=10)
    train(m2, o2, s2, 1)
    assert_refused_unchanged(kind, tmp_path, {"model": m2, "optim": o2, "sched": s2},
                             match=r"sched.*another scheduler")


@pytest.mark.parametrize("kind", FORMAT_KINDS)
def test_lambda_scheduler_over_other_group_count_is_refused(tmp_path, kind):
    """The checkpoint's scheduler drove two groups; loading it alone (optimizer not in the
    state) into a one-group scheduler would leave lr lists that do not fit."""
    _, opt, sched = hf_run()
    save(kind, tmp_path, {"sched": sched})
    m2, o2, s2 = hf_run(seed=2, groups=1, steps=1)
    assert_refused_unchanged(kind, tmp_path, {"sched": s2, "model": m2, "optim": o2} | {},
                             match=r"sched/(base_lrs|lr_lambdas|_last_lr).*2 entries.*1")


# --- user objects that refuse their state after the checks ----------------------------------


class PickySampler:
    """Refuses a state for other data, as training/data.py's ResumableSampler does."""

    def __init__(self, seed: int) -> None:
        self.seed, self.index = seed, 0

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.index = int(state["index"])  # half-way changed before it refuses
        if int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state is for seed {state['seed']}, not {self.seed}")


def saved_run_with_sampler(kind, tmp_path):
    """A checkpoint of a stepped run and its PickySampler (seed 1, index 17); a fresh run to load it into."""
    model, opt, sched = hf_run()
    sampler = PickySampler(seed=1)
    sampler.index = 17
    save(kind, tmp_path, {"model": model, "optim": opt, "sched": sched, "data": sampler})
    return hf_run(seed=3, steps=1)


@pytest.mark.parametrize("kind", KINDS)
def test_a_refusing_user_object_leaves_everything_unchanged(tmp_path, kind):
    m2, o2, s2 = saved_run_with_sampler(kind, tmp_path)
    sampler2 = PickySampler(seed=2)
    before = fingerprint(m2, o2, s2, sampler2)
    with pytest.raises(ValueError, match="sampler state is for seed 1") as err:
        load(kind, tmp_path, {"model": m2, "optim": o2, "sched": s2, "data": sampler2})
    assert not isinstance(err.value, CheckpointMismatchError)
    assert fingerprint(m2, o2, s2, sampler2) == before


# --- tensors in lists and tuples ------------------------------------------------------------


@pytest.mark.parametrize("kind", FORMAT_KINDS)
def test_tensors_in_lists_and_tuples_are_restored_in_place(tmp_path, kind):
    bufs = [torch.arange(4.0), torch.ones(2, 3)]
    pair = (torch.full((3,), 7), 5)
    save(kind, tmp_path, {"bufs": bufs, "pair": pair, "nested": {"l": [[torch.tensor([1, 2])]]}})
    new_bufs = [torch.zeros(4), torch.zeros(2, 3)]
    new_pair = (torch.zeros(3, dtype=torch.int64), 5)
    inner = torch.zeros(2, dtype=torch.int64)
    target = {"bufs": new_bufs, "pair": new_pair, "nested": {"l": [[inner]]}}
    load(kind, tmp_path, target)
    assert target["bufs"] is new_bufs and target["pair"] is new_pair and target["nested"]["l"][0][0] is inner
    assert torch.equal(new_bufs[0], bufs[0]) and torch.equal(new_bufs[1], bufs[1])
    assert torch.equal(new_pair[0], pair[0]) and inner.tolist() == [1, 2]


@pytest.mark.parametrize("kind", FORMAT_KINDS)
def test_list_of_another_length_is_refused_naming_it(tmp_path, kind):
    model, opt, _ = hf_run(steps=1)
    save(kind, tmp_path, {"model": model, "optim": opt, "extra": {"bufs": [torch.ones(2)] * 3}})
    m2, o2, _ = hf_run(seed=1, steps=1)
    assert_refused_unchanged(kind, tmp_path, {"model": m2, "optim": o2, "extra": {"bufs": [torch.zeros(2)] * 2}},
                             match=r"extra/bufs.*3.*2")


# --- a load_state_dict that raises after every check passed ----------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_an_optimizer_failing_after_the_checks_is_rolled_back_with_what_came_before(tmp_path, kind):
    """torch's Optimizer.load_state_dict swaps its new state in before its post hooks run: a
    hook that raises (or an out-of-memory moving state to the device) finds the optimizer
    already changed; the scheduler and sampler loaded before it are rolled back too."""
    m2, o2, s2 = saved_run_with_sampler(kind, tmp_path)
    sampler2 = PickySampler(seed=1)

    def refuse(optimizer: torch.optim.Optimizer) -> None:
        assert optimizer.state_dict()["state"][0]["step"] == 2  # the checkpoint's state is in
        raise RuntimeError("CUDA out of memory (simulated)")
    o2.register_load_state_dict_post_hook(refuse)
    before = fingerprint(m2, o2, s2, sampler2)
    with pytest.raises(RuntimeError, match="simulated") as err:
        load(kind, tmp_path, {"model": m2, "optim": o2, "sched": s2, "data": sampler2})
    assert "rolled back" in "\n".join(getattr(err.value, "__notes__", []))
    assert fingerprint(m2, o2, s2, sampler2) == before
    train(m2, o2, s2, 1)  # the rolled-back optimizer still trains


@pytest.mark.parametrize("kind", FORMAT_KINDS)
def test_a_module_failing_after_the_checks_says_what_may_be_partly_restored(tmp_path, kind):
    """Modules and tensors are restored last and are not undoable (no second copy of the
    model): a failure there is a CheckpointError naming them; what came before is rolled back."""
    from ckptlab.core import CheckpointError

    model, opt, sched = hf_run()
    save(kind, tmp_path, {"model": model, "optim": opt, "sched": sched})
    m2, o2, s2 = hf_run(seed=3, steps=1)

    def refuse(module: torch.nn.Module, keys: Any) -> None:
        raise RuntimeError("a hook that refuses")
    m2.register_load_state_dict_post_hook(refuse)
    before = fingerprint(o2, s2)
    with pytest.raises(CheckpointError, match=r"may be partly restored: model; rolled back: optim, sched"):
        load(kind, tmp_path, {"model": m2, "optim": o2, "sched": s2})
    assert fingerprint(o2, s2) == before


# --- plain values in lists and tuples --------------------------------------------------------


def test_plain_lists_take_the_checkpoints_values_in_place_and_plain_tuples_are_replaced(tmp_path):
    save("torchsave", tmp_path, {"extra": {"losses": [1.0, 2.0, 3.0], "rng": (3, (1, 2), None)},
                                  "pair": (torch.ones(2), 9)})
    losses = [0.5]
    pair = (torch.zeros(2), 4)
    target = {"extra": {"losses": losses, "rng": (0, (0,), 1.5)}, "pair": pair}
    _, loaded = load("torchsave", tmp_path, target)
    assert target["extra"]["losses"] is losses and losses == [1.0, 2.0, 3.0]
    assert target["extra"]["rng"] == (3, (1, 2), None)  # a plain value: replaced as before
    assert target["pair"] is pair and pair[1] == 4 and torch.equal(pair[0], torch.ones(2))  # kept, tensor in place
    assert loaded["pair"][1] == 9  # the checkpoint's leaf is in the returned state


@pytest.mark.parametrize("kind", FORMAT_KINDS)
def test_an_object_the_checkpoint_lacks_is_refused(tmp_path, kind):
    model, opt, sched = hf_run()
    save(kind, tmp_path, {"model": model, "optim": opt})
    m2, o2, s2 = hf_run(seed=3, steps=1)
    assert_refused_unchanged(kind, tmp_path, {"model": m2, "optim": o2, "sched": s2},
                             match=r"'sched': the target holds LambdaLR the checkpoint does not have")
