"""The baseline done right: torch.save of the whole state, then fsync, atomic rename and
directory fsync (research/reliability.md §2.1). Synchronous: save() returns once durable.
It writes the same directory layout and MANIFEST as pccheck, so recovery, retention,
`ckptlab inspect` and the fault campaign treat both alike."""
from __future__ import annotations

import io
import os
import shutil
import uuid
from collections.abc import Mapping
from typing import Any

import torch

from ckptlab import _engine
from ckptlab.core.base import CheckpointerBase, now
from ckptlab.core.config import CheckpointConfig
from ckptlab.core.durable import fsync_dir, write_file_durable
from ckptlab.core.errors import CheckpointWriteError
from ckptlab.core.layout import committed_step_dirs, step_dir_name
from ckptlab.core.manifest import FORMAT_VERSION, MANIFEST_NAME, encode_manifest
from ckptlab.core.state import PinnedHostCache, capture, check_loadable
from ckptlab.profiling.phases import phase

PAYLOAD_NAME = "state.pt"


class TorchSaveCheckpointer(CheckpointerBase):
    kind = "torchsave"

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig) -> None:
        if config.snapshot != "sync":
            raise ValueError(f"CheckpointConfig.snapshot={config.snapshot!r} is a pccheck mode; "
                             f"torchsave saves synchronously (use snapshot='sync')")
        super().__init__(directory, config)
        for name in os.listdir(self.directory):
            if name.startswith(".step_") and ".tmp-" in name:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        self._check_open()
        self._check_step(step)
        t0 = now()
        # Python phases (docs/TRACE.md): capture, serialize, digest, file_write/file_fsync per
        # file, dir_commit, retain; all on the caller's thread, inside the loop's `save`.
        with phase("capture", step=step):
            captured = capture(state, self._host_cache)
        check_loadable(captured.skeleton, self.config.allow_pickle)
        buf = io.BytesIO()
        with phase("serialize", step=step, nbytes=captured.total_bytes):
            torch.save({"skeleton": captured.skeleton, "tensors": [t.tensor for t in captured.tensors]}, buf)
        payload = buf.getbuffer()
        chunk = self.config.chunk_bytes
        with phase("digest", step=step, nbytes=len(payload)):
            chunks = [[0, off, min(chunk, len(payload) - off), _engine.crc32c(payload[off:off + chunk])]
                      for off in range(0, len(payload), chunk)]
            manifest = encode_manifest({
                "format": "ckptlab", "format_version": FORMAT_VERSION, "writer": "torchsave", "step": step,
                "checksum": "crc32c", "io_mode": "buffered", "chunk_bytes": chunk, "total_bytes": len(payload),
                "stream_bytes": len(payload), "files": [{"name": PAYLOAD_NAME, "nbytes": len(payload)}],
                "chunks": chunks, "meta": {"payload": "torch.save", "torch": torch.__version__},
            })
        final = os.path.join(self.directory, step_dir_name(step))
        tmp = os.path.join(self.directory, f".{step_dir_name(step)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.mkdir(tmp)
            write_file_durable(os.path.join(tmp, PAYLOAD_NAME), payload, step=step)
            write_file_durable(os.path.join(tmp, MANIFEST_NAME), manifest, step=step)
            with phase("dir_commit", step=step, nbytes=len(payload)):
                fsync_dir(tmp)
                if os.path.exists(final):
                    old = final + f".replaced-{uuid.uuid4().hex[:8]}"
                    os.replace(final, os.path.join(self.directory, "." + os.path.basename(old)))
                os.replace(tmp, final)
                fsync_dir(self.directory)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointWriteError(e.errno or 5, f"torchsave of step {step} failed: {e.strerror or e}",
                                       e.filename or tmp, step=step) from e
        finally:
            del payload
        with phase("retain", step=step):
            self._retain(step)
        self._record_stall(now() - t0)

    def _retain(self, step: int) -> None:
        keep = self.config.keep_last
        if keep <= 0:
            return
        older = [(s, p) for s, p in committed_step_dirs(self.directory) if s < step]
        doomed = older[: max(0, len(older) - (keep - 1))]
        for s, path in doomed:
            trash = os.path.join(self.directory, f".{os.path.basename(path)}.deleting-{uuid.uuid4().hex[:8]}")
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        for name in os.listdir(self.directory):
            if ".replaced-" in name and name.startswith(".step_"):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        if doomed:
            fsync_dir(self.directory)

    def wait(self) -> None:
        self._check_open()  # save() is synchronous: nothing is ever in flight

    def close(self) -> None:
        self._remove_guards()
        self._closed = True
