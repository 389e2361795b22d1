"""State capture: turn a training state into (pickled skeleton, list of tensors) and back.

A state is a nested structure of dicts, lists and tuples whose leaves are tensors, objects
with ``state_dict()/load_state_dict()`` (model, optimizer, scheduler, data sampler) or small
picklable values (step, RNG states). Tensors are lifted out and stored raw; the rest, with
each tensor replaced by a ``TensorRef``, is pickled. Loading unpickles with an allowlist, so
a checkpoint cannot run arbitrary code (same spirit as ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ckptlab.core.errors import CheckpointError, UnsafePickleError
from ckptlab.profiling.phases import phase

TENSOR_ALIGN = 64


@dataclass(frozen=True)
class TensorRef:
    """Placeholder for the index-th tensor of a checkpoint inside the pickled skeleton."""

    index: int


@dataclass(frozen=True)
class StatefulRef:
    """An object that was saved through its state_dict(); load calls load_state_dict()."""

    state: Any


@dataclass
class CapturedTensor:
    name: str
    tensor: torch.Tensor  # contiguous, on the CPU, kept alive until the engine has copied it
    offset: int
    nbytes: int

    @property
    def dtype_name(self) -> str:
        return str(self.tensor.dtype).removeprefix("torch.")


@dataclass
class CapturedState:
    skeleton: bytes
    tensors: list[CapturedTensor]
    total_bytes: int

    def layout_meta(self) -> dict[str, Any]:
        return {
            "objects": [0, len(self.skeleton)],
            "tensors": [
                {"name": t.name, "dtype": t.dtype_name, "shape": list(t.tensor.shape), "offset": t.offset,
                 "nbytes": t.nbytes}
                for t in self.tensors
            ],
        }


def _is_stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


class BufferCache:
    """Copies of tensors kept across saves, one buffer per tensor name, reused while shape
    and dtype stay the same (allocation, above all of pinned memory, is slow)."""

    def __init__(self, device: str | torch.device | None = "cpu", pinned: bool = False) -> None:
        self._device = None if device is None else torch.device(device)  # None: the tensor's
        self._pinned = pinned
        self._buffers: dict[str, torch.Tensor] = {}

    def buffer_for(self, name: str, t: torch.Tensor) -> torch.Tensor:
        device = self._device or t.device
        buf = self._buffers.get(name)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.device != device:
            buf = torch.empty(t.shape, dtype=t.dtype, device=device, pin_memory=self._pinned)
            self._buffers[name] = buf
        return buf

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


class PinnedHostCache(BufferCache):
    """Page-locked host copies of device tensors, kept across saves.

    A device-to-host copy into pinned memory runs at the link's speed (55 GB/s on an H100
    versus 14 GB/s pageable, docs/BACKGROUND.md §4); allocating pinned memory is slow, so buffers are
    allocated at the first save and reused while name, shape and dtype stay the same. The
    engine copies them into staging before save() returns, so the next save may reuse them.
    """

    def __init__(self) -> None:
        super().__init__("cpu", pinned=True)


def _normalized(t: torch.Tensor, name: str) -> torch.Tensor:
    """A dense, detached view of `t` (sharing its storage and version counter when possible)."""
    if t.layout != torch.strided:
        raise CheckpointError(f"tensor {name!r}: layout {t.layout} is not supported (dense tensors only)")
    if t.is_quantized:
        raise CheckpointError(f"tensor {name!r}: quantized tensors are not supported")
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t


def host_copy_source(t: torch.Tensor, name: str, cache: PinnedHostCache | None, pending: set) -> torch.Tensor:
    if t.device.type == "cuda" and cache is not None:
        # Enqueued on the current stream, after the kernels that produced t; synced in capture().
        dst = cache.buffer_for(name, t)
        dst.copy_(t.contiguous(), non_blocking=True)
        pending.add(t.device)
        return dst
    if t.device.type != "cpu":
        with phase("d2h", nbytes=t.numel() * t.element_size()):
            t = t.to("cpu")
    return t.contiguous()


def lift_tensors(state: Mapping[str, Any]) -> tuple[bytes, list[tuple[str, torch.Tensor]]]:
    """Pickle `state` with every tensor replaced by a TensorRef; return the pickle and the
    (path, tensor) list, tensors still where they live (device, storage). Never mutates `state`."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of names to objects, got {type(state).__name__}")
    tensors: list[tuple[str, torch.Tensor]] = []

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            tensors.append((path, _normalized(obj, path)))
            return TensorRef(len(tensors) - 1)
        if _is_stateful(obj) and not isinstance(obj, Mapping):
            return StatefulRef(walk(obj.state_dict(), path))
        if isinstance(obj, Mapping):
            return {k: walk(v, f"{path}/{k}" if path else str(k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(walk(v, f"{path}/{i}") for i, v in enumerate(obj))
        return obj

    skeleton_tree = walk(state, "")
    try:
        skeleton = pickle.dumps(skeleton_tree, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise CheckpointError(f"state has a leaf that cannot be pickled: {e}") from e
    return skeleton, tensors


def lay_out(skeleton: bytes, host_tensors: list[tuple[str, torch.Tensor]]) -> CapturedState:
    """Place the skeleton and the (contiguous, host) tensors in one byte stream."""
    offset = len(skeleton)
    captured = []
    for name, t in host_tensors:
        offset = (offset + TENSOR_ALIGN - 1) // TENSOR_ALIGN * TENSOR_ALIGN
        nbytes = t.numel() * t.element_size()
        captured.append(CapturedTensor(name, t, offset, nbytes))
        offset += nbytes
    return CapturedState(skeleton, captured, offset)


def capture(state: Mapping[str, Any], host_cache: PinnedHostCache | None = None) -> CapturedState:
    """Lift the tensors out of `state` and pickle the rest. Never mutates `state`.

    CUDA tensors are copied to the host (into `host_cache`'s pinned buffers when given) and
    the copies are complete when this returns.
    """
    skeleton, tensors = lift_tensors(state)
    pending_devices: set = set()
    host = [(name, host_copy_source(t, name, host_cache, pending_devices)) for name, t in tensors]
    if pending_devices:
        with phase("d2h", nbytes=sum(t.numel() * t.element_size() for _, t in host if t.is_pinned())):
            for device in pending_devices:  # the non-blocking copies were queued above
                torch.cuda.current_stream(device).synchronize()
    return lay_out(skeleton, host)


# --- loading -------------------------------------------------------------------------------

_ALLOWED_GLOBALS = {
    ("builtins", n) for n in ("set", "frozenset", "complex", "slice", "range", "bytearray", "getattr")
} | {
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("collections", "deque"),
    ("ckptlab.core.state", "TensorRef"), ("ckptlab.core.state", "StatefulRef"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("torch", "Size"), ("torch", "device"), ("torch", "dtype"),
    ("datetime", "datetime"), ("datetime", "timedelta"), ("datetime", "date"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, extra: frozenset[str], source: str) -> None:
        super().__init__(io.BytesIO(data))
        self._extra = extra
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS or f"{module}.{name}" in self._extra:
            return super().find_class(module, name)
        if module == "numpy.dtypes" or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise UnsafePickleError(
            self._source,
            f"pickled leaf of type {module}.{name} is not on the allowlist; if you trust this checkpoint, "
            f"pass CheckpointConfig(allow_pickle=('{module}.{name}',))",
        )


def unpickle_skeleton(data: bytes, allow: tuple[str, ...] = (), source: str = "<checkpoint>") -> Any:
    try:
        return _RestrictedUnpickler(data, frozenset(allow), source).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # a torn or foreign pickle can raise almost anything
        from ckptlab.core.errors import CorruptCheckpointError

        raise CorruptCheckpointError(source, f"pickled objects do not load: {type(e).__name__}: {e}") from None


def check_loadable(skeleton: bytes, allow: tuple[str, ...]) -> None:
    """Fail at save time, not after a crash, if a pickled leaf would be refused on load."""
    unpickle_skeleton(skeleton, allow, source="<state being saved>")


def materialize(tree: Any, tensors: list[torch.Tensor]) -> Any:
    """Replace TensorRefs by tensors; StatefulRefs become their plain state dicts."""
    if isinstance(tree, TensorRef):
        return tensors[tree.index]
    if isinstance(tree, StatefulRef):
        return materialize(tree.state, tensors)
    if isinstance(tree, dict):
        return type(tree)((k, materialize(v, tensors)) for k, v in tree.items())
    if isinstance(tree, list):
        return [materialize(v, tensors) for v in tree]
    if isinstance(tree, tuple):
        return tuple(materialize(v, tensors) for v in tree)
    return tree


def dtype_from_name(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise CheckpointError(f"dtype {name!r} is not available in this torch build")
    return dt


def empty_like_entry(shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype_from_name(dtype))

