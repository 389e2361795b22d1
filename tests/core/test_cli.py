"""core/cli.py: the dispatcher finds every part's commands through entry points and never
lets a command that fails to load disappear silently."""
import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from ckptlab.core import cli

GROUP = cli.COMMANDS_GROUP


def _ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=GROUP)


def test_every_installed_command_registers():
    names = {ep.name for ep in cli.command_entry_points()}
    assert {"train", "campaign", "trace", "profile"} <= names
    parser, broken = cli.build_parser()
    assert broken == {}
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == names | {"inspect"}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    (tmp_path / "good_cmd.py").write_text(
        "def register(sub):\n    p = sub.add_parser('good')\n    p.set_defaults(func=lambda a: 7)\n")
    (tmp_path / "needs_pkg.py").write_text("import surely_not_installed_pkg\ndef register(sub): pass\n")
    (tmp_path / "buggy_cmd.py").write_text("from good_cmd import no_such_name\ndef register(sub): pass\n")
    (tmp_path / "misnamed.py").write_text("def register(sub):\n    sub.add_parser('other')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_command_that_fails_to_import_is_an_error_naming_it(plugin_dir, monkeypatch, capsys):
    plugins = [_ep("good", "good_cmd:register"), _ep("needs", "needs_pkg:register"), _ep("buggy", "buggy_cmd:register")]
    monkeypatch.setattr(cli, "command_entry_points", lambda: plugins)
    parser, broken = cli.build_parser()
    assert set(broken) == {"needs", "buggy"}
    assert "unavailable" in parser.format_help()  # listed, not silently missing
    assert cli.main(["good"]) == 7
    assert cli.main(["needs", "--anything", "x"]) == 2
    err = capsys.readouterr().err
    assert "'needs' command (needs_pkg:register)" in err and "surely_not_installed_pkg" in err
    assert "install the package 'surely_not_installed_pkg'" in err
    assert cli.main(["buggy"]) == 2
    err = capsys.readouterr().err
    assert "'buggy' command (buggy_cmd:register)" in err and "ImportError" in err and "install" not in err


def test_an_entry_point_must_register_its_own_name(plugin_dir):
    with pytest.raises(RuntimeError, match="did not register a command named 'wanted'"):
        cli.build_parser([_ep("wanted", "misnamed:register")])
    with pytest.raises(RuntimeError, match="registered twice"):
        cli.build_parser([_ep("inspect", "good_cmd:register")])


def test_light_core_modules_do_not_import_torch():
    code = ("import sys, ckptlab.core, ckptlab.core.cli, ckptlab.core.config, ckptlab.core.errors\n"
            "from ckptlab.core import CheckpointConfig, CheckpointError\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "from ckptlab.core import open_checkpointer, KINDS\n"
            "assert 'torch' not in sys.modules, 'torch was imported by the registry'\n"
            "import ckptlab.core.recovery\n"
            "assert 'torch' in sys.modules  # the check sees torch where it is imported\n")
    subprocess.run([sys.executable, "-c", code], check=True)
