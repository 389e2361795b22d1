"""Shared storage: each storage is written once (views are offsets and strides into it), a
plain load returns tensors that share storage as torch.load does, an in-place load keeps a
model's ties, and checkpoints of format version 1 (tests/core/fixtures/format1) still load."""
import importlib.util
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptlab.core import CheckpointConfig, list_checkpoints, load_latest, open_checkpointer
from ckptlab.core.errors import ManifestError
from ckptlab.core.manifest import encode_manifest, decode_manifest
from ckptlab.core.recovery import read_manifest
from ckptlab.core.state import capture

KINDS = ["pccheck", "torchsave"]
CFG = CheckpointConfig(chunk_bytes=64 << 10, writer_threads=2, keep_last=0, prefault_staging=False)
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_format1", os.path.join(FIXTURES, "make_format1.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _span(t: torch.Tensor) -> tuple[int, int]:
    """[first, last) byte address of t's elements in memory."""
    if t.numel() == 0:
        return t.data_ptr(), t.data_ptr()
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def unique_bytes(tensors) -> int:
    """Bytes of the spanned region of every storage, each storage counted once; the region
    starts at a multiple of its largest element size from the storage's start (docs/FORMAT.md)."""
    spans: dict[int, tuple[int, int, int]] = {}
    for t in tensors:
        lo, hi = _span(t)
        if hi == lo:
            continue
        key = t.untyped_storage().data_ptr()
        a, b, e = spans.get(key, (lo, hi, 1))
        spans[key] = (min(a, lo), max(b, hi), max(e, t.element_size()))
    return sum(hi - (base + (lo - base) // e * e) for base, (lo, hi, e) in spans.items())


def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def step_dir(ckpt_dir: str, step: int) -> str:
    return os.path.join(ckpt_dir, f"step_{step:012d}")


# --- GPT-2 from transformers: tied embeddings --------------------------------------------

def gpt2(seed: int):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=1000,
                                      bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie this file is about
    return model


def test_gpt2_pccheck_checkpoint_is_its_unique_bytes(ckpt_dir):
    model = gpt2(0)
    sd = model.state_dict()
    assert same_storage(sd["lm_head.weight"], sd["transformer.wte.weight"])
    unique = unique_bytes(sd.values())
    everything = sum(t.numel() * t.element_size() for t in sd.values())
    assert everything - unique == 1000 * 32 * 4  # the tied embedding, counted once too many
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        ck.save(1, {"model": model})
    m = read_manifest(step_dir(ckpt_dir, 1))
    on_disk = sum(os.path.getsize(os.path.join(step_dir(ckpt_dir, 1), f.name)) for f in m.files)
    assert on_disk == m.stream_bytes < unique + 1000 * 32 * 4
    # the stream: skeleton, then each storage once, 64-byte aligned, padded to 4 KiB
    bound = m.objects[1] + unique + 63 * len(sd)
    assert m.total_bytes <= bound and m.stream_bytes == -(-m.total_bytes // 4096) * 4096
    assert sum(s.nbytes for s in m.storages) == unique


def test_gpt2_torchsave_checkpoint_is_its_unique_bytes(ckpt_dir):
    model = gpt2(0)
    unique = unique_bytes(model.state_dict().values())
    with open_checkpointer("torchsave", ckpt_dir, CFG) as ck:
        ck.save(1, {"model": model})
    size = os.path.getsize(os.path.join(step_dir(ckpt_dir, 1), "state.pt"))
    assert unique < size < unique + 64 << 10  # zip records and the skeleton, not a second wte


@pytest.mark.parametrize("kind", KINDS)
def test_gpt2_plain_load_returns_tied_tensors_shared(kind, ckpt_dir):
    model = gpt2(0)
    with open_checkpointer(kind, ckpt_dir, CFG) as ck:
        ck.save(1, {"model": model})
    sd = load_latest(ckpt_dir)[1]["model"]
    assert same_storage(sd["lm_head.weight"], sd["transformer.wte.weight"])
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v), k
    sd["transformer.wte.weight"][0, 0] = 123.0  # shared as torch.load's would be
    assert sd["lm_head.weight"][0, 0] == 123.0


@pytest.mark.parametrize("kind", KINDS)
def test_gpt2_in_place_load_keeps_the_tie(kind, ckpt_dir):
    model = gpt2(0)
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        expected = model(ids).logits
    with open_checkpointer(kind, ckpt_dir, CFG) as ck:
        ck.save(1, {"model": model})
    other = gpt2(1)
    load_latest(ckpt_dir, {"model": other})
    assert other.lm_head.weight is other.transformer.wte.weight
    with torch.no_grad():
        assert torch.equal(other(ids).logits, expected)


# --- views ---------------------------------------------------------------------------------

def view_zoo() -> dict:
    w = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    v = torch.arange(100, dtype=torch.float64)
    return {
        "w": w, "tied": w, "wT": w.t(), "rows": w[1:3], "cols": w[:, 2::3], "every2": v[::2],
        "head": v[10:20], "tail": v[60:75],                       # neither covers all of v
        "bits": w[4].view(torch.int32), "bytes": w.view(torch.uint8)[5, 3:17],  # dtype views
        "wide": torch.arange(3, dtype=torch.int16).expand(4, 3),  # stride 0
        "bf16": torch.arange(9, dtype=torch.float32).bfloat16().reshape(3, 3).t(),
        "empty": w[:0], "scalar": torch.tensor(2.5),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_views_are_stored_once_and_come_back_as_views(kind, ckpt_dir):
    state = view_zoo()
    with open_checkpointer(kind, ckpt_dir, CFG) as ck:
        ck.save(1, state)
    loaded = load_latest(ckpt_dir)
    assert loaded[0] == 1
    got = loaded[1]
    for k, v in state.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), k
        assert got[k].stride() == v.stride(), k
    for a, b in [("w", "tied"), ("w", "wT"), ("w", "rows"), ("w", "cols"), ("w", "bits"), ("w", "bytes"),
                 ("every2", "head"), ("every2", "tail")]:
        assert same_storage(got[a], got[b]), (a, b)
    assert not same_storage(got["w"], got["every2"])
    if kind == "pccheck":
        m = read_manifest(step_dir(ckpt_dir, 1))
        assert m.stream_bytes == 4096  # today: every tensor in full, 8 KiB
        assert sum(s.nbytes for s in m.storages) == unique_bytes(state.values())
        assert sorted(s.nbytes for s in m.storages if s.nbytes) == sorted([48 * 4, 99 * 8, 3 * 2, 9 * 2, 4])


def test_two_slices_store_only_their_spanned_region():
    big = torch.arange(1 << 16, dtype=torch.float32)
    cap = capture({"a": big[100:200], "b": big[150:300]})
    storages = cap.layout_meta()["storages"]
    assert [s["nbytes"] for s in storages] == [200 * 4]  # [100, 300), not all of big


def test_distinct_storages_that_alias_memory_are_one_region():
    """torch.from_numpy twice on one array: two storages, overlapping memory."""
    import numpy as np

    arr = np.arange(64, dtype=np.float32)
    a, b = torch.from_numpy(arr[:40]), torch.from_numpy(arr[20:])
    assert not same_storage(a, b)
    cap = capture({"a": a, "b": b})
    assert [s["nbytes"] for s in cap.layout_meta()["storages"]] == [64 * 4]


@st.composite
def views_of_one_storage(draw):
    """A few random as_strided views of one storage (dtype views included)."""
    n = draw(st.integers(1, 96))
    dtype = draw(st.sampled_from([torch.float32, torch.int16, torch.float64, torch.uint8]))
    base = (torch.arange(n, dtype=torch.float64) * 3 - 7).to(dtype)
    views = []
    for _ in range(draw(st.integers(1, 4))):
        t = base.view(torch.uint8) if draw(st.booleans()) and dtype != torch.uint8 else base
        m = t.numel()
        ndim = draw(st.integers(0, 3))
        shape = tuple(draw(st.integers(0, 5)) for _ in range(ndim))
        stride = tuple(draw(st.integers(0, 7)) for _ in range(ndim))
        extent = sum((s - 1) * st_ for s, st_ in zip(shape, stride)) + 1 if all(shape) else 0
        if extent > m:
            continue
        offset = draw(st.integers(0, m - max(extent, 1))) if m > extent else 0
        views.append(t.as_strided(shape, stride, offset))
    return base, views


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(views_of_one_storage())
def test_property_random_views_round_trip_shared(tmp_path_factory, drawn):
    base, views = drawn
    state = {f"v{i}": v for i, v in enumerate(views)}
    cap = capture(state)
    assert sum(s["nbytes"] for s in cap.layout_meta()["storages"]) == unique_bytes(views)
    d = str(tmp_path_factory.mktemp("ck"))
    with open_checkpointer("pccheck", d, CFG.replace(writer_threads=1)) as ck:
        ck.save(1, state)
    got = load_latest(d)[1]
    nonempty = [k for k, v in state.items() if v.numel()]
    for k, v in state.items():
        assert got[k].shape == v.shape and got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert all(same_storage(got[nonempty[0]], got[k]) for k in nonempty)


# --- snapshot modes --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["deferred", "gpu"])
def test_deferred_snapshots_copy_each_storage_once(mode, ckpt_dir):
    w = torch.arange(4096, dtype=torch.float32).reshape(64, 64)
    state = {"w": w, "tied": w, "wT": w.t(), "rows": w[3:9]}
    with open_checkpointer("pccheck", ckpt_dir, CFG.replace(snapshot=mode)) as ck:
        for step in (1, 2):
            ck.save(step, state)
            ck.barrier()
        ck.wait()
        # deferred copies straight into staging (no host buffer of its own); gpu mode copies
        # CPU tensors in save(), into one host buffer reused from save to save
        assert ck.stats()["snapshot_host_bytes"] == (w.numel() * 4 if mode == "gpu" else 0)
    for step in (1, 2):
        storages = read_manifest(list_checkpoints(ckpt_dir)[step - 1].path).meta["storages"]
        assert [s["nbytes"] for s in storages] == [w.numel() * 4]  # the shared storage, written once
    for step in (1, 2):
        got = load_latest(ckpt_dir, step=step)[1]
        assert all(torch.equal(got[k], v) for k, v in state.items())
        assert same_storage(got["w"], got["wT"]) and same_storage(got["w"], got["tied"])


def test_deferred_snapshot_sees_a_change_through_any_tensor_of_a_shared_storage(ckpt_dir, copy_gate):
    from ckptlab.core import SnapshotTornError

    w = torch.zeros(1 << 20)
    a, b = w[: 1 << 19], w[1 << 19:]
    with open_checkpointer("pccheck", ckpt_dir, CFG.replace(snapshot="deferred")) as ck:
        ck.save(1, {"a": a, "b": b})
        b.add_(1)  # before the copy of w completed (the gate holds it): the checkpoint must fail, not hold a torn w
        copy_gate.set()
        with pytest.raises(SnapshotTornError, match="b"):
            ck.wait()


# --- format versions -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_format1_fixture_loads_byte_for_byte(kind):
    mod = _fixture_module()
    directory = os.path.join(FIXTURES, "format1", kind)
    step, got = load_latest(directory)
    expected = mod.fixture_state(kind)
    assert step == mod.STEP and got["extra"] == expected["extra"]
    flat = {**{f"model/{k}": v for k, v in expected["model"].items()},
            **{k: v for k, v in expected.items() if isinstance(v, torch.Tensor)}}
    for path, v in flat.items():
        t = got
        for part in path.split("/"):
            t = t[part]
        assert t.dtype == v.dtype and t.shape == v.shape, path
        assert bytes(t.contiguous().view(-1).view(torch.uint8).numpy()) == \
            bytes(v.contiguous().view(-1).view(torch.uint8).numpy()), path
    assert read_manifest(step_dir(directory, mod.STEP)).version == 1


def test_new_checkpoints_have_format_version_2(ckpt_dir):
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        ck.save(1, {"w": torch.ones(3)})
    assert read_manifest(step_dir(ckpt_dir, 1)).version == 2


def test_a_future_format_version_is_a_clear_error(ckpt_dir):
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        ck.save(1, {"w": torch.ones(3)})
    path = os.path.join(step_dir(ckpt_dir, 1), "MANIFEST")
    import json

    from ckptlab.core.manifest import TRAILER

    body = json.loads(open(path, "rb").read()[:-TRAILER.size])
    body["format_version"] = 3
    with pytest.raises(ManifestError, match="format version 3 is not supported"):
        decode_manifest(encode_manifest(body))


@pytest.mark.parametrize("kind", KINDS)
def test_inspect_verifies_the_format1_fixture(kind):
    from ckptlab.core import list_checkpoints

    infos = list_checkpoints(os.path.join(FIXTURES, "format1", kind), verify=True)
    assert [(i.step, i.writer, i.status) for i in infos] == [(7, kind, "ok")]


# --- CUDA (-m gpu; skipped without a device) ---------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("kind, mode", [("pccheck", "sync"), ("pccheck", "deferred"), ("pccheck", "gpu"),
                                        ("torchsave", "sync")])
def test_cuda_views_are_stored_once_and_load_shared_on_the_device(kind, mode, ckpt_dir):
    state = {k: v.cuda() if k != "w" else v for k, v in view_zoo().items()}
    w = torch.arange(48, dtype=torch.float32, device="cuda").reshape(6, 8)
    state.update(w=w, tied=w, wT=w.t(), rows=w[1:3], bits=w[4].view(torch.int32),
                 bf16=torch.arange(9, device="cuda").bfloat16().reshape(3, 3).t())
    with open_checkpointer(kind, ckpt_dir, CFG.replace(snapshot=mode)) as ck:
        ck.save(1, state)
        ck.barrier()
        ck.wait()
    got = load_latest(ckpt_dir, map_location="cuda")[1]
    for k, v in state.items():
        assert got[k].device.type == "cuda" and torch.equal(got[k], v), k
    assert same_storage(got["w"], got["tied"]) and same_storage(got["w"], got["wT"])
    assert same_storage(got["w"], got["bits"])
    if kind == "pccheck":
        m = read_manifest(step_dir(ckpt_dir, 1))
        assert sum(s.nbytes for s in m.storages) == unique_bytes(state.values())
