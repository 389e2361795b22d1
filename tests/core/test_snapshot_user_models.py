"""Deferred snapshots of code nobody here wrote: a Hugging Face GPT-2 from its config (tied
embeddings), torch's AdamW and a Hugging Face cosine schedule, trained in a plain loop with
``guard(optimizer)``. The state streams through a staging pool smaller than it (one copy,
chunk by chunk), and a run resumed from the checkpoint continues bit-exactly."""
from __future__ import annotations

import pytest
import torch

from ckptlab.core import CheckpointConfig, load_latest, open_checkpointer

transformers = pytest.importorskip("transformers")


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=32, vocab_size=512,
                                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = transformers.get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=20)
    return model, opt, sched


def _step(model, opt, sched, step: int) -> float:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, 512, (2, 32), generator=g)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return loss.item()


def test_gpt2_adamw_cosine_resumes_bit_exact_from_a_deferred_snapshot(ckpt_dir):
    model, opt, sched = _setup()
    cfg = CheckpointConfig(snapshot="deferred", chunk_bytes=1 << 16, staging_bytes=4 << 16, keep_last=0)
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        ck.guard(opt)
        for step in range(1, 7):
            _step(model, opt, sched, step)
            if step % 3 == 0:  # the copy overlaps the next forward/backward; opt.step() waits for it
                ck.save(step, {"model": model, "optim": opt, "sched": sched, "step": step})
        ck.wait()
        state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        assert ck.stats()["staging_bytes"] < state_bytes  # it streamed through staging
    reference = [_step(model, opt, sched, step) for step in range(7, 11)]

    model2, opt2, sched2 = _setup(seed=1)  # different weights until the load
    step, _ = load_latest(ckpt_dir, {"model": model2, "optim": opt2, "sched": sched2})
    assert step == 6
    assert model2.lm_head.weight is model2.transformer.wte.weight  # the tie survives the load
    resumed = [_step(model2, opt2, sched2, s) for s in range(7, 11)]
    assert resumed == reference
    assert sched2.get_last_lr() == sched.get_last_lr()
