"""The import arrows of docs/ARCHITECTURE.md, checked on every module of every part.

Each module's dependencies are read from its syntax tree: ``import`` and ``from`` statements
anywhere (top level, inside functions, under ``try``), relative imports resolved,
``importlib.import_module(...)`` / ``__import__(...)`` calls, and any other string constant
that names a ckptlab module (``[python, "-m", "ckptlab.training.cli"]`` starts training code
as surely as an import does). Docstrings are prose and are not read. Notebooks in
``analysis/notebooks`` are checked cell by cell like modules of the analysis part.

An edge between two parts that is not an arrow of ``ALLOWED`` fails the test; there is no
list of exceptions.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("core", "faults", "profiling", "training", "analysis")
ENGINE = "_engine"  # ckptlab._engine, the compiled csrc/ engine

# Who may import whom (docs/ARCHITECTURE.md, "Arrows"). Anything else is forbidden; the
# edges the design singles out as "never" are in NEVER, for the messages.
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset({"profiling", ENGINE}),
    "faults": frozenset({"core", "training", "profiling", ENGINE}),
    "training": frozenset({"core", "profiling", "analysis"}),
    "analysis": frozenset({"profiling"}),
    "profiling": frozenset({ENGINE}),
}
NEVER = {
    ("core", "training"), ("core", "analysis"), ("core", "faults"),
    ("profiling", "core"), ("analysis", "core"), ("analysis", "training"),
}

_MODULE = re.compile(r"ckptlab(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                out.add(id(body[0].value))
    return out


def _part_of(module: str) -> str | None:
    """'ckptlab.core.state' -> 'core'; 'ckptlab._engine' -> '_engine'; else None."""
    parts = module.split(".")
    if parts[0] != "ckptlab" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in PARTS or parts[1] == ENGINE else None


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) of every ckptlab module ``source`` depends on; ``package`` is the
    dotted package of the module (for relative imports)."""
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            if mod == "ckptlab":  # from ckptlab import core, _engine
                found += [(node.lineno, f"ckptlab.{a.name}") for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found += [(node.lineno, m.group(0)) for m in _MODULE.finditer(node.value)]
    return [(line, mod) for line, mod in found if mod.startswith("ckptlab.")]


def _sources(root: Path, part: str):
    for path in sorted((root / part).rglob("*.py")):
        yield path, path.read_text()
    for nb in sorted((root / part).rglob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        yield nb, "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))


def forbidden_edges(root: Path) -> list[str]:
    """Every import from one part into another that is not an arrow, as readable lines."""
    bad = []
    for part in PARTS:
        for path, source in _sources(root, part):
            rel = path.relative_to(root)
            package = ".".join(["ckptlab", *rel.parent.parts])
            for line, mod in imported_modules(source, package):
                target = _part_of(mod)
                if target is None or target == part or target in ALLOWED[part]:
                    continue
                why = "a 'never' edge" if (part, target) in NEVER else "not an arrow"
                bad.append(f"{rel}:{line}: {part} -> {target} ({mod}): {why}")
    return bad


def test_every_import_follows_an_arrow():
    bad = forbidden_edges(ROOT)
    assert not bad, "imports that docs/ARCHITECTURE.md forbids:\n" + "\n".join(bad)


def private_imports(root: Path) -> list[str]:
    """Names starting with '_' imported from another part (its public surface is its own)."""
    bad = []
    for part in PARTS:
        for path, source in _sources(root, part):
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    target = _part_of(node.module)
                    if target and target not in (part, ENGINE):
                        bad += [f"{path.relative_to(root)}:{node.lineno}: {node.module}.{a.name}"
                                for a in node.names if a.name.startswith("_") and a.name != ENGINE]
    return bad


def test_no_part_imports_another_parts_private_names():
    bad = private_imports(ROOT)
    assert not bad, "private names imported across parts:\n" + "\n".join(bad)


def test_arrows_are_the_documented_ones():
    """The table in docs/ARCHITECTURE.md and ALLOWED say the same thing."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = re.findall(r"^\| *(\w+) *\| *([^|]*)\|", text, flags=re.M)
    documented = {src: frozenset(t.strip("` ") for t in dst.split(",") if t.strip("` ") not in ("", "—"))
                  for src, dst in rows if src in PARTS}
    assert documented == ALLOWED


# --- the test of the test ---------------------------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


@pytest.mark.parametrize("source, edge", [
    ("from ckptlab.training.loop import train\n", "core -> training"),
    ("def f():\n    import ckptlab.analysis.stragglers\n", "core -> analysis"),
    ("try:\n    from ckptlab.faults import oracle\nexcept ImportError:\n    pass\n", "core -> faults"),
    ("from ckptlab import training\n", "core -> training"),
    ("import importlib\nm = importlib.import_module('ckptlab.training.cli')\n", "core -> training"),
    ("cmd = ['python', '-m', 'ckptlab.faults.saver']\n", "core -> faults"),
    ("from ..training import loop\n", "core -> training"),
])
def test_a_forbidden_import_fails(tmp_path, source, edge):
    root = _tree(tmp_path, {"core/__init__.py": "", "core/x.py": source})
    bad = forbidden_edges(root)
    assert len(bad) == 1 and edge in bad[0] and "core/x.py" in bad[0], bad


def test_allowed_imports_and_docstrings_pass(tmp_path):
    root = _tree(tmp_path, {
        "core/x.py": '"""Mentions ckptlab.training.loop in prose only."""\n'
                     "from ckptlab.profiling import phase\nfrom ckptlab import _engine\nfrom . import y\n",
        "analysis/a.py": "from ckptlab.profiling.schema import read_trace\n",
    })
    assert forbidden_edges(root) == []


def test_a_private_import_across_parts_fails(tmp_path):
    root = _tree(tmp_path, {"training/t.py": "from ckptlab.core.state import _round_up, capture\n"
                                             "from ckptlab.training.loop import _run\n"})
    assert private_imports(root) == ["training/t.py:1: ckptlab.core.state._round_up"]


def test_notebook_cells_are_checked(tmp_path):
    cells = [{"cell_type": "markdown", "source": ["uses ckptlab.core"]},
             {"cell_type": "code", "source": ["%matplotlib inline\n", "from ckptlab.core import load_latest\n"]}]
    root = _tree(tmp_path, {"analysis/notebooks/n.ipynb": json.dumps({"cells": cells})})
    bad = forbidden_edges(root)
    assert len(bad) == 1 and "analysis -> core" in bad[0]
