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
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ckptlab.core.errors import CheckpointError, UnsafePickleError
from ckptlab.core.manifest import TensorEntry
from ckptlab.profiling.phases import phase

TENSOR_ALIGN = 64


@dataclass(frozen=True)
class TensorRef:
    """Placeholder for the index-th tensor of a checkpoint inside the pickled skeleton."""

    index: int

    def __reduce__(self) -> tuple[type, tuple[int]]:  # a fifth of the default's pickling time per tensor
        return TensorRef, (self.index,)


_REFS: list[TensorRef] = []  # _REFS[i] is TensorRef(i), made once (frozen dataclasses are slow to make)
_REFS_GROWING = threading.Lock()  # checkpointers on several threads may lift at once


def _tensor_ref(index: int) -> TensorRef:
    if index >= len(_REFS):
        with _REFS_GROWING:
            while len(_REFS) <= index:
                _REFS.append(TensorRef(len(_REFS)))
    return _REFS[index]


@dataclass(frozen=True)
class PerRank:
    """A state entry each rank writes in full in its own part (RNG state, data position).
    Where there is one rank (no torch.distributed, a world of one, each DCP rank's side file)
    the entry is that rank's own and is saved as its plain value."""

    value: Any


def per_rank(value: Any) -> PerRank:
    """Mark ``value`` as this rank's own: ``state["rng"] = per_rank(torch.get_rng_state())``.
    Everything else in a saved state is taken to be replicated (DDP) and written once in total."""
    return PerRank(value)


def without_per_rank(obj: Any) -> Any:
    """``obj`` with every per_rank marker in its dicts, lists and tuples replaced by its value
    (what one rank saves of them); the containers are copied only where a marker was found."""
    if isinstance(obj, PerRank):
        return without_per_rank(obj.value)
    if isinstance(obj, dict):
        items = {k: without_per_rank(v) for k, v in obj.items()}
        return items if any(items[k] is not v for k, v in obj.items()) else obj
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        items = [without_per_rank(v) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return items if isinstance(obj, list) else tuple(items)
    return obj


@dataclass(frozen=True)
class PerRankRef:
    """Placeholder for a per-rank entry (core/distributed.py per_rank) in the skeleton of a
    multi-rank checkpoint; each rank's part holds the entry itself under ``key``."""

    key: str


@dataclass(frozen=True)
class StatefulRef:
    """An object that was saved through its state_dict(); load calls load_state_dict()."""

    state: Any


@dataclass
class StoragePiece:
    """A span of one live storage, as a 1-D uint8 tensor over it, and its place in a region."""

    source: torch.Tensor
    offset: int


@dataclass
class Region:
    """Bytes of memory that tensors of the state live in, stored once however many tensors
    (ties, views, dtype views) use them: the span of one storage's tensors, or of storages
    that overlap in memory (``torch.from_numpy`` twice on one array)."""

    name: str  # the path of its first tensor; keys the buffers a snapshot reuses across saves
    device: torch.device
    nbytes: int
    pieces: list[StoragePiece]
    members: list[tuple[str, torch.Tensor]]  # the state's tensors in it (their version counters)


@dataclass
class StoragePlan:
    regions: list[Region]
    views: list[TensorEntry]  # one per lifted tensor, in TensorRef order


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[first, last) byte address of t's elements (strides may be 0, never negative in torch)."""
    lo = t.data_ptr()
    if t.numel() == 0:
        return lo, lo
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return lo, lo + (last + 1) * t.element_size()


def _alias(storage: torch.UntypedStorage, device: torch.device, start: int, nbytes: int) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=device).set_(storage, start, (nbytes,), (1,))


@dataclass
class _Group:
    """The tensors of one storage, before groups that alias memory are merged."""

    storage: torch.UntypedStorage
    device: torch.device
    base: int  # the storage's first byte address
    lo: int
    hi: int
    first: int  # index of its first tensor (regions keep capture order)
    members: list[int]
    align: int  # largest element size among its tensors


