"""The MANIFEST of a checkpoint: how it is encoded, parsed and validated.

Layout: a UTF-8 JSON body, then a 24-byte trailer
``magic b"CKLMAN01" | body length u64 | CRC32C(body) u32 | format version u32`` (little endian).
The C++ engine writes the same encoding (csrc/manifest_writer.cpp); docs/FORMAT.md is the
human description. decode_manifest() is the one parser: anything it returns is internally
consistent (chunks tile the stream, storages lie inside it, tensors inside their storage),
anything else is a ManifestError. Format 1 (each tensor its own contiguous range) is read as
format 2 (storages written once, tensors as views of them) with one storage per tensor.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

from ckptlab import _engine
from ckptlab.core.errors import ManifestError

MANIFEST_NAME = "MANIFEST"
FORMAT_VERSION = 2  # what this ckptlab writes (the engine's kFormatVersion, csrc/manifest_writer.hpp)
READABLE_VERSIONS = (1, 2)
MAGIC = b"CKLMAN01"
TRAILER = struct.Struct("<8sQII")
WRITERS = ("pccheck", "torchsave")
MAX_MANIFEST_BYTES = 1 << 30
_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

# dtype name -> bytes per element; names are torch's (str(dtype) without "torch.").
DTYPE_SIZES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
    "complex128": 16, "complex64": 8, "complex32": 4,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1,
    "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1,
}


@dataclass(frozen=True)
class FileEntry:
    name: str
    nbytes: int


@dataclass(frozen=True)
class Chunk:
    file: int
    offset: int
    nbytes: int
    crc: int


@dataclass(frozen=True)
class StorageEntry:
    """A range of the stream holding one storage's bytes (written once, shared by views)."""

    offset: int
    nbytes: int


@dataclass(frozen=True)
class TensorEntry:
    """A tensor as a view of a storage: strides in elements, byte offset into the storage."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage: int
    byte_offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class Manifest:
    writer: str
    step: int
    io_mode: str
    chunk_bytes: int
    total_bytes: int
    stream_bytes: int
    files: tuple[FileEntry, ...]
    chunks: tuple[Chunk, ...]
    meta: dict[str, Any]
    tensors: tuple[TensorEntry, ...]
    objects: tuple[int, int]  # (offset, nbytes) of the pickled skeleton in the stream
    storages: tuple[StorageEntry, ...] = ()
    version: int = FORMAT_VERSION

    def chunk_stream_offset(self, index: int) -> int:
        return index * self.chunk_bytes


def encode_manifest(body: dict[str, Any]) -> bytes:
    """Encode a manifest body (used by the torchsave writer and by tests); the trailer
    carries the body's format_version (FORMAT_VERSION when it has none)."""
    raw = (json.dumps(body, separators=(",", ":"), sort_keys=False) + "\n").encode()
    version = body.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version < 1 << 32:
        version = FORMAT_VERSION
    return raw + TRAILER.pack(MAGIC, len(raw), _engine.crc32c(raw), version)


def _fail(source: str, reason: str) -> ManifestError:
    return ManifestError(source, f"bad manifest: {reason}")


