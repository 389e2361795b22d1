"""GPU tensors: captured from the device, restored onto it bit-exactly. Skipped without CUDA
(except the clear-error test, which runs only where CUDA is absent)."""
import copy

import pytest
import torch

from ckptlab.core import CheckpointConfig, CheckpointError, load_latest, open_checkpointer

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CFG = CheckpointConfig(chunk_bytes=1 << 20, writer_threads=4)


def _train(model, opt, steps=3):
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(16, 256, device="cuda", dtype=dtype)
        model(x).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["pccheck", "torchsave"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_model_and_optimizer_round_trip(kind, dtype, ckpt_dir):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256)).cuda().to(dtype)
    opt = torch.optim.AdamW(model.parameters())
    _train(model, opt)
    expected = copy.deepcopy({"model": model.state_dict(), "optim": opt.state_dict()})
    with open_checkpointer(kind, ckpt_dir, CFG) as ck:
        ck.save(3, {"model": model, "optim": opt, "cuda_rng": torch.cuda.get_rng_state_all()})
        _train(model, opt)  # keeps training while the checkpoint persists
        ck.wait()
    fresh = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256)).cuda().to(dtype)
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    _train(fresh, fresh_opt, 1)
    step, loaded = load_latest(ckpt_dir, {"model": fresh, "optim": fresh_opt})
    assert step == 3
    for k, v in expected["model"].items():
        assert fresh.state_dict()[k].is_cuda and torch.equal(fresh.state_dict()[k], v)
    for pid, st in expected["optim"]["state"].items():
        for name, v in st.items():
            assert torch.equal(fresh_opt.state_dict()["state"][pid][name].cpu(), v.cpu())


@cuda
@pytest.mark.gpu
def test_map_location_cuda_returns_device_tensors(ckpt_dir):
    src = {"w": torch.randn(1000, device="cuda"), "h": torch.randn(10)}
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        ck.save(1, src)
    _, loaded = load_latest(ckpt_dir, map_location="cuda")
    assert loaded["w"].is_cuda and loaded["h"].is_cuda
    assert torch.equal(loaded["w"], src["w"]) and torch.equal(loaded["h"].cpu(), src["h"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_map_location_cuda_without_a_gpu_is_a_clear_error(ckpt_dir):
    with open_checkpointer("pccheck", ckpt_dir, CFG) as ck:
        ck.save(1, {"w": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="no usable CUDA device"):
        load_latest(ckpt_dir, map_location="cuda")


@cuda
@pytest.mark.gpu
def test_sync_saves_stream_through_pinned_staging_without_mixing_checkpoints(ckpt_dir):
    w = torch.randn(1 << 20, device="cuda")
    cfg = CFG.replace(keep_last=0, max_inflight=2)
    expected = {}
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        for step in (1, 2, 3):
            w.mul_(1.5).add_(step)  # queued on the current stream right before the save
            expected[step] = w.cpu()
            ck.save(step, {"w": w})
        ck.wait()
        # one copy: D2H straight into the page-locked staging pool, no pinned host cache
        assert ck._host_cache.nbytes == 0 and ck.stats()["pinned_staging_bytes"] == ck.stats()["staging_bytes"]
    for step, value in expected.items():
        assert torch.equal(load_latest(ckpt_dir, step=step)[1]["w"], value)


def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 1024)).cuda()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["deferred", "gpu"])
def test_deferred_snapshots_of_a_training_model_are_bit_exact(mode, ckpt_dir):
    """save() returns before the D2H copies ran; the guarded optimizer steps right after."""
    model, opt = _model_and_opt()
    cfg = CFG.replace(keep_last=0, snapshot=mode)
    expected = {}
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        ck.guard(opt)
        for step in range(1, 6):
            _train(model, opt, 1)
            expected[step] = {k: v.cpu() for k, v in model.state_dict().items()}
            ck.save(step, {"model": model, "optim": opt})
        ck.wait()
        if mode == "gpu":
            assert ck.stats()["snapshot_gpu_bytes"] >= sum(v.numel() * 4 for v in expected[1].values())
    for step, state in expected.items():
        fresh, fresh_opt = _model_and_opt(seed=1)
        load_latest(ckpt_dir, {"model": fresh, "optim": fresh_opt}, step=step)
        for k, v in state.items():
            assert torch.equal(fresh.state_dict()[k].cpu(), v), (step, k)