def plan_storages(tensors: list[tuple[str, torch.Tensor]]) -> StoragePlan:
    """Find the memory the lifted tensors share, so each byte is copied and written once.

    Tensors on one storage share the region spanning all of them (never more of the storage
    than they reach); storages whose spans overlap in memory are merged into one region.
    The region starts at a multiple of its largest element size from its storage's start, so
    every view's byte offset is a multiple of its own element size (a loader can set_() it).
    """
    groups: dict[tuple[torch.device, int], _Group] = {}
    empty: list[int] = []
    spans: list[tuple[int, int]] = []
    for i, (_, t) in enumerate(tensors):
        lo, hi = _byte_span(t)
        spans.append((lo, hi))
        if hi == lo:
            empty.append(i)
            continue
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        g = groups.get(key)
        if g is None:
            groups[key] = _Group(storage, t.device, storage.data_ptr(), lo, hi, i, [i], t.element_size())
        else:
            g.lo, g.hi, g.align = min(g.lo, lo), max(g.hi, hi), max(g.align, t.element_size())
            g.members.append(i)
    for g in groups.values():
        g.lo = g.base + (g.lo - g.base) // g.align * g.align

    merged: list[list[_Group]] = []
    by_device: dict[torch.device, list[_Group]] = {}
    for g in groups.values():
        by_device.setdefault(g.device, []).append(g)
    for device_groups in by_device.values():
        device_groups.sort(key=lambda g: g.lo)
        for g in device_groups:
            if merged and merged[-1][0].device == g.device and g.lo < max(x.hi for x in merged[-1]):
                merged[-1].append(g)
            else:
                merged.append([g])

    regions: list[Region] = []
    views: list[TensorEntry | None] = [None] * len(tensors)
    order = sorted(merged, key=lambda gs: min(g.first for g in gs))
    starts = [(min(g.first for g in gs), gs) for gs in order] + [(i, None) for i in empty]
    names: set[str] = set()
    for first, gs in sorted(starts, key=lambda x: x[0]):
        name = _unique_name(tensors[first][0], names)
        index = len(regions)
        if gs is None:  # an empty tensor: a region of no bytes of its own
            t = tensors[first][1]
            regions.append(Region(name, t.device, 0, [], [tensors[first]]))
            views[first] = TensorEntry(tensors[first][0], dtype_name(t.dtype), tuple(t.shape), tuple(t.stride()),
                                       index, 0)
            continue
        lo, hi = min(g.lo for g in gs), max(g.hi for g in gs)
        pieces = [StoragePiece(_alias(g.storage, g.device, g.lo - g.base, g.hi - g.lo), g.lo - lo) for g in gs]
        members = sorted(i for g in gs for i in g.members)
        regions.append(Region(name, gs[0].device, hi - lo, pieces, [tensors[i] for i in members]))
        for i in members:
            t_name, t = tensors[i]
            offset = spans[i][0] - lo
            if offset % t.element_size():
                raise CheckpointError(f"tensor {t_name!r} lies at byte {offset} of memory it shares with "
                                      f"{tensors[members[0]][0]!r}, not a multiple of its element size")
            views[i] = TensorEntry(t_name, dtype_name(t.dtype), tuple(t.shape), tuple(t.stride()), index, offset)
    assert all(v is not None for v in views)
    return StoragePlan(regions, views)  # type: ignore[arg-type]


def _unique_name(name: str, taken: set[str]) -> str:
    """Paths can collide ("a/b" as one key or nested); buffer keys must not."""
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}#{k}", k + 1
    taken.add(candidate)
    return candidate


@dataclass
class CapturedStorage:
    buffer: torch.Tensor  # 1-D uint8 on the CPU, kept alive until the engine has copied it
    offset: int           # in the byte stream

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()


