"""The baseline done right: torch.save of the whole state into a temp directory, fsync, then
the commit protocol of core/commit.py (directory fsync, atomic rename, parent fsync).
Synchronous: save() returns once durable. It writes the same directory layout and MANIFEST
as pccheck, so recovery, retention, `ckptlab inspect` and the fault campaign treat both alike.

Its file-system operations go through core/writer_io.py: armed by ``CheckpointConfig.faults``
/ ``io_log`` (or CKPTLAB_FAULTS / CKPTLAB_IO_LOG) they pass the engine's fault points and are
recorded in the engine's I/O log format. Per checkpoint, in order: ``before_chunk_write`` /
``after_chunk_write`` once per ``chunk_bytes`` piece of state.pt, ``before_data_fsync`` /
``after_data_fsync`` once, ``before_manifest``, ``before_manifest_fsync``,
``before_tmpdir_fsync``, ``before_rename``, ``after_rename``, ``after_commit`` (then the ``ack``
marker), and with ``keep_last > 0`` ``before_gc`` and ``during_gc`` per deleted checkpoint."""
from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import torch

from ckptlab import _engine
from ckptlab.core import commit
from ckptlab.core.base import CheckpointerBase, now
from ckptlab.core.checkpointer import check_config, check_step, check_timeout
from ckptlab.core.config import CheckpointConfig
from ckptlab.core.durable import write_file_durable
from ckptlab.core.errors import CheckpointWriteError
from ckptlab.core.manifest import FORMAT_VERSION, MANIFEST_NAME, encode_manifest
from ckptlab.core.state import CapturedState, capture, check_loadable
from ckptlab.core.writer_io import DATA_FILE, MANIFEST_FILE, WriterIO
from ckptlab.profiling.phases import phase

PAYLOAD_NAME = "state.pt"


def serialize(captured: CapturedState) -> memoryview:
    """The bytes of state.pt for a captured state, as save() writes them (format 2: each
    storage once as bytes, and the views on it; torch.save refuses two dtypes on one storage,
    so the views are described, not pickled as tensors)."""
    buf = io.BytesIO()
    views = [[v.name, v.dtype, list(v.shape), list(v.stride), v.storage, v.byte_offset] for v in captured.views]
    torch.save({"skeleton": captured.skeleton, "storages": captured.standalone_buffers(), "views": views}, buf)
    return buf.getbuffer()


class TorchSaveCheckpointer(CheckpointerBase):
    kind = "torchsave"

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig) -> None:
        check_config(self.kind, config)
        self._io = WriterIO.from_config(config)  # armed or not: core/writer_io.py
        self._io.start(os.path.abspath(os.fspath(directory)))
        super().__init__(directory, config, io=self._io)
        self._lock = commit.DirectoryLock(self.directory, self._io)
        commit.recover(self.directory, self._io)

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        self._check_open()
        check_step(step)
        t0 = now()
        # Python phases (docs/TRACE.md): capture, serialize, digest, file_write/file_fsync per
        # file, dir_commit, retain; all on the caller's thread, inside the loop's `save`.
        with phase("capture", step=step):
            captured = capture(state, self._host_cache)
        check_loadable(captured.skeleton, self.config.allow_pickle)
        with phase("serialize", step=step, nbytes=captured.total_bytes):
            payload = serialize(captured)
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
        ck = self._io.checkpoint(step)
        tmp = None
        try:
            tmp = commit.make_temp_dir(self.directory, step, ck)
            write_file_durable(os.path.join(tmp, PAYLOAD_NAME), payload, step=step, io=ck, points=DATA_FILE,
                               chunk_bytes=chunk)
            write_file_durable(os.path.join(tmp, MANIFEST_NAME), manifest, step=step, io=ck, points=MANIFEST_FILE)
            with phase("dir_commit", step=step, nbytes=len(payload)):
                commit.publish(self.directory, step, tmp, ck)
        except OSError as e:
            if tmp is not None:
                self._io.remove_tree(tmp)
            ck.mark("fail")
            raise CheckpointWriteError(e.errno or 5, f"torchsave of step {step} failed: {e.strerror or e}; "
                                       f"the previous checkpoint is kept", e.filename or self.directory,
                                       step=step) from e
        finally:
            del payload
        ck.point("after_commit")
        ck.mark("ack")  # durable: what the engine logs just before it acknowledges
        commit.retain_best_effort(self.directory, step, self.config.keep_last, ck)
        self._record_stall(now() - t0)

    def wait(self, timeout: float | None = None) -> bool:
        """Always True: save() is synchronous, so nothing is ever in flight."""
        self._check_open()
        check_timeout(timeout)
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._remove_guards()
        self._closed = True
        self._io.close()
        self._lock.release()
