"""Shared test helpers (imported as `ckpt_testutil`; conftest puts tests/ on sys.path): deterministic states whose every byte depends on (step, name), so a
checkpoint that mixes two steps or is torn is detectable by comparison."""
from __future__ import annotations

import os
import zlib

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def det_tensor(step: int, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed((zlib.crc32(name.encode()) << 20) ^ step)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)
    return torch.randint(-100, 100, shape, generator=g).to(dtype)


def det_state(step: int, nbytes: int = 1 << 20) -> dict:
    """A state of about `nbytes` whose contents are a function of step."""
    n = max(1, nbytes // 4 // 3)
    return {
        "a": det_tensor(step, "a", (n,)),
        "nested": {"b": det_tensor(step, "b", (n,)), "c": [det_tensor(step, "c", (n,)), step]},
        "bf16": det_tensor(step, "bf16", (33,), torch.bfloat16),
        "step": step,
    }


def assert_state_is_step(state: dict, step: int, nbytes: int = 1 << 20) -> None:
    expected = det_state(step, nbytes)
    assert state["step"] == step
    assert torch.equal(state["a"], expected["a"])
    assert torch.equal(state["nested"]["b"], expected["nested"]["b"])
    assert torch.equal(state["nested"]["c"][0], expected["nested"]["c"][0])
    assert state["nested"]["c"][1] == step
    assert torch.equal(state["bf16"], expected["bf16"])


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.pop("CKPTLAB_FAULTS", None)
    env.update(extra)
    return env

