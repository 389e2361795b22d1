"""Damage to committed checkpoints: bit rot, truncation, lost and misdirected files (tier L6, docs/BACKGROUND.md §2).

Each function damages one checkpoint directory in place and returns a one-line description,
or None when the damage happened to change nothing (e.g. zeroing bytes that were zero).
:func:`corrupt` picks one at random. The oracle (O5) then demands that the loader detects the
damage and falls back to an older checkpoint or raises, and never returns wrong bytes.
"""
from __future__ import annotations

import os
import random
import shutil

from ckptlab.core.manifest import MANIFEST_NAME

KINDS = ("flip_bit", "flip_byte", "zero_block", "truncate_data", "truncate_manifest", "delete_data",
         "delete_manifest", "swap_data", "foreign_data", "foreign_manifest", "append_garbage")


def _files(ckpt: str) -> list[str]:
    return sorted(n for n in os.listdir(ckpt) if os.path.isfile(os.path.join(ckpt, n)))


def _data_files(ckpt: str) -> list[str]:
    return [n for n in _files(ckpt) if n != MANIFEST_NAME]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _rewrite(path: str, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def _damage_one_file(ckpt: str, rng: random.Random, damage) -> str | None:
    """Pick a file, let `damage(data, rng)` change its bytes in place (returning what it did,
    or None for no change), and write it back."""
    name = rng.choice(_files(ckpt))
    path = os.path.join(ckpt, name)
    data = bytearray(_read(path))
    if not data:
        return None
    what = damage(data, rng)
    if what is None:
        return None
    _rewrite(path, bytes(data))
    return f"{what} in {name}"


def _flip_bit(data: bytearray, rng: random.Random) -> str:
    pos, bit = rng.randrange(len(data)), rng.randrange(8)
    data[pos] ^= 1 << bit
    return f"flipped bit {bit} of byte {pos}"


def _flip_byte(data: bytearray, rng: random.Random) -> str:
    pos = rng.randrange(len(data))
    data[pos] ^= rng.randrange(1, 256)
    return f"changed byte {pos}"


def _zero_block(data: bytearray, rng: random.Random) -> str | None:
    block = 4096 if len(data) >= 4096 else 512
    start = rng.randrange(max(1, (len(data) + block - 1) // block)) * block
    end = min(len(data), start + block)
    if not any(data[start:end]):
        return None
    data[start:end] = bytes(end - start)
    return f"zeroed bytes {start}..{end}"


def flip_bit(ckpt: str, rng: random.Random) -> str | None:
    return _damage_one_file(ckpt, rng, _flip_bit)


def flip_byte(ckpt: str, rng: random.Random) -> str | None:
    return _damage_one_file(ckpt, rng, _flip_byte)


def zero_block(ckpt: str, rng: random.Random) -> str | None:
    return _damage_one_file(ckpt, rng, _zero_block)


def truncate_data(ckpt: str, rng: random.Random) -> str | None:
    name = rng.choice(_data_files(ckpt))
    path = os.path.join(ckpt, name)
    size = os.path.getsize(path)
    if size == 0:
        return None
    new = rng.choice([0, rng.randrange(size), size - 1, size // 4096 * 4096 - 4096])
    new = max(0, min(size - 1, new))
    os.truncate(path, new)
    return f"truncated {name} from {size} to {new} bytes"


def truncate_manifest(ckpt: str, rng: random.Random) -> str | None:
    path = os.path.join(ckpt, MANIFEST_NAME)
    size = os.path.getsize(path)
    new = rng.randrange(size)
    os.truncate(path, new)
    return f"truncated MANIFEST from {size} to {new} bytes"


def delete_data(ckpt: str, rng: random.Random) -> str | None:
    name = rng.choice(_data_files(ckpt))
    os.unlink(os.path.join(ckpt, name))
    return f"deleted {name}"


def delete_manifest(ckpt: str, rng: random.Random) -> str | None:
    os.unlink(os.path.join(ckpt, MANIFEST_NAME))
    return "deleted MANIFEST"


def swap_data(ckpt: str, rng: random.Random) -> str | None:
    names = _data_files(ckpt)
    if len(names) < 2:
        return None
    a, b = rng.sample(names, 2)
    pa, pb = os.path.join(ckpt, a), os.path.join(ckpt, b)
    da, db = _read(pa), _read(pb)
    if da == db:
        return None
    _rewrite(pa, db)
    _rewrite(pb, da)
    return f"swapped the contents of {a} and {b}"


def foreign_data(ckpt: str, rng: random.Random, other: str | None = None) -> str | None:
    """A misdirected write: a data file replaced by the same-named file of another checkpoint."""
    if other is None:
        return None
    names = [n for n in _data_files(ckpt) if os.path.exists(os.path.join(other, n))]
    if not names:
        return None
    name = rng.choice(names)
    src = _read(os.path.join(other, name))
    if src == _read(os.path.join(ckpt, name)):
        return None
    _rewrite(os.path.join(ckpt, name), src)
    return f"{name} replaced by {os.path.basename(other)}'s copy"


def foreign_manifest(ckpt: str, rng: random.Random, other: str | None = None) -> str | None:
    """A stale MANIFEST: another checkpoint's, over this one's data."""
    if other is None:
        return None
    shutil.copyfile(os.path.join(other, MANIFEST_NAME), os.path.join(ckpt, MANIFEST_NAME))
    return f"MANIFEST replaced by {os.path.basename(other)}'s"


def append_garbage(ckpt: str, rng: random.Random) -> str | None:
    name = rng.choice(_files(ckpt))
    with open(os.path.join(ckpt, name), "ab") as f:
        f.write(rng.randbytes(rng.choice([1, 7, 512, 4096])))
    return f"appended garbage to {name}"


def corrupt(ckpt: str, rng: random.Random, kind: str | None = None, other: str | None = None) -> tuple[str, str | None]:
    """Damage ``ckpt`` with ``kind`` (random when None); returns (kind, description or None)."""
    kind = kind or rng.choice(KINDS)
    fn = globals()[kind]
    if kind.startswith("foreign"):
        return kind, fn(ckpt, rng, other)
    return kind, fn(ckpt, rng)
