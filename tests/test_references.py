"""Every reference in the code and docs points inside the repository: no pointers to design
notes that ship elsewhere, and every path a comment or document names exists (so a file
that moves takes its references with it)."""
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


def test_no_reference_leaves_the_repository():
    bad = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in _files()
           for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert not bad, "references to files outside the repository:\n" + "\n".join(bad)


def test_every_named_path_exists():
    bad = [f"{p.relative_to(ROOT)}:{i}: {ref}" for p in _files()
           for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) for ref in _missing_paths(line)]
    assert not bad, "paths named but not in the repository:\n" + "\n".join(bad)


def test_the_checks_can_fail():
    assert OUTSIDE.search("see DESIGN.md") and OUTSIDE.search("research/tracing.md §6")
    assert _missing_paths("moved to core/no_such_module.py and csrc/trace.{hpp,nope}") == \
        ["core/no_such_module.py", "csrc/trace.nope"]
    assert _missing_paths("core/commit.py, csrc/trace.{hpp,cpp}, docs/FORMAT.md") == []
