"""The manifest parser: round trips, and a hypothesis fuzz that only ever sees ManifestError."""
import json
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptlab import _engine
from ckptlab.core import CheckpointConfig, open_checkpointer
from ckptlab.core.errors import ManifestError
from ckptlab.core.manifest import MAGIC, TRAILER, decode_manifest, encode_manifest


def valid_body(**over):
    body = {
        "format": "ckptlab", "format_version": 1, "writer": "pccheck", "step": 4, "checksum": "crc32c",
        "io_mode": "buffered", "chunk_bytes": 65536, "total_bytes": 70000, "stream_bytes": 73728,
        "files": [{"name": "data_000.bin", "nbytes": 65536}, {"name": "data_001.bin", "nbytes": 8192}],
        "chunks": [[0, 0, 65536, 1], [1, 0, 8192, 2]],
        "meta": {"objects": [0, 100], "tensors": [{"name": "w", "dtype": "float32", "shape": [10, 1000],
                                                     "offset": 128, "nbytes": 40000}]},
    }
    body.update(over)
    return body


def test_round_trip():
    m = decode_manifest(encode_manifest(valid_body()))
    assert m.step == 4 and len(m.chunks) == 2 and m.tensors[0].shape == (10, 1000)


def test_engine_and_python_encoders_agree(ckpt_dir):
    import torch

    with open_checkpointer("pccheck", ckpt_dir, CheckpointConfig(chunk_bytes=65536)) as ck:
        ck.save(9, {"w": torch.ones(50_000)})
    raw = open(f"{ckpt_dir}/step_000000000009/MANIFEST", "rb").read()
    m = decode_manifest(raw)
    body = json.loads(raw[: -TRAILER.size])
    assert encode_manifest(body) == raw  # the C++ and Python encoders produce identical bytes
    assert m.step == 9 and m.writer == "pccheck"


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"format": "other"}, "format"),
        ({"writer": "evil"}, "writer"),
        ({"step": -1}, "step"),
        ({"step": True}, "step"),
        ({"files": [{"name": "../x", "nbytes": 1}]}, "plain file name"),
        ({"chunks": [[0, 0, 65536, 1]]}, "cover"),
        ({"chunks": [[0, 0, 65536, 1], [5, 0, 8192, 2]]}, "names file 5"),
        ({"chunks": [[0, 0, 65536, 1], [1, 4096, 8192, 2]]}, "past data_001.bin"),
        ({"chunks": [[0, 0, 65536, 1 << 40], [1, 0, 8192, 2]]}, "32-bit"),
        ({"total_bytes": 10**6}, "exceeds"),
        ({"meta": {"objects": [0, 100], "tensors": [{"name": "w", "dtype": "float33", "shape": [1], "offset": 0, "nbytes": 4}]}}, "dtype"),
        ({"meta": {"objects": [0, 100], "tensors": [{"name": "w", "dtype": "float32", "shape": [3], "offset": 0, "nbytes": 4}]}}, "does not match"),
        ({"meta": {"objects": [0, 10**9], "tensors": []}}, "outside"),
    ],
)
def test_inconsistent_manifests_are_refused(over, needle):
    with pytest.raises(ManifestError, match=needle):
        decode_manifest(encode_manifest(valid_body(**over)))


def test_checksum_and_trailer_problems():
    good = encode_manifest(valid_body())
    with pytest.raises(ManifestError, match="too short"):
        decode_manifest(good[:10])
    with pytest.raises(ManifestError, match="checksum mismatch"):
        decode_manifest(b"[" + good[1:])
    with pytest.raises(ManifestError, match="trailer"):
        decode_manifest(good[:-24] + b"X" * 24)
    body = good[:-TRAILER.size]
    with pytest.raises(ManifestError, match="format version 3 is not supported .*newer ckptlab.*reads 1 and 2"):
        decode_manifest(body + TRAILER.pack(MAGIC, len(body), _engine.crc32c(body), 3))
    with pytest.raises(ManifestError, match="format_version 1 does not match the trailer's 2"):
        decode_manifest(body + TRAILER.pack(MAGIC, len(body), _engine.crc32c(body), 2))


