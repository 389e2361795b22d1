"""The notebooks in analysis/notebooks: thin (cells call ckptlab.analysis, define nothing), stored
without outputs, and executed top to bottom in a kernel of this interpreter (nbclient)."""
from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import pytest

from trace_fixtures import REPO

NOTEBOOKS = sorted((Path(REPO) / "analysis" / "notebooks").glob("*.ipynb"))


def _code_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_the_four_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["affinity.ipynb", "overhead_vs_frequency.ipynb", "stragglers.ipynb",
                                           "timeline.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_cleared(path):
    doc = json.loads(path.read_text())
    for cell in doc["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: stored outputs"
    ours = []
    for source in _code_cells(path):
        tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
        defined = [type(n).__name__ for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                                ast.ClassDef, ast.Lambda))]
        assert not defined, f"{path.name}: a cell defines {defined}; put the code in ckptlab.analysis"
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        ours += [m for m in imported if m.split(".")[0] == "ckptlab"]
    assert set(ours) == {"ckptlab.analysis"}, f"{path.name}: imports {ours}, not only ckptlab.analysis"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' figures go to a temp dir: this one
    nb = nbformat.read(path, as_version=4)
    t0 = time.monotonic()
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} shows no figure"
    print(f"{path.name}: {time.monotonic() - t0:.1f} s")
