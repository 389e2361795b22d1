"""The seeds' model: shapes, parameter counts of the presets, causality, GQA, RoPE."""

from __future__ import annotations

import pytest
import torch

from ckptlab.training.model import Transformer, apply_rope, build_model, rope_tables
from ckptlab.training.presets import PRESETS, get_preset

TINY = get_preset("tiny").model


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_count_matches_the_analytic_count(name: str) -> None:
    cfg = PRESETS[name].model
    with torch.device("meta"):
        model = Transformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()


def test_seed_presets_reproduce_the_design_anchors() -> None:
    """4.02 B params / 48.25 GB (seed-full) and 1.07 B / 12.85 GB (seed-2048), fp32 + AdamW."""
    full, anchor = PRESETS["seed-full"].model, PRESETS["seed-2048"].model
    assert (full.dim, full.n_layers, full.n_heads, full.n_kv_heads, full.ffn_dim) == \
        (4096, 32, 32, 8, 6144)
    assert full.rope_theta == 500_000 and full.max_seq_len == 4096
    assert round(full.num_params() / 1e9, 2) == 4.02
    assert round(full.num_params() * 12 / 1e9, 2) == 48.25
    assert round(anchor.num_params() * 12 / 1e9, 2) == 12.85
    for name in ("seed-1024", "seed-2048"):
        assert PRESETS[name].model.dim == PRESETS[name].seq_len


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="tiny"):
        get_preset("huge")


@pytest.mark.parametrize("bad", [dict(dim=65), dict(n_kv_heads=3), dict(vocab_size=0)])
def test_inconsistent_shapes_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        TINY.replace(**bad)


def test_forward_shapes_and_loss() -> None:
    torch.manual_seed(0)
    model = build_model(TINY)
    tokens = torch.randint(0, TINY.vocab_size, (2, 16))
    assert model(tokens).shape == (2, 16, TINY.vocab_size)
    loss = model(tokens, tokens)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert abs(loss.item() - torch.log(torch.tensor(float(TINY.vocab_size))).item()) < 0.5


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = build_model(TINY)
    tokens = torch.randint(0, TINY.vocab_size, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % TINY.vocab_size
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :8], b[:, :8])
    assert not torch.equal(a[:, 8:], b[:, 8:])


def test_grouped_query_attention_shapes() -> None:
    model = build_model(TINY)
    attn = model.layers[0].attention
    assert attn.wq.weight.shape == (TINY.dim, TINY.dim)
    assert attn.wk.weight.shape == (TINY.n_kv_heads * TINY.head_dim, TINY.dim)


def test_rope_theta_changes_the_model() -> None:
    tokens = torch.randint(0, TINY.vocab_size, (1, 32))
    outs = []
    for theta in (10_000.0, 500_000.0):
        torch.manual_seed(0)
        with torch.no_grad():
            outs.append(build_model(TINY.replace(rope_theta=theta))(tokens))
    assert not torch.equal(*outs)


def test_rope_rotation_preserves_norms() -> None:
    cos, sin = rope_tables(8, 5, 500_000.0)
    x = torch.randn(1, 2, 5, 8)
    assert torch.allclose(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(apply_rope(x, cos, sin)[:, :, 0], x[:, :, 0])  # position 0: identity


def test_tied_embeddings_share_one_tensor() -> None:
    cfg = TINY.replace(tie_embeddings=True)
    model = build_model(cfg)
    assert model.output.weight is model.tok_embeddings.weight
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()


def test_bf16_model_keeps_fp32_rope_and_loss() -> None:
    model = build_model(TINY, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    tokens = torch.randint(0, TINY.vocab_size, (2, 8))
    assert model(tokens, tokens).dtype == torch.float32
    assert model._rope[torch.device("cpu")][0].dtype == torch.float32


def test_too_long_sequence_is_refused() -> None:
    model = build_model(TINY)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, TINY.max_seq_len + 1, dtype=torch.long))
