"""The loss-file format (bit-exact by construction) and the loss plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ckptlab.analysis.losses import main as plot_main
from ckptlab.analysis.losses import plot_losses
from ckptlab.profiling.lossfile import (LossWriter, compare_loss_files, format_line,
                                        read_loss_file, truncate_loss_file)


def test_repr_round_trips_every_fp32_loss_exactly() -> None:
    values = np.random.default_rng(0).random(1000, dtype=np.float32) * 10
    for v in values:
        step, text = format_line(1, float(v)).split()
        assert np.float32(float(text)) == v and float(text) == float(v)


def _write(path: Path, losses: list[float], start: int = 1) -> Path:
    writer = LossWriter(path, append=False)
    for i, v in enumerate(losses, start):
        writer.write(i, v)
    writer.close()
    return path


def test_compare_finds_the_first_differing_line(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.txt", [3.0, 2.5, 2.0])
    b = _write(tmp_path / "b.txt", [3.0, 2.5, 2.0])
    c = _write(tmp_path / "c.txt", [3.0, 2.5000000000000004, 2.0])
    d = _write(tmp_path / "d.txt", [3.0, 2.5])
    assert compare_loss_files(a, b) is None
    assert compare_loss_files(a, c).line == 2
    assert compare_loss_files(a, d).line == 3 and compare_loss_files(a, d).right is None


def test_truncate_keeps_steps_up_to_the_checkpoint(tmp_path: Path) -> None:
    path = _write(tmp_path / "loss.txt", [5.0, 4.0, 3.0, 2.0, 1.0])
    assert truncate_loss_file(path, 3) == 3
    assert [s for s, _ in read_loss_file(path)] == [1, 2, 3]
    assert truncate_loss_file(tmp_path / "absent.txt", 3) == 0


def test_malformed_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("1 2.0\nnot a line at all\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        read_loss_file(path)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    files = [_write(tmp_path / f"{n}.txt", [3.0, 2.0, 1.5]) for n in "abc"]
    out = plot_losses(files, tmp_path / "fig" / "losses.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(_write(tmp_path / f"{n}.txt", [3.0, 2.0])) for n in "ab"]
    assert plot_main([*files, "-o", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit) as exc:
        plot_main([str(tmp_path / "missing.txt")])
    assert exc.value.code == 2


def test_the_old_module_name_still_plots(tmp_path: Path) -> None:
    import subprocess
    import sys

    files = [str(_write(tmp_path / f"{n}.txt", [3.0, 2.0])) for n in "ab"]
    r = subprocess.run([sys.executable, "-m", "ckptlab.analysis.plot_losses", *files, "-o", str(tmp_path / "o.png")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"


def test_truncation_leaves_no_temp_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "loss.txt", [5.0, 4.0, 3.0])
    truncate_loss_file(path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.txt"] and path.read_text() == "1 5.0\n"


# -- a .csv loss file is real CSV; old space-separated files still read -----------------------

def test_a_csv_loss_file_is_real_csv_and_round_trips_in_pandas(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    values = [float(v) for v in np.random.default_rng(1).random(500, dtype=np.float32) * 10]
    values += [0.1, 1 / 3, 5e-324, 1.7976931348623157e308]
    path = _write(tmp_path / "loss_trace_pccheck.csv", values)
    lines = path.read_text().splitlines()
    assert lines[0] == "step,loss" and lines[1] == f"1,{values[0]!r}"
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["step", "loss"]
    assert str(frame["step"].dtype) == "int64" and str(frame["loss"].dtype) == "float64"
    assert frame["step"].tolist() == list(range(1, len(values) + 1))
    assert frame["loss"].tolist() == values  # bit-exact: repr round-trips through pandas' parser
    assert read_loss_file(path) == list(enumerate(values, 1))


def test_csv_resume_truncates_and_appends_keeping_the_header(tmp_path: Path) -> None:
    full = _write(tmp_path / "full.csv", [5.0, 4.0, 3.0, 2.0, 1.0])
    resumed = _write(tmp_path / "resumed.csv", [5.0, 4.0, 3.0, 99.0])  # killed after step 4
    assert truncate_loss_file(resumed, 3) == 3
    writer = LossWriter(resumed, append=True)
    writer.write(4, 2.0)
    writer.write(5, 1.0)
    writer.close()
    assert compare_loss_files(full, resumed) is None and full.read_bytes() == resumed.read_bytes()


def test_old_space_separated_files_still_read_and_resume_in_their_format(tmp_path: Path) -> None:
    old = tmp_path / "loss_trace_old.csv"  # what earlier runs wrote under a .csv name
    old.write_text("1 5.0\n2 4.0\n3 3.5\n")
    assert read_loss_file(old) == [(1, 5.0), (2, 4.0), (3, 3.5)]
    assert truncate_loss_file(old, 2) == 2
    writer = LossWriter(old, append=True)  # a resumed old run continues in the file's own format
    writer.write(3, 3.0)
    writer.close()
    assert old.read_text() == "1 5.0\n2 4.0\n3 3.0\n"
    txt = _write(tmp_path / "loss.txt", [5.0, 4.0])  # other extensions keep '<step> <loss>'
    assert txt.read_text() == "1 5.0\n2 4.0\n"


def test_plot_reads_csv_and_old_files(tmp_path: Path) -> None:
    new = _write(tmp_path / "a.csv", [3.0, 2.0])
    old = tmp_path / "b.txt"
    old.write_text("1 3.0\n2 2.0\n")
    out = plot_losses([new, old], tmp_path / "p.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
