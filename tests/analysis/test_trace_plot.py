"""`ckptlab trace plot`: a timeline PNG of a trace (analysis/timeline.py)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ckptlab.analysis.tables import column
from ckptlab.analysis.timeline import assign_lanes, plot_timeline, step_window

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys, *args):
    from ckptlab.analysis.cli import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read(24)
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("intervals, expected", [
    ([(0, 10), (1, 5), (2, 3), (6, 9)], [0, 1, 2, 1]),   # a step holding forward (holding a kernel) and backward
    ([(0, 5), (5, 9)], [0, 0]),                          # back to back: neither holds the other
    ([(0, 5), (0, 5)], [0, 1]),                          # equal spans stack
    ([(4, 8), (0, 2), (1, 9)], [0, 0, 1]),               # unsorted; (0,2) and (1,9) overlap without nesting
])
def test_assign_lanes(intervals, expected):
    b = np.array([i[0] for i in intervals], dtype=np.int64)
    e = np.array([i[1] for i in intervals], dtype=np.int64)
    assert assign_lanes(b, e).tolist() == expected


def test_lanes_are_capped():
    b, e = np.zeros(1000, dtype=np.int64), np.full(1000, 5, dtype=np.int64)  # 1000 equal spans
    lanes = assign_lanes(b, e, max_lanes=4)
    assert lanes.max() == 3 and np.bincount(lanes).tolist() == [1, 1, 1, 997]


def _check_lanes(b: np.ndarray, e: np.ndarray, lane: np.ndarray, nested_below: bool) -> None:
    for i in range(len(b)):
        for j in range(len(b)):
            if i == j:
                continue
            if lane[i] == lane[j]:
                assert e[i] <= b[j] or e[j] <= b[i], "two overlapping bars in one lane"
            inside = b[i] <= b[j] and e[j] <= e[i] and (e[i] - b[i]) > (e[j] - b[j]) and e[j] > b[j]
            if nested_below and inside:
                assert lane[j] > lane[i], "a nested interval must lie below the one holding it"


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 200)), max_size=60))
def test_lanes_never_put_overlapping_bars_together(spans):
    b = np.array([s for s, _ in spans], dtype=np.int64)
    e = b + np.array([d for _, d in spans], dtype=np.int64)
    _check_lanes(b, e, assign_lanes(b, e), nested_below=False)


@st.composite
def _laminar(draw, lo=0, hi=10_000, depth=3):
    """Intervals that nest or are disjoint, as one thread's phases are."""
    if depth == 0 or hi - lo < 4:
        return []
    cuts = sorted(draw(st.lists(st.integers(lo, hi), min_size=0, max_size=6, unique=True)))
    out = []
    for a, z in zip(cuts[::2], cuts[1::2]):
        out.append((a, z))
        out += draw(_laminar(a + 1, z - 1, depth - 1))
    return out


@given(_laminar())
def test_lanes_put_nested_phases_below_their_parent(spans):
    b = np.array([s for s, _ in spans], dtype=np.int64)
    e = np.array([z for _, z in spans], dtype=np.int64)
    _check_lanes(b, e, assign_lanes(b, e), nested_below=True)


def test_whole_trace_has_a_track_per_thread(traced_run, tmp_path):
    out = tmp_path / "timeline.png"
    drawn = plot_timeline(traced_run.table, out)
    assert drawn.records == traced_run.table.num_rows
    assert sorted(drawn.tracks) == sorted(set(column(traced_run.table, "thread_name").tolist()))
    assert {"ckptlab-writer-0", "ckptlab-writer-1", "ckptlab-commit"} <= set(drawn.tracks)
    assert drawn.tracks.index("ckptlab-writer-0") < drawn.tracks.index("ckptlab-commit")
    assert set(drawn.phases) == set(column(traced_run.table, "phase").tolist())
    width, height = _png_size(out)
    assert width > 1000 and height > 300
    assert os.listdir(tmp_path) == ["timeline.png"], "written atomically: no temp file left"


def test_step_window_spans_the_save_to_the_commit(traced_run, tmp_path):
    t = traced_run.table
    lo, hi = step_window(t, 3)
    phase, step = column(t, "phase"), column(t, "step")
    tb, te = column(t, "t_begin_ns").astype(np.int64), column(t, "t_end_ns").astype(np.int64)
    assert ((phase == "commit") & (step == 3)).any()
    assert (tb[step == 3] >= lo).all() and (te[step == 3] <= hi).all()
    assert lo == tb[(phase == "save") & (step == 3)].min(), "the window opens with the save call"
    assert hi >= te[(phase == "commit") & (step == 3)].max()
    drawn = plot_timeline(t, tmp_path / "s.png", step=3)
    assert drawn.t_begin_ns < lo and drawn.t_end_ns > hi  # a margin on both sides
    assert drawn.records >= int((step == 3).sum())


def test_phase_filter_keeps_only_the_threads_that_ran_them(traced_run, tmp_path):
    drawn = plot_timeline(traced_run.table, tmp_path / "c.png", phases={"manifest", "commit"})
    assert drawn.tracks == ["ckptlab-commit"] and drawn.phases == ["manifest", "commit"]


def test_bad_requests_are_refused(traced_run, tmp_path):
    with pytest.raises(ValueError, match=r"step 99 has no records .*steps present: 3"):
        plot_timeline(traced_run.table, tmp_path / "x.png", step=99)
    with pytest.raises(ValueError, match="no records in the chosen window"):
        plot_timeline(traced_run.table, tmp_path / "x.png", phases={"no-such-phase"})
    with pytest.raises(ValueError, match="not both"):
        plot_timeline(traced_run.table, tmp_path / "x.png", step=3, window_ns=(0, 1))
    assert not os.path.exists(tmp_path / "x.png")


def test_cli_plots_a_step_and_a_window(traced_run, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "trace", "plot", traced_run.path, "-o", tmp_path / "s.png", "--step", "3")
    assert rc == 0, err
    assert "thread tracks" in out and _png_size(tmp_path / "s.png")
    rc, out, err = run_cli(capsys, "trace", "plot", traced_run.path, "-o", tmp_path / "w.png", "--window", "0:0.001",
                           "--phases", "save,snapshot")
    assert rc == 0, err
    assert _png_size(tmp_path / "w.png")


def test_cli_bad_input(traced_run, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "trace", "plot", tmp_path / "missing.arrow", "-o", tmp_path / "x.png")
    assert rc == 2 and "no such trace file" in err
    junk = tmp_path / "junk.arrow"
    junk.write_bytes(b"not an arrow file")
    rc, _, err = run_cli(capsys, "trace", "plot", junk, "-o", tmp_path / "x.png")
    assert rc == 2 and "cannot read" in err
    rc, _, err = run_cli(capsys, "trace", "plot", traced_run.path, "-o", tmp_path / "x.png", "--step", "4")
    assert rc == 2 and "step 4 has no records" in err
    for window in ("2:1", "a:b", "1"):
        with pytest.raises(SystemExit) as e:
            run_cli(capsys, "trace", "plot", traced_run.path, "-o", tmp_path / "x.png", "--window", window)
        assert e.value.code == 2
        assert "START:END" in capsys.readouterr().err or "START < END" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(capsys, "trace", "plot", traced_run.path, "-o", tmp_path / "x.png", "--step", "3", "--window", "0:1")
    assert not os.path.exists(tmp_path / "x.png")
