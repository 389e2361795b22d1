"""What one ``ckptlab bench`` measures: the model, the kinds, K, the repeats; validated once,
and turned into the interleaved schedule of runs (round r runs every kind before round r+1,
each round in its own order drawn from the seed, so drift of a shared machine spreads over
all kinds instead of biasing the ones run last)."""
from __future__ import annotations

import random
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BENCH_KINDS", "CPU_KINDS", "BenchSpec", "Run", "Variant", "parse_variant", "schedule", "vocab_for_state"]

# bench kind -> `ckptlab train` flags choosing the checkpointer
BENCH_KINDS: dict[str, tuple[str, ...]] = {
    "none": ("--checkpointer", "none"),
    "torchsave": ("--checkpointer", "torchsave"),
    "dcp": ("--checkpointer", "dcp"),
    "dcp-async": ("--checkpointer", "dcp-async"),
    "pccheck-sync": ("--checkpointer", "pccheck", "--snapshot", "sync"),
    "pccheck-deferred": ("--checkpointer", "pccheck", "--snapshot", "deferred"),
    "pccheck-gpu": ("--checkpointer", "pccheck", "--snapshot", "gpu"),
    "pccheck-auto": ("--checkpointer", "pccheck", "--snapshot", "auto"),  # gpu if it fits, else deferred
}
CPU_KINDS = tuple(k for k in BENCH_KINDS if k not in ("pccheck-gpu", "pccheck-auto"))
SHAPE_FLAGS = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size")
WORK_FLAGS = ("batch_size", "sequence_length")  # tokens per step: how much compute a step has


_VARIANT = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.+-]*)=(?P<base>[a-z-]+):(?P<flags>.*)")


@dataclass(frozen=True)
class Variant:
    """A kind run with other checkpointer settings, measured beside the rest of the bench under
    its own name: an A/B of one knob inside the same interleaved rounds, so the machine's drift
    between separate benches does not decide it."""

    name: str
    base: str  # a BENCH_KINDS entry
    flags: tuple[str, ...]  # `ckptlab train` flags added after the base kind's

    @property
    def text(self) -> str:
        return f"{self.name}={self.base}:{shlex.join(self.flags)}"


def parse_variant(text: str) -> Variant:
    """``NAME=KIND:FLAGS``, e.g. ``deferred-pf=pccheck-deferred:--prefault-staging``."""
    m = _VARIANT.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"--variant {text!r}: expected NAME=KIND:FLAGS, "
                         f"e.g. deferred-pf=pccheck-deferred:--prefault-staging")
    try:
        flags = tuple(shlex.split(m["flags"]))
    except ValueError as exc:
        raise ValueError(f"--variant {text!r}: {exc}") from None
    if not flags:
        raise ValueError(f"--variant {text!r}: give the flags that make it differ from {m['base']}")
    return Variant(m["name"], m["base"], flags)


@dataclass(frozen=True)
class Run:
    """One measured run: a kind with a checkpoint every ``every`` steps (None: no checkpoints)."""

    round: int
    kind: str
    every: int | None

    @property
    def name(self) -> str:
        return self.kind if self.every is None else f"{self.kind}-every{self.every}"


@dataclass
class BenchSpec:
    out: Path
    preset: str = "tiny"
    shape: dict[str, int] = field(default_factory=dict)  # --dim, --n-layers, ..., --batch-size overrides
    state_mb: int | None = None
    model_dtype: str = "fp32"
    device: str = "cpu"
    kinds: tuple[str, ...] = CPU_KINDS
    variants: tuple[Variant, ...] = ()
    steps: int = 30
    every: tuple[int, ...] = (5, 10)
    repeats: int = 3
    seed: int = 0
    dir: Path | None = None
    threads: int | None = None
    writer_threads: int | None = None
    timeout_s: float = 1800.0

    def validate(self) -> None:
        """ValueError naming the flag for anything the runs could not do."""
        unknown = [k for k in self.kinds if k not in BENCH_KINDS]
        if unknown:
            raise ValueError(f"--kinds: unknown kind {unknown[0]!r}; known: {', '.join(BENCH_KINDS)}")
        if not self.kinds:
            raise ValueError("--kinds: name at least one kind")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {self.device!r}")
        if "pccheck-gpu" in self.kinds and self.device != "cuda":
            raise ValueError("--kinds: pccheck-gpu needs --device cuda (it snapshots into GPU memory)")
        names = [v.name for v in self.variants]
        for v in self.variants:
            if v.name in BENCH_KINDS:
                raise ValueError(f"--variant {v.text!r}: {v.name!r} is a kind's name; give the variant its own")
            if names.count(v.name) > 1:
                raise ValueError(f"--variant: {v.name!r} is given twice")
            if v.base not in BENCH_KINDS or v.base == "none":
                raise ValueError(f"--variant {v.text!r}: unknown base kind {v.base!r}; known: "
                                 f"{', '.join(k for k in BENCH_KINDS if k != 'none')}")
            if v.base == "pccheck-gpu" and self.device != "cuda":
                raise ValueError(f"--variant {v.text!r}: pccheck-gpu needs --device cuda")
        if not self.every or min(self.every) < 1:
            raise ValueError("--every: expected comma-separated integers >= 1")
        if self.steps <= max(self.every):  # one checkpoint is enough: its stall is then a first stall
            raise ValueError(f"--steps {self.steps} is too few for --every {max(self.every)}: need at least "
                             f"{max(self.every) + 1} (a checkpoint, and a step after it)")
        if self.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {self.repeats}")
        if self.state_mb is not None and "vocab_size" in self.shape:
            raise ValueError("--state-mb and --vocab-size both set the state's size; give one")
        if self.state_mb is not None and self.state_mb < 1:
            raise ValueError(f"--state-mb must be >= 1, got {self.state_mb}")
        if (self.out / "bench.json").exists():
            raise ValueError(f"--out {self.out} already holds a bench.json; give another directory")

    @property
    def measured(self) -> tuple[str, ...]:
        """The kinds in the order given, with `none` always there (every figure is against it),
        then the variants."""
        return ("none", *[k for k in self.kinds if k != "none"], *(v.name for v in self.variants))

    def kind_flags(self, kind: str) -> tuple[str, ...]:
        """The `ckptlab train` flags choosing a measured kind's checkpointer and its settings."""
        for v in self.variants:
            if v.name == kind:
                return (*BENCH_KINDS[v.base], *v.flags)
        return BENCH_KINDS[kind]


def schedule(spec: BenchSpec) -> list[Run]:
    """Every run of the bench, interleaved by round; within a round a seeded shuffle."""
    out: list[Run] = []
    for r in range(spec.repeats):
        runs = [Run(r, k, None if k == "none" else every) for k in spec.measured
                for every in ((None,) if k == "none" else spec.every)]
        random.Random(spec.seed * 1000 + r).shuffle(runs)
        out += runs
    return out


def vocab_for_state(state_mb: int, params_without_vocab: int, per_vocab_row: int, bytes_per_param: int) -> int:
    """The vocabulary size that makes model + Adam state (3 copies) about ``state_mb`` MiB."""
    want = state_mb * (1 << 20) // (3 * bytes_per_param)
    return max(1, (want - params_without_vocab) // per_vocab_row)
