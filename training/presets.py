"""Model shapes and named presets.

The seeds' model is a Llama-style decoder: 32 layers, width 4096, 32 query heads sharing 8 KV
heads, SwiGLU FFN 6144, RMSNorm, RoPE θ = 500000, sequences up to 4096, a 32000-token
vocabulary and an *untied* output projection. Those numbers reproduce the 4.02 B parameters
(48.25 GB with fp32 AdamW) quoted in docs/BACKGROUND.md §4; width 2048 with FFN 3072 reproduces the 1.07 B
(12.85 GB) anchor model. ``num_params`` is analytic so tests can check the counts without
allocating anything.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

__all__ = ["ModelConfig", "Preset", "PRESETS", "get_preset", "preset_argument", "preset_names"]


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder. Everything a checkpoint's tensor shapes depend on lives here."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    max_seq_len: int
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size",
                     "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads "
                             f"{self.n_kv_heads} (grouped-query attention)")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def num_params(self) -> int:
        """Exact parameter count of ``training.model.Transformer`` with this shape."""
        d, kv = self.dim, self.n_kv_heads * self.head_dim
        attention = 2 * d * d + 2 * d * kv          # wq, wo; wk, wv
        ffn = 3 * d * self.ffn_dim                  # w1, w2, w3
        layer = attention + ffn + 2 * d             # + attention_norm, ffn_norm
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.n_layers * layer + embeddings + d  # + final norm

    def replace(self, **changes: object) -> "ModelConfig":
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class Preset:
    """A model shape plus the training defaults that go with it."""

    name: str
    model: ModelConfig
    seq_len: int
    batch_size: int
    lr: float
    description: str
    cpu_threads: int | None = None  # torch intra-op threads on CPU; None: torch's default


def _seed_shape(dim: int, ffn_dim: int) -> ModelConfig:
    return ModelConfig(dim=dim, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=ffn_dim,
                       vocab_size=32_000, max_seq_len=4096)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny",
               ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                           vocab_size=256, max_seq_len=64),
               seq_len=64, batch_size=8, lr=3e-3, cpu_threads=1,
               description="CI and demos: a step takes milliseconds on 2 CPU cores"),
        Preset("seed-1024", _seed_shape(1024, 1536), seq_len=1024, batch_size=4, lr=3e-4,
               description="seed shape at width 1024 = sequence length 1024 (0.30 B params)"),
        Preset("seed-2048", _seed_shape(2048, 3072), seq_len=2048, batch_size=2, lr=3e-4,
               description="seed shape at width 2048 = sequence length 2048 (1.07 B params, "
                           "the anchor model of docs/BACKGROUND.md §4; the anchor ran batch 4 x seq 1024)"),
        Preset("seed-full", _seed_shape(4096, 6144), seq_len=2048, batch_size=1, lr=1.5e-4,
               description="the seeds' full model (4.02 B params, 48.25 GB with fp32 AdamW)"),
    )
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``KeyError`` with the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: "
                       f"{', '.join(PRESETS)}") from None


def preset_argument(text: str) -> str:
    """argparse ``type=`` for ``--preset``: the name, or the unknown-preset message as a usage error."""
    try:
        get_preset(text)
    except KeyError as exc:
        raise argparse.ArgumentTypeError(exc.args[0]) from None
    return text
