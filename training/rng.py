"""Every RNG a training step can touch, as one object with ``state_dict``/``load_state_dict``.

States are kept as plain builtins (ints, floats, a tuple of ints, bytes) and tensors, no
NumPy arrays, so every checkpointer kind stores them and ``torch.load(weights_only=True)``
accepts them; plain builtins also let pccheck pickle them off the training thread.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["RNGState", "seed_everything", "configure_determinism"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)  # also seeds every CUDA device


def configure_determinism(device: torch.device) -> None:
    """Deterministic kernels where the device needs them.

    CPU kernels are run-to-run deterministic at a fixed thread count already. On CUDA,
    cuBLAS needs a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, read when its handle is
    created, so the caller sets it before touching the GPU) and scatter/atomic kernels must
    be swapped for deterministic ones.
    """
    if device.type == "cuda":
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


class RNGState:
    """Python ``random``, NumPy's global generator, torch CPU and all CUDA devices.

    state_dict() runs inside every save(), right after an optimizer step has pushed the
    interpreter's data out of the caches, so it does as little as it can: whether CUDA is
    there is asked once, Python's 625 words stay the tuple ``random.getstate()`` made, and
    NumPy's key is its bytes (checkpoints that hold them as int64 tensors, as before, load)."""

    def __init__(self) -> None:
        self._cuda: bool | None = None  # torch.cuda.is_available(), asked at the first state_dict()

    def state_dict(self) -> dict[str, Any]:
        if self._cuda is None:
            self._cuda = torch.cuda.is_available()
        version, internal, gauss = random.getstate()
        np_state = np.random.get_state(legacy=False)
        return {
            "python": {"version": version, "internal": internal, "gauss_next": gauss},
            "numpy": {"bit_generator": np_state["bit_generator"],
                      "key": np_state["state"]["key"].astype("<u4", copy=False).tobytes(),
                      "pos": int(np_state["state"]["pos"]),
                      "has_gauss": int(np_state["has_gauss"]),
                      "gauss": float(np_state["gauss"])},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if self._cuda else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        py = state["python"]
        internal = py["internal"]
        words = internal.tolist() if isinstance(internal, torch.Tensor) else internal
        random.setstate((int(py["version"]), tuple(int(v) for v in words), py["gauss_next"]))
        npy = state["numpy"]
        key = npy["key"]
        key = np.frombuffer(key, dtype="<u4") if isinstance(key, bytes) else key.numpy().astype(np.uint32)
        np.random.set_state({"bit_generator": npy["bit_generator"],
                             "state": {"key": key, "pos": int(npy["pos"])},
                             "has_gauss": int(npy["has_gauss"]), "gauss": float(npy["gauss"])})
        torch.set_rng_state(state["torch"].cpu())
        cuda_states = list(state.get("cuda") or [])
        if cuda_states and torch.cuda.is_available():
            # A run resumed on fewer devices restores the ones it has.
            for index, cuda_state in enumerate(cuda_states[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state.cpu(), index)
