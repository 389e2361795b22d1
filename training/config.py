"""The training run's configuration: one frozen dataclass, validated once.

How checkpoints are taken is not restated here: ``checkpoint`` is the core
``CheckpointConfig`` (validated by core, for the kind by ``core.checkpointer.check_config``),
so a new checkpointer knob needs no change in this file. ``None`` for a preset-dependent
field (sequence length, batch size, learning rate, model dimensions) means "the preset's
value"; ``resolved_*`` methods apply the preset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckptlab.core.checkpointer import KINDS, check_config
from ckptlab.core.config import CheckpointConfig
from ckptlab.training.presets import ModelConfig, Preset, get_preset

__all__ = ["TrainConfig", "MODEL_DTYPES"]

MODEL_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "tiny"
    checkpointer: str = "none"
    seed: int = 0
    training_steps: int = 100
    checkpoint_freq: int = 0
    model_dtype: str = "fp32"
    sequence_length: int | None = None
    batch_size: int | None = None
    loss_file: Path | None = None
    load_checkpoint: bool = False
    allow_fresh_start: bool = False
    ckpt_dir: Path = Path("checkpoints")
    device: str = "auto"
    threads: int | None = None
    tf32: bool = True
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    trace: Path | None = None  # a trace file: Python phases and the engine's records
    fail_at_step: int | None = None
    fail_after_durable: bool = False
    fail_rank: int | None = None  # under torchrun: the rank --fail-at-step/--fault act on (None: the last)
    sigterm_budget_s: float = 60.0
    # optimisation
    lr: float | None = None
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # model overrides (None: the preset's)
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    ffn_dim: int | None = None
    vocab_size: int | None = None
    rope_theta: float | None = None
    # output
    progress: bool | None = None
    summary_json: Path | None = None

    def __post_init__(self) -> None:
        get_preset(self.preset)  # KeyError naming the known presets
        if self.checkpointer not in KINDS:
            raise ValueError(f"unknown checkpointer {self.checkpointer!r}; "
                             f"choose from {', '.join(KINDS)}")
        if self.model_dtype not in MODEL_DTYPES:
            raise ValueError(f"unknown model dtype {self.model_dtype!r}; "
                             f"choose from {', '.join(MODEL_DTYPES)}")
        if self.training_steps < 0:
            raise ValueError(f"training steps must be >= 0, got {self.training_steps}")
        if self.checkpoint_freq < 0:
            raise ValueError(f"checkpoint frequency must be >= 0, got {self.checkpoint_freq}")
        for name in ("sequence_length", "batch_size", "warmup_steps", "threads", "dim", "n_layers",
                     "n_heads", "n_kv_heads", "ffn_dim", "vocab_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {value}")
        if not isinstance(self.checkpoint, CheckpointConfig):
            raise TypeError(f"checkpoint must be a CheckpointConfig, got {type(self.checkpoint).__name__}")
        check_config(self.checkpointer, self.checkpoint)
        if self.fail_at_step is not None and not 1 <= self.fail_at_step <= self.training_steps:
            raise ValueError(f"fail-at-step {self.fail_at_step} is outside steps "
                             f"1..{self.training_steps}, so it would never fire")
        if self.fail_rank is not None and self.fail_rank < 0:
            raise ValueError(f"fail-rank must be >= 0, got {self.fail_rank}")
        if self.load_checkpoint and self.checkpointer == "none":
            raise ValueError("--load-checkpoint needs a checkpointer; --checkpointer none "
                             "keeps no checkpoints")
        if self.sigterm_budget_s <= 0:
            raise ValueError(f"sigterm budget must be positive, got {self.sigterm_budget_s}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        model = self.resolved_model()  # ValueError on an inconsistent shape
        if self.resolved_seq_len() > model.max_seq_len:
            raise ValueError(f"sequence length {self.resolved_seq_len()} exceeds the model's "
                             f"max_seq_len {model.max_seq_len}")

    @property
    def preset_obj(self) -> Preset:
        return get_preset(self.preset)

    @property
    def dtype(self) -> torch.dtype:
        return MODEL_DTYPES[self.model_dtype]

    def resolved_seq_len(self) -> int:
        return self.sequence_length or self.preset_obj.seq_len

    def resolved_batch_size(self) -> int:
        return self.batch_size or self.preset_obj.batch_size

    def resolved_threads(self) -> int | None:
        """torch intra-op threads; part of what makes two runs bit-identical on CPU."""
        return self.threads or self.preset_obj.cpu_threads

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else self.preset_obj.lr

    def resolved_warmup(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return max(1, min(100, self.training_steps // 10))

    def resolved_model(self) -> ModelConfig:
        base = self.preset_obj.model
        seq = self.sequence_length or 0
        return base.replace(dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads,
                            n_kv_heads=self.n_kv_heads, ffn_dim=self.ffn_dim,
                            vocab_size=self.vocab_size, rope_theta=self.rope_theta,
                            max_seq_len=max(base.max_seq_len, seq))

    def run_description(self) -> dict[str, Any]:
        """What a resumed run must share with the run that wrote the checkpoint."""
        return {"preset": self.preset, "model": dataclasses.asdict(self.resolved_model()),
                "model_dtype": self.model_dtype, "seed": self.seed,
                "training_steps": self.training_steps, "seq_len": self.resolved_seq_len(),
                "batch_size": self.resolved_batch_size(), "lr": self.resolved_lr(),
                "warmup_steps": self.resolved_warmup(), "min_lr_ratio": self.min_lr_ratio,
                "weight_decay": self.weight_decay, "grad_clip": self.grad_clip,
                "threads": self.resolved_threads(), "tf32": self.tf32}