@dataclass
class CapturedState:
    skeleton: bytes
    storages: list[CapturedStorage]
    views: list[TensorEntry]
    total_bytes: int

    def layout_meta(self) -> dict[str, Any]:
        """The manifest's meta for this layout (format version 2, docs/FORMAT.md)."""
        return _layout_meta(len(self.skeleton), [(s.offset, s.nbytes) for s in self.storages], self.views)

    def host_tensors(self) -> list[torch.Tensor]:
        """The state's tensors as views of the captured host buffers (sharing as they did)."""
        return views_on([s.buffer for s in self.storages], self.views)

    def standalone_buffers(self) -> list[torch.Tensor]:
        """The buffers, each a copy where it is a window into a larger live storage, so that
        torch.save (which writes whole storages) writes the region and nothing more."""
        return [b if b.storage_offset() == 0 and b.untyped_storage().nbytes() == b.numel() else b.clone()
                for b in (s.buffer for s in self.storages)]


def _layout_meta(skeleton_bytes: int, storages: list[tuple[int, int]], views: list[TensorEntry]) -> dict[str, Any]:
    return {
        "objects": [0, skeleton_bytes],
        "storages": [{"offset": offset, "nbytes": nbytes} for offset, nbytes in storages],
        "tensors": [
            {"name": v.name, "dtype": v.dtype, "shape": list(v.shape), "stride": list(v.stride),
             "storage": v.storage, "byte_offset": v.byte_offset}
            for v in views
        ],
    }