@cuda
@pytest.mark.gpu
def test_cuda_tensor_changed_before_the_barrier_fails_the_checkpoint(ckpt_dir):
    from ckptlab.core import SnapshotTornError

    w = torch.ones(1 << 22, device="cuda")
    with open_checkpointer("pccheck", ckpt_dir, CFG.replace(snapshot="deferred")) as ck:
        ck.save(1, {"w": 0 * w})  # the first save opens the engine and registers staging
        ck.wait()
        torch.cuda._sleep(1 << 30)  # about 0.5 s of GPU time before save(): its D2H waits behind it
        ck.save(2, {"w": w})
        w.add_(1)  # enqueued before barrier() and before the D2H can have ended: torn, every time
        with pytest.raises(SnapshotTornError, match="'w'"):
            ck.wait()


@cuda
@pytest.mark.gpu
def test_deferred_d2h_is_recorded_and_runs_after_save_returned(ckpt_dir, tmp_path):
    from ckptlab.profiling import read_trace, start_trace

    w = torch.randn(1 << 26, device="cuda")  # 256 MiB
    cfg = CFG.replace(snapshot="deferred", trace=True)
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        session = start_trace(tmp_path / "t.arrow", ck)
        ck.save(1, {"w": w})
        ck.wait()
        session.close()
    table = read_trace(tmp_path / "t.arrow").to_pylist()
    d2h = [r for r in table if r["phase"] == "d2h"]
    enqueue = [r for r in table if r["phase"] == "snapshot_enqueue"]
    assert len(d2h) == 1 and d2h[0]["nbytes"] == w.numel() * 4 and len(enqueue) == 1
    assert d2h[0]["t_end_ns"] > enqueue[0]["t_end_ns"], "the copy should finish after save() returned"


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["deferred", "gpu"])
def test_cuda_state_larger_than_staging_streams_through_registered_staging(mode, ckpt_dir):
    """One copy: chunks go D2H straight into the page-locked staging pool, a quarter of the
    state, and each is written once its copy completed; bit-exact, host memory = staging."""
    torch.manual_seed(0)
    state = {"a": torch.randn(1 << 22, device="cuda"), "b": torch.randn(3, 1 << 20, device="cuda").t()}
    expected = {k: v.cpu() for k, v in state.items()}
    cfg = CFG.replace(snapshot=mode, staging_bytes=4 << 20)  # 4 MiB of a 28 MiB state
    with open_checkpointer("pccheck", ckpt_dir, cfg) as ck:
        ck.save(1, state)
        ck.barrier()
        ck.wait()
        s = ck.stats()
        assert s["pinned_staging_bytes"] == s["staging_bytes"] == 4 << 20 and s["snapshot_host_bytes"] == 0
    got = load_latest(ckpt_dir)[1]
    assert all(torch.equal(got[k], v) for k, v in expected.items())


@cuda
@pytest.mark.gpu
def test_auto_mode_takes_the_gpu_buffer_when_it_fits(ckpt_dir):
    w = torch.randn(1 << 20, device="cuda")
    with open_checkpointer("pccheck", ckpt_dir, CFG.replace(snapshot="auto")) as ck:
        ck.save(1, {"w": w})
        ck.wait()
        assert ck.stats()["snapshot_mode"] == "gpu"
    assert torch.equal(load_latest(ckpt_dir)[1]["w"], w.cpu())


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["sync", "deferred", "gpu", "auto"])
def test_staging_survives_many_saves_and_memory_stays_flat(mode, ckpt_dir):
    """Peers' pinned stagers failed on reuse (the second checkpoint raised) or grew per save:
    five saves of a training model through one checkpointer, each bit-exact, with the same GPU
    memory and page-locked bytes after the second save as after the fifth."""
    model, opt = _model_and_opt()
    expected, seen = {}, []
    with open_checkpointer("pccheck", ckpt_dir, CFG.replace(snapshot=mode, keep_last=0)) as ck:
        ck.guard(opt)
        for step in range(1, 6):
            _train(model, opt, steps=1)
            expected[step] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            ck.save(step, {"model": model})
            ck.wait()
            torch.cuda.synchronize()
            seen.append((torch.cuda.memory_allocated(), ck.stats()["pinned_staging_bytes"]))
    assert seen[1] == seen[4], seen
    for step, value in expected.items():
        fresh, _ = _model_and_opt(seed=1)
        load_latest(ckpt_dir, {"model": fresh}, step=step)
        assert all(torch.equal(fresh.state_dict()[k].cpu(), v) for k, v in value.items()), step