def valid_body_v2(**over):
    """Format 2: a tied weight, its transpose and a dtype view share storage 0."""
    body = valid_body(format_version=2, meta={
        "objects": [0, 100],
        "storages": [{"offset": 128, "nbytes": 40000}, {"offset": 40128, "nbytes": 8}],
        "tensors": [
            {"name": "w", "dtype": "float32", "shape": [10, 1000], "stride": [1000, 1], "storage": 0, "byte_offset": 0},
            {"name": "tied", "dtype": "float32", "shape": [10, 1000], "stride": [1000, 1], "storage": 0,
             "byte_offset": 0},
            {"name": "wT", "dtype": "float32", "shape": [1000, 10], "stride": [1, 1000], "storage": 0,
             "byte_offset": 0},
            {"name": "row", "dtype": "int32", "shape": [1000], "stride": [1], "storage": 0, "byte_offset": 36000},
            {"name": "wide", "dtype": "int16", "shape": [7, 4], "stride": [0, 1], "storage": 1, "byte_offset": 0},
        ]})
    body.update(over)
    return body


def test_v2_round_trip_and_v1_read_as_one_storage_per_tensor():
    m = decode_manifest(encode_manifest(valid_body_v2()))
    assert m.version == 2 and [s.nbytes for s in m.storages] == [40000, 8]
    assert m.tensors[2].stride == (1, 1000) and m.tensors[3].byte_offset == 36000
    m1 = decode_manifest(encode_manifest(valid_body()))
    assert m1.version == 1 and m1.storages[0].offset == 128 and m1.tensors[0].stride == (1000, 1)


def _v2_tensor(**over):
    t = {"name": "x", "dtype": "float32", "shape": [4], "stride": [1], "storage": 0, "byte_offset": 0}
    t.update(over)
    return t


@pytest.mark.parametrize("storages, tensor, reason", [
    ([{"offset": 128, "nbytes": 16}], _v2_tensor(shape=[5]), "reaches byte 20 of storage 0"),
    ([{"offset": 128, "nbytes": 16}], _v2_tensor(shape=[3], stride=[2]), "reaches byte 20"),
    ([{"offset": 128, "nbytes": 16}], _v2_tensor(byte_offset=2, shape=[1]), "not a multiple"),
    ([{"offset": 128, "nbytes": 16}], _v2_tensor(storage=1), "only 1 exist"),
    ([{"offset": 128, "nbytes": 16}], _v2_tensor(stride=[1, 1]), "stride must be a list"),
    ([{"offset": 128, "nbytes": 16}], _v2_tensor(stride=[-1]), "stride"),
    ([{"offset": 69990, "nbytes": 16}], _v2_tensor(), "outside the stream"),
    ([{"offset": 50, "nbytes": 16}], _v2_tensor(), "overlap"),
    ([{"offset": 128, "nbytes": 16}, {"offset": 136, "nbytes": 16}], _v2_tensor(), "overlap"),
    ("x", _v2_tensor(), "meta.storages must be a list"),
])
def test_v2_layout_problems(storages, tensor, reason):
    body = valid_body_v2(meta={"objects": [0, 100], "storages": storages, "tensors": [tensor]})
    with pytest.raises(ManifestError, match=reason):
        decode_manifest(encode_manifest(body))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    with pytest.raises(ManifestError):
        decode_manifest(data)


def _with_trailer(body: bytes, version: int = 1) -> bytes:
    return body + TRAILER.pack(MAGIC, len(body), _engine.crc32c(body), version)


@settings(max_examples=400, deadline=None)
@given(st.data(), st.sampled_from([1, 2]))
def test_fuzz_mutated_bodies_with_valid_checksums(data, version):
    """Past the checksum, the JSON validator must hold every invariant or say why not."""
    body = bytearray(encode_manifest(valid_body() if version == 1 else valid_body_v2())[:-TRAILER.size])
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    try:
        m = decode_manifest(_with_trailer(bytes(body), version))
    except ManifestError:
        return
    assert sum(c.nbytes for c in m.chunks) == m.stream_bytes >= m.total_bytes
    assert all(c.offset + c.nbytes <= m.files[c.file].nbytes for c in m.chunks)
    assert all(s.offset + s.nbytes <= m.total_bytes for s in m.storages)
    for t in m.tensors:  # every element of every view lies inside its storage
        reach = sum((d - 1) * s for d, s in zip(t.shape, t.stride)) + 1 if all(t.shape) else 0
        assert t.byte_offset + reach * (t.nbytes // max(1, math.prod(t.shape))) <= m.storages[t.storage].nbytes


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(list(valid_body().keys())), json_values)
def test_fuzz_structured_field_replacement(key, value):
    body = valid_body(**{key: value})
    try:
        raw = json.dumps(body).encode()
    except (ValueError, OverflowError):
        return
    try:
        decode_manifest(_with_trailer(raw))
    except ManifestError:
        pass