def views_on(buffers: list[torch.Tensor], views: list[TensorEntry]) -> list[torch.Tensor]:
    """Tensors over 1-D uint8 `buffers`, one per view (captured, or read from a manifest)."""
    out = []
    for v in views:
        dtype = dtype_from_name(v.dtype)
        buf = buffers[v.storage]
        start = buf.storage_offset() + v.byte_offset
        out.append(torch.empty(0, dtype=dtype, device=buf.device)
                   .set_(buf.untyped_storage(), start // dtype.itemsize, v.shape, v.stride))
    return out


def to_device(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Move tensors to `device`, each storage once, keeping which tensors share one."""
    moved: dict[int, torch.UntypedStorage] = {}
    out = []
    for t in tensors:
        storage = t.untyped_storage()
        key = storage.data_ptr() if storage.nbytes() else -1 - len(out)
        if key not in moved:
            moved[key] = _alias(storage, t.device, 0, storage.nbytes()).to(device).untyped_storage()
        out.append(torch.empty(0, dtype=t.dtype, device=device).set_(moved[key], t.storage_offset(), t.shape,
                                                                        t.stride()))
    return out


def stored_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages under `tensors`."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def _normalized(t: torch.Tensor, name: str) -> torch.Tensor:
    """A dense view of `t` outside autograd (sharing its storage and version counter when
    possible); per tensor of every save, so the common case costs a few attribute reads."""
    if t.layout != torch.strided:
        raise CheckpointError(f"tensor {name!r}: layout {t.layout} is not supported (dense tensors only)")
    if t.is_quantized:
        raise CheckpointError(f"tensor {name!r}: quantized tensors are not supported")
    if t.requires_grad or type(t) is not torch.Tensor:  # a plain tensor outside autograd is used as it is
        t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t


def _is_stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


class BufferCache:
    """Byte buffers kept across saves, one per region name, reused while the size and
    device stay the same (allocation, above all of pinned memory, is slow)."""

    def __init__(self, device: str | torch.device | None = "cpu", pinned: bool = False) -> None:
        self._device = None if device is None else torch.device(device)  # None: the region's
        self._pinned = pinned
        self._buffers: dict[str, torch.Tensor] = {}

    def buffer_for(self, region: Region) -> torch.Tensor:
        device = self._device or region.device
        buf = self._buffers.get(region.name)
        if buf is None or buf.numel() != region.nbytes or buf.device != device:
            buf = torch.empty(region.nbytes, dtype=torch.uint8, device=device, pin_memory=self._pinned)
            self._buffers[region.name] = buf
        return buf

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self._buffers.values())


class PinnedHostCache(BufferCache):
    """Page-locked host copies of device memory, kept across saves.

    A device-to-host copy into pinned memory runs at the link's speed (55 GB/s on an H100
    versus 14 GB/s pageable, docs/BACKGROUND.md §4); allocating pinned memory is slow, so buffers are
    allocated at the first save and reused while region name and size stay the same. The
    engine copies them into staging before save() returns, so the next save may reuse them.
    """

    def __init__(self) -> None:
        super().__init__("cpu", pinned=True)


def copy_pieces(dst: torch.Tensor, region: Region, non_blocking: bool = False) -> None:
    for p in region.pieces:
        dst[p.offset:p.offset + p.source.numel()].copy_(p.source, non_blocking=non_blocking)


def host_region(region: Region, cache: PinnedHostCache | None, pending: set) -> torch.Tensor:
    """The region's bytes on the host: live memory itself for one CPU storage (the engine
    copies it before save() returns), else a copy (CUDA ones queued; synced in capture())."""
    if region.device.type == "cpu" and len(region.pieces) == 1:
        return region.pieces[0].source
    if region.device.type == "cuda" and cache is not None:
        dst = cache.buffer_for(region)  # enqueued on the current stream, after the producing kernels
        copy_pieces(dst, region, non_blocking=True)
        pending.add(region.device)
        return dst
    dst = torch.empty(region.nbytes, dtype=torch.uint8)
    if region.device.type == "cpu":
        copy_pieces(dst, region)
    else:
        with phase("d2h", nbytes=region.nbytes):
            copy_pieces(dst, region)
    return dst


_PLAIN_LEAVES = frozenset({int, float, bool, str, bytes, complex, type(None)})


def _immutable_key(key: Any) -> bool:
    """A plain builtin, or an exact tuple of such (recursively): nothing can change it in place."""
    if type(key) in _PLAIN_LEAVES:
        return True
    return type(key) is tuple and all(map(_immutable_key, key))


@dataclass
class LiftedState:
    """A state taken apart: `tree` is the state with every tensor replaced by a TensorRef, in
    containers of its own; `tensors` the (path, tensor) list, still where they live.

    `frozen`: every key and leaf of `tree` is an immutable builtin (or a ref), so nothing
    training does after save() can change it, and pickling it may wait for the snapshot
    thread. Any other leaf (an array, a set, a user's object) is pickled in save()."""

    tree: Any
    tensors: list[tuple[str, torch.Tensor]]
    frozen: bool

    def skeleton(self) -> bytes:
        try:
            return pickle.dumps(self.tree, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise CheckpointError(f"state has a leaf that cannot be pickled: {e}") from e


def lift_state(state: Mapping[str, Any]) -> LiftedState:
    """Walk `state`: call each stateful object's state_dict(), lift the tensors out, copy the
    containers. Never mutates `state`."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of names to objects, got {type(state).__name__}")
    tensors: list[tuple[str, torch.Tensor]] = []
    loose: list[Any] = []  # leaves or keys that may be mutable: the tree must be pickled at once

    def keys_plain(obj: Mapping) -> None:
        if not _PLAIN_LEAVES.issuperset(map(type, obj)) and not all(map(_immutable_key, obj)):
            loose.append(obj)

    def walk(obj: Any, path: str) -> Any:
        if type(obj) in _PLAIN_LEAVES:  # most leaves (steps, lrs, betas' floats): no attribute probing
            return obj
        if isinstance(obj, torch.Tensor):
            tensors.append((path, _normalized(obj, path)))
            return _tensor_ref(len(tensors) - 1)
        if isinstance(obj, dict):  # never a stateful object; a C-level check before the ABC ones
            keys_plain(obj)
            return {k: v if type(v) in _PLAIN_LEAVES else walk(v, f"{path}/{k}" if path else str(k))
                    for k, v in obj.items()}
        if _is_stateful(obj) and not isinstance(obj, Mapping):
            return StatefulRef(walk(obj.state_dict(), path))
        if isinstance(obj, Mapping):
            keys_plain(obj)
            return {k: walk(v, f"{path}/{k}" if path else str(k)) for k, v in obj.items()}
        if isinstance(obj, list) or isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            if _PLAIN_LEAVES.issuperset(map(type, obj)):  # a run of numbers (an RNG's words): one C loop
                return list(obj) if isinstance(obj, list) else tuple(obj)
            items = [v if type(v) in _PLAIN_LEAVES else walk(v, f"{path}/{i}") for i, v in enumerate(obj)]
            return items if isinstance(obj, list) else tuple(items)
        if isinstance(obj, PerRank):  # one rank (a multi-rank save took its markers out first)
            return walk(obj.value, path)
        loose.append(obj)
        return obj

    tree = walk(state, "")
    return LiftedState(tree, tensors, frozen=not loose)


def lift_tensors(state: Mapping[str, Any]) -> tuple[bytes, list[tuple[str, torch.Tensor]]]:
    """Pickle `state` with every tensor replaced by a TensorRef; return the pickle and the
    (path, tensor) list, tensors still where they live (device, storage). Never mutates `state`."""
    lifted = lift_state(state)
    return lifted.skeleton(), lifted.tensors


def _offsets(skeleton: bytes, sizes: list[int]) -> tuple[list[int], int]:
    offsets = []
    offset = len(skeleton)
    for n in sizes:
        offset = (offset + TENSOR_ALIGN - 1) // TENSOR_ALIGN * TENSOR_ALIGN
        offsets.append(offset)
        offset += n
    return offsets, offset


def planned_total_bytes(skeleton: bytes, plan: StoragePlan) -> int:
    """The stream size lay_out() will give `plan` (to size staging before the copies exist)."""
    return _offsets(skeleton, [r.nbytes for r in plan.regions])[1]


def stream_layout(skeleton: bytes, plan: StoragePlan) -> tuple[list[int], int, dict[str, Any]]:
    """Where lay_out() would place each region (stream offsets), the stream's size, and the
    manifest's layout meta, without any host buffer (a snapshot streamed into staging)."""
    sizes = [r.nbytes for r in plan.regions]
    offsets, total = _offsets(skeleton, sizes)
    return offsets, total, _layout_meta(len(skeleton), list(zip(offsets, sizes)), plan.views)


def lay_out(skeleton: bytes, plan: StoragePlan, buffers: list[torch.Tensor]) -> CapturedState:
    """Place the skeleton and each region's host buffer (1-D uint8) in one byte stream."""
    offsets, total = _offsets(skeleton, [b.numel() for b in buffers])
    return CapturedState(skeleton, [CapturedStorage(b, o) for b, o in zip(buffers, offsets)], plan.views, total)


def capture(state: Mapping[str, Any], host_cache: PinnedHostCache | None = None) -> CapturedState:
    """Lift the tensors out of `state`, find the storage they share, pickle the rest. Never
    mutates `state`.

    CUDA memory is copied to the host (into `host_cache`'s pinned buffers when given), each
    region once, and the copies are complete when this returns.
    """
    return capture_lifted(*lift_tensors(state), host_cache)


def capture_lifted(skeleton: bytes, tensors: list[tuple[str, torch.Tensor]],
                   host_cache: PinnedHostCache | None = None) -> CapturedState:
    """capture() of a state lift_tensors() has already taken apart."""
    plan = plan_storages(tensors)
    pending_devices: set = set()
    host = [host_region(r, host_cache, pending_devices) for r in plan.regions]
    if pending_devices:
        with phase("d2h", nbytes=sum(b.numel() for b in host if b.is_pinned())):
            for device in pending_devices:  # the non-blocking copies were queued above
                torch.cuda.current_stream(device).synchronize()
    return lay_out(skeleton, plan, host)


# --- loading -------------------------------------------------------------------------------

_ALLOWED_GLOBALS = {
    ("builtins", n) for n in ("set", "frozenset", "complex", "slice", "range", "bytearray", "getattr")
} | {
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("collections", "deque"),
    ("ckptlab.core.state", "TensorRef"), ("ckptlab.core.state", "StatefulRef"),
    ("ckptlab.core.state", "PerRankRef"),
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


def dtype_name(dtype: torch.dtype) -> str:
    """The name the manifest stores ("float32"); :func:`dtype_from_name` reads it back."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise CheckpointError(f"dtype {name!r} is not available in this torch build")
    return dt


def empty_like_entry(shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype_from_name(dtype))