def _int(value: Any, what: str, source: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _fail(source, f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _dict(value: Any, what: str, source: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(source, f"{what} must be an object")
    return value


def decode_manifest(data: bytes, source: str = "<manifest>") -> Manifest:
    """Parse and validate manifest bytes; raises ManifestError with the reason."""
    if len(data) < TRAILER.size:
        raise _fail(source, f"{len(data)} bytes is too short for the {TRAILER.size}-byte trailer (torn or empty)")
    magic, body_len, crc, version = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    if magic != MAGIC:
        raise _fail(source, "no ckptlab manifest trailer (foreign file or torn write)")
    if body_len != len(data) - TRAILER.size:
        raise _fail(source, f"body length {body_len} does not match the file ({len(data) - TRAILER.size})")
    if version not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        newer = " (written by a newer ckptlab?)" if version > FORMAT_VERSION else ""
        raise _fail(source, f"format version {version} is not supported{newer}; this ckptlab reads {readable}")
    body = bytes(data[:body_len])
    actual = _engine.crc32c(body)
    if actual != crc:
        raise _fail(source, f"checksum mismatch (CRC32C {actual:#010x}, trailer says {crc:#010x})")
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(source, f"body is not JSON: {e}") from None
    return _validate(_dict(doc, "manifest", source), version, source)


def _validate(doc: dict, version: int, source: str) -> Manifest:
    if doc.get("format") != "ckptlab":
        raise _fail(source, "format is not 'ckptlab'")
    if doc.get("format_version") != version:
        raise _fail(source, f"format_version {doc.get('format_version')!r} does not match the trailer's {version}")
    writer = doc.get("writer")
    if writer not in WRITERS:
        raise _fail(source, f"unknown writer {writer!r}")
    if doc.get("checksum") != "crc32c":
        raise _fail(source, f"unknown checksum {doc.get('checksum')!r}")
    step = _int(doc.get("step"), "step", source)
    io_mode = doc.get("io_mode", "buffered")
    if io_mode not in ("direct", "buffered"):
        raise _fail(source, f"unknown io_mode {io_mode!r}")
    chunk_bytes = _int(doc.get("chunk_bytes"), "chunk_bytes", source, 1)
    total = _int(doc.get("total_bytes"), "total_bytes", source)
    stream = _int(doc.get("stream_bytes"), "stream_bytes", source)
    if total > stream:
        raise _fail(source, f"total_bytes {total} exceeds stream_bytes {stream}")

    raw_files = doc.get("files")
    if not isinstance(raw_files, list) or not raw_files:
        raise _fail(source, "files must be a non-empty list")
    files = []
    for i, f in enumerate(raw_files):
        f = _dict(f, f"files[{i}]", source)
        name = f.get("name")
        if not isinstance(name, str) or not _SAFE_FILE_NAME.match(name) or name == MANIFEST_NAME:
            raise _fail(source, f"files[{i}].name {name!r} is not a plain file name")
        files.append(FileEntry(name, _int(f.get("nbytes"), f"files[{i}].nbytes", source)))
    if len({f.name for f in files}) != len(files):
        raise _fail(source, "duplicate file names")

    raw_chunks = doc.get("chunks")
    if not isinstance(raw_chunks, list) or not raw_chunks:
        raise _fail(source, "chunks must be a non-empty list")
    chunks = []
    covered = 0
    for i, c in enumerate(raw_chunks):
        if not isinstance(c, list) or len(c) != 4:
            raise _fail(source, f"chunks[{i}] must be [file, offset, nbytes, crc32c]")
        fi = _int(c[0], f"chunks[{i}].file", source)
        off = _int(c[1], f"chunks[{i}].offset", source)
        n = _int(c[2], f"chunks[{i}].nbytes", source, 1)
        crc = _int(c[3], f"chunks[{i}].crc", source)
        if fi >= len(files):
            raise _fail(source, f"chunks[{i}] names file {fi}, only {len(files)} exist")
        if off + n > files[fi].nbytes:
            raise _fail(source, f"chunks[{i}] ends at {off + n}, past {files[fi].name} ({files[fi].nbytes} bytes)")
        if crc >= 1 << 32:
            raise _fail(source, f"chunks[{i}].crc is not a 32-bit value")
        if n > chunk_bytes or (n < chunk_bytes and i != len(raw_chunks) - 1):
            raise _fail(source, f"chunks[{i}] has {n} bytes; only the last chunk may be shorter than {chunk_bytes}")
        covered += n
        chunks.append(Chunk(fi, off, n, crc))
    if covered != stream:
        raise _fail(source, f"chunks cover {covered} bytes, stream_bytes says {stream}")
    _check_no_overlap(files, chunks, source)

    meta = _dict(doc.get("meta", {}), "meta", source)
    tensors: tuple[TensorEntry, ...] = ()
    storages: tuple[StorageEntry, ...] = ()
    objects = (0, 0)
    if writer == "pccheck":
        layout = _validate_layout_v1 if version == 1 else _validate_layout
        tensors, storages, objects = layout(meta, total, source)
    return Manifest(writer, step, io_mode, chunk_bytes, total, stream, tuple(files), tuple(chunks), meta,
                    tensors, objects, storages, version)


def _check_no_overlap(files: list[FileEntry], chunks: list[Chunk], source: str) -> None:
    per_file: dict[int, list[tuple[int, int]]] = {}
    for c in chunks:
        per_file.setdefault(c.file, []).append((c.offset, c.offset + c.nbytes))
    for fi, spans in per_file.items():
        spans.sort()
        for (a0, a1), (b0, _) in zip(spans, spans[1:]):
            if b0 < a1:
                raise _fail(source, f"chunks overlap in {files[fi].name} at offset {b0}")


def _objects(meta: dict, total: int, source: str) -> tuple[int, int]:
    objects = meta.get("objects")
    if not isinstance(objects, list) or len(objects) != 2:
        raise _fail(source, "meta.objects must be [offset, nbytes]")
    o_off = _int(objects[0], "meta.objects offset", source)
    o_n = _int(objects[1], "meta.objects nbytes", source)
    if o_off + o_n > total:
        raise _fail(source, "meta.objects lies outside the stream")
    return o_off, o_n


def _tensor_head(t: Any, i: int, source: str) -> tuple[str, str, tuple[int, ...]]:
    t = _dict(t, f"meta.tensors[{i}]", source)
    name = t.get("name")
    if not isinstance(name, str):
        raise _fail(source, f"meta.tensors[{i}].name must be a string")
    dtype = t.get("dtype")
    if dtype not in DTYPE_SIZES:
        raise _fail(source, f"tensor {name!r}: unknown dtype {dtype!r}")
    shape = t.get("shape")
    if not isinstance(shape, list) or len(shape) > 64:
        raise _fail(source, f"tensor {name!r}: shape must be a list of at most 64 sizes")
    return name, dtype, tuple(_int(d, f"tensor {name!r} shape", source) for d in shape)


def _tensor_list(meta: dict, source: str) -> list:
    raw = meta.get("tensors")
    if not isinstance(raw, list):
        raise _fail(source, "meta.tensors must be a list")
    return raw


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, n = [], 1
    for d in reversed(shape):
        strides.append(n)
        n *= max(d, 1)
    return tuple(reversed(strides))


def _validate_layout_v1(meta: dict, total: int, source: str):
    """Format 1: every tensor its own C-contiguous range of the stream (one storage each)."""
    objects = _objects(meta, total, source)
    tensors, storages = [], []
    for i, t in enumerate(_tensor_list(meta, source)):
        name, dtype, dims = _tensor_head(t, i, source)
        off = _int(t.get("offset"), f"tensor {name!r} offset", source)
        n = _int(t.get("nbytes"), f"tensor {name!r} nbytes", source)
        if n != math.prod(dims) * DTYPE_SIZES[dtype]:
            raise _fail(source, f"tensor {name!r}: {n} bytes does not match {dtype}{list(dims)}")
        if off + n > total:
            raise _fail(source, f"tensor {name!r} lies outside the stream")
        storages.append(StorageEntry(off, n))
        tensors.append(TensorEntry(name, dtype, dims, _contiguous_strides(dims), i, 0))
    return tuple(tensors), tuple(storages), objects


def _validate_layout(meta: dict, total: int, source: str):
    """Format 2: storages (each written once) and tensors as views of them."""
    objects = _objects(meta, total, source)
    raw_storages = meta.get("storages")
    if not isinstance(raw_storages, list):
        raise _fail(source, "meta.storages must be a list")
    storages = []
    for i, s in enumerate(raw_storages):
        s = _dict(s, f"meta.storages[{i}]", source)
        off = _int(s.get("offset"), f"meta.storages[{i}].offset", source)
        n = _int(s.get("nbytes"), f"meta.storages[{i}].nbytes", source)
        if off + n > total:
            raise _fail(source, f"meta.storages[{i}] lies outside the stream")
        storages.append(StorageEntry(off, n))
    spans = sorted([(s.offset, s.offset + s.nbytes, f"meta.storages[{i}]") for i, s in enumerate(storages) if s.nbytes]
                   + ([(objects[0], objects[0] + objects[1], "meta.objects")] if objects[1] else []))
    for (_, a1, a), (b0, _, b) in zip(spans, spans[1:]):
        if b0 < a1:
            raise _fail(source, f"{a} and {b} overlap in the stream")
    tensors = []
    for i, t in enumerate(_tensor_list(meta, source)):
        name, dtype, dims = _tensor_head(t, i, source)
        stride = t.get("stride")
        if not isinstance(stride, list) or len(stride) != len(dims):
            raise _fail(source, f"tensor {name!r}: stride must be a list as long as its shape")
        strides = tuple(_int(s, f"tensor {name!r} stride", source) for s in stride)
        si = _int(t.get("storage"), f"tensor {name!r} storage", source)
        if si >= len(storages):
            raise _fail(source, f"tensor {name!r} names storage {si}, only {len(storages)} exist")
        off = _int(t.get("byte_offset"), f"tensor {name!r} byte_offset", source)
        size = DTYPE_SIZES[dtype]
        if off % size:
            raise _fail(source, f"tensor {name!r}: byte_offset {off} is not a multiple of its {size}-byte elements")
        if all(dims):
            end = off + (sum((d - 1) * s for d, s in zip(dims, strides)) + 1) * size
            if end > storages[si].nbytes:
                raise _fail(source, f"tensor {name!r} reaches byte {end} of storage {si} ({storages[si].nbytes} bytes)")
        tensors.append(TensorEntry(name, dtype, dims, strides, si, off))
    return tuple(tensors), tuple(storages), objects
