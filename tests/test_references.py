"""Every reference in the code and docs points inside the repository: no pointers to design
notes that ship elsewhere, and every path a comment or document names exists (so a file
that moves takes its references with it), including a bare file name a document's table
gives in backticks (`test_train_resume.py`)."""
from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = {".py", ".pyi", ".cpp", ".hpp", ".md", ".sh", ".toml", ".txt", ".ipynb", ".cmake"}
SKIP_DIRS = {".git", ".venv", "build", "results", "__pycache__", "demo-out", "runs"}
# checkers whose own tests name made-up paths on purpose
SELF_TESTING = {"tests/test_references.py", "tests/test_architecture.py"}
OUTSIDE = re.compile(r"DESIGN\.md|\bresearch/\w|\.\./shared")
PARTS = "core|csrc|faults|profiling|training|analysis|tests|benchmarks|docs|cmake"
PATH = re.compile(rf"(?<![\w./-])((?:{PARTS})/[\w.{{}},/-]*[\w}}])")
# a source or document file named in backticks without its folder, as docs' tables of tests do
BARE_NAME = re.compile(r"`([\w.-]+\.(?:py|pyi|cpp|hpp|md|sh|toml|cmake))`")


def _files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if str(p.relative_to(ROOT)) not in SELF_TESTING and \
                    (p.suffix in SCANNED or name in ("Makefile", "CMakeLists.txt")):
                yield p


def _expand(ref: str) -> list[str]:
    """'csrc/trace.{hpp,cpp}' -> both; other text unchanged."""
    m = re.search(r"\{([^{}]*)\}", ref)
    if not m:
        return [ref]
    return list(itertools.chain.from_iterable(
        _expand(ref[:m.start()] + alt + ref[m.end():]) for alt in m.group(1).split(",")))


def _missing_paths(text: str) -> list[str]:
    missing = []
    for m in PATH.finditer(text):
        ref = m.group(1).rstrip(".,")
        if "*" in ref or "<" in ref:
            continue
        for path in _expand(ref):
            path = path.rstrip("/")
            if "." not in Path(path).name and not (ROOT / path).exists():
                continue  # a prose phrase like "core/engine", not a file name
            if not (ROOT / path).exists():
                missing.append(path)
    return missing


def _repo_file_names() -> set[str]:
    names: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        names.update(filenames)
    return names


def _missing_bare_names(text: str, names: set[str]) -> list[str]:
    return [m.group(1) for m in BARE_NAME.finditer(text) if m.group(1) not in names]


def test_no_reference_leaves_the_repository():
    bad = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in _files()
           for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert not bad, "references to files outside the repository:\n" + "\n".join(bad)


def test_every_named_path_exists():
    bad = [f"{p.relative_to(ROOT)}:{i}: {ref}" for p in _files()
           for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) for ref in _missing_paths(line)]
    assert not bad, "paths named but not in the repository:\n" + "\n".join(bad)


def test_every_file_a_document_names_exists():
    """Markdown only: code names files it writes (`report.md`), which need not exist."""
    names = _repo_file_names()
    bad = [f"{p.relative_to(ROOT)}:{i}: {name}" for p in _files() if p.suffix == ".md"
           for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
           for name in _missing_bare_names(line, names)]
    assert not bad, "files named in documents but nowhere in the repository:\n" + "\n".join(bad)


def test_the_checks_can_fail():
    assert OUTSIDE.search("see DESIGN.md") and OUTSIDE.search("research/tracing.md §6")
    assert _missing_paths("moved to core/no_such_module.py and csrc/trace.{hpp,nope}") == \
        ["core/no_such_module.py", "csrc/trace.nope"]
    assert _missing_paths("core/commit.py, csrc/trace.{hpp,cpp}, docs/FORMAT.md") == []
    names = _repo_file_names()
    assert _missing_bare_names("| `test_no_such_file.py`, `conftest.py` | ... |", names) == ["test_no_such_file.py"]
    assert _missing_bare_names("| `test_references.py` | `bench.json`, `engine.cpp` |", names) == []
