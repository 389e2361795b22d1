"""One list of trace-record columns: the engine's (CKPTLAB_TRACE_COLUMNS in csrc/trace.hpp,
exported as _engine.trace_columns()) and the Python side's raw columns are the same names,
order and dtypes, and drain_trace()/read_verified() hand over exactly those arrays.
The Python list is ckptlab.profiling.schema.RAW_COLUMNS."""
import importlib

import numpy as np

from ckptlab import _engine

PYTHON_COLUMNS_MODULE = "ckptlab.profiling.schema"
PYTHON_COLUMNS_NAME = "RAW_COLUMNS"


def _engine_columns():
    return [(name, np.dtype(dtype)) for name, dtype in _engine.trace_columns()]


def test_python_raw_columns_are_the_engine_columns():
    python = getattr(importlib.import_module(PYTHON_COLUMNS_MODULE), PYTHON_COLUMNS_NAME)
    assert [(name, np.dtype(dtype)) for name, dtype in python.items()] == _engine_columns()


def test_drained_records_are_those_columns(tmp_path):
    arr = np.arange(50_000, dtype=np.float32)
    e = _engine.Engine(str(tmp_path), writer_threads=2, chunk_bytes=65536, staging_bytes=65536 * 2,
                       prefault=False, trace=True)
    try:
        e.submit(1, "{}", [(arr.ctypes.data, arr.nbytes, 0)], arr.nbytes)
        assert e.wait() is True
        cols = e.drain_trace()
    finally:
        e.close()
    assert [(name, a.dtype) for name, a in cols.items()] == _engine_columns()
    n = len(cols["t_begin_ns"])
    assert n > 0 and all(a.shape == (n,) for a in cols.values())
    assert set(cols["phase"].tolist()) <= set(range(len(_engine.phase_names())))
    assert (cols["t_end_ns"] >= cols["t_begin_ns"]).all() and (cols["ckpt_id"] == 1).all()
    empty = _engine.read_verified([])["records"]
    assert [(name, a.dtype, a.shape) for name, a in empty.items()] == [(n, t, (0,)) for n, t in _engine_columns()]
