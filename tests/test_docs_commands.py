"""Every `ckptlab ...` command line in README.md and docs/*.md parses with the installed
dispatcher (a renamed or removed subcommand or flag fails here, not in a reader's shell)."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _shell_blocks(text: str) -> list[list[str]]:
    """Lines of the ```bash / ```sh / ``` fenced blocks, backslash continuations joined."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    lang = ""
    for line in text.splitlines():
        if not line.startswith("```"):
            if current is not None:
                current.append(line)
        elif current is None:
            lang, current = line[3:].strip(), []
        else:
            if lang in ("", "bash", "sh", "console"):
                blocks.append("\n".join(current).replace("\\\n", " ").splitlines())
            current = None
    return blocks


def _commands() -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        for block in _shell_blocks(path.read_text()):
            for line in block:
                line = line.split(" #")[0].strip()
                if line.startswith("ckptlab ") and "..." not in line:
                    out.append((path.name, line))
    return out


COMMANDS = _commands()


def test_the_docs_show_commands():
    assert {name for name, _ in COMMANDS} >= {"README.md", "PROFILING.md", "TRACE.md", "FAULTS.md"}
    assert any(line.startswith("ckptlab experiment affinity") for _, line in COMMANDS)
    assert any(line.startswith("ckptlab analyze") for _, line in COMMANDS)
    assert not [line for _, line in COMMANDS if line.startswith("ckptlab profile affinity")], \
        "the old spelling only says where the experiment went"


@pytest.mark.parametrize("doc, line", COMMANDS, ids=[f"{d}:{i}" for i, (d, _) in enumerate(COMMANDS)])
def test_documented_command_parses(doc, line, capsys):
    from ckptlab.core.cli import build_parser

    parser, broken = build_parser()
    argv = shlex.split(line)[1:]
    assert argv[0] not in broken, broken.get(argv[0])
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{doc}: `{line}` does not parse (exit {e.code}): {capsys.readouterr().err}")
