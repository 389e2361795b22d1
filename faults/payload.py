"""Test states whose every byte is a function of (seed, step, tensor name).

A tensor named ``name`` saved at ``step`` holds ``PCG64(seed, step, crc32(name))`` bytes, so a
loaded state can be checked bit for bit without keeping copies, and a state that mixes two
checkpoints (or holds torn bytes) names itself: each tensor either matches its step, matches
another step ("mixed"), or matches nothing ("torn"). Torch-free: the saver child imports
this; the parent builds the pickled skeleton and layout with ``ckptlab.core.state.capture``
(:func:`plan_step`) so the child writes exactly what the pccheck checkpointer would.
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8, "int32": 4, "uint8": 1}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype]
        for d in self.shape:
            n *= d
        return n

    def as_json(self) -> list:
        return [self.name, self.dtype, list(self.shape)]

    @staticmethod
    def from_json(v: list) -> TensorSpec:
        return TensorSpec(v[0], v[1], tuple(v[2]))


def tensor_bytes(seed: int, step: int, name: str, nbytes: int) -> bytes:
    """The bytes of tensor ``name`` at ``step``: a PRNG stream seeded by (seed, step, name)."""
    key = [seed & 0xFFFFFFFFFFFF, step & 0xFFFFFFFFFFFF, zlib.crc32(name.encode())]
    return np.random.Generator(np.random.PCG64(key)).bytes(nbytes)


def random_layout(rng: random.Random, total_bytes: int, ntensors: int | None = None) -> list[TensorSpec]:
    """A few tensors of mixed dtypes and odd shapes adding up to about ``total_bytes``."""
    n = ntensors or rng.randint(3, 7)
    weights = [rng.random() + 0.2 for _ in range(n)]
    out = []
    for i, w in enumerate(weights):
        dtype = rng.choice(list(DTYPES))
        elems = max(1, int(total_bytes * w / sum(weights)) // DTYPES[dtype])
        if rng.random() < 0.6 and elems > 64:
            cols = rng.choice([3, 7, 11, 64, 129])
            shape: tuple[int, ...] = (max(1, elems // cols), cols)
        else:
            shape = (elems,)
        out.append(TensorSpec(f"layer{i}.{rng.choice(['weight', 'bias', 'exp_avg', 'exp_avg_sq'])}", dtype, shape))
    if rng.random() < 0.3:
        out.append(TensorSpec("scalar", "int64", ()))
    return out


def plan_step(layout: list[TensorSpec], seed: int, step: int) -> dict[str, Any]:
    """What the saver child submits for ``step``: skeleton bytes (hex), manifest meta, size.

    Uses the real state capture (torch) on empty template tensors, so offsets, alignment and
    the pickled skeleton are exactly those of ``open_checkpointer("pccheck")``.
    """
    import torch
    from ckptlab.core.state import capture

    template = {"step": step, "seed": seed,
                "model": {t.name: torch.empty(t.shape, dtype=getattr(torch, t.dtype)) for t in layout}}
    cap = capture(template)
    return {"skeleton": cap.skeleton.hex(), "meta": cap.layout_meta(), "total_bytes": cap.total_bytes}


def state_for(layout: list[TensorSpec], seed: int, step: int) -> dict[str, Any]:
    """The same state as torch tensors (for saving through the real checkpointer API)."""
    import torch

    model = {}
    for t in layout:
        raw = np.frombuffer(tensor_bytes(seed, step, t.name, t.nbytes), dtype=np.uint8).copy()
        model[t.name] = torch.from_numpy(raw).view(getattr(torch, t.dtype)).reshape(t.shape)
    return {"step": step, "seed": seed, "model": model}


def _as_bytes(t: Any) -> bytes:
    import torch

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a tensor, got {type(t).__name__}")
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def check_state(loaded: Any, layout: list[TensorSpec], seed: int, step: int,
                other_steps: tuple[int, ...] = ()) -> str | None:
    """None if ``loaded`` is bit-identical to the state saved at ``step``; else what is wrong
    (naming the other step a tensor came from when it is a mix)."""
    if not isinstance(loaded, dict) or "model" not in loaded:
        return f"loaded object is not a saved state: {type(loaded).__name__}"
    if loaded.get("step") != step:
        return f"skeleton says step {loaded.get('step')!r}, the manifest says {step}"
    if loaded.get("seed") != seed:
        return f"skeleton says seed {loaded.get('seed')!r}, expected {seed}"
    model = loaded["model"]
    if set(model) != {t.name for t in layout}:
        return f"tensor names differ: {sorted(model)} vs {sorted(t.name for t in layout)}"
    problems = []
    for t in layout:
        got = _as_bytes(model[t.name])
        if got == tensor_bytes(seed, step, t.name, t.nbytes):
            continue
        source = next((s for s in other_steps if s != step and got == tensor_bytes(seed, s, t.name, t.nbytes)), None)
        if source is not None:
            problems.append(f"{t.name} holds step {source}'s bytes (a mix of checkpoints)")
        else:
            bad = next((i for i, (a, b) in enumerate(zip(got, tensor_bytes(seed, step, t.name, t.nbytes))) if a != b),
                       min(len(got), t.nbytes))
            problems.append(f"{t.name} is torn/garbage from byte {bad} of {t.nbytes}")
    return "; ".join(problems) if problems else None
