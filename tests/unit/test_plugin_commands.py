"""Installed plugins add ``conveyor`` subcommands (group ``conveyor.commands``); a
broken one, one that is not a Command, or one taking a built-in name is left out
with a warning, and the command line keeps working."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conveyor.cli import main

Make = Callable[[str, dict[str, dict[str, str]], dict[str, str]], None]

HELLO = '''
class Hello:
    help = "say hello to the app"

    def add_arguments(self, parser):
        parser.add_argument("--name", default="world")

    def run(self, app, ns):
        print(f"hello {ns.name} from {app.main}")
        return 3

command = Hello()
'''


def test_a_command_plugin_adds_a_subcommand(fake_plugins: Make,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    fake_plugins("conveyor-hello", {"conveyor.commands": {"hello": "hello_cmd:command"}},
                 {"hello_cmd.py": HELLO})
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "say hello to the app" in capsys.readouterr().out
    assert main(["hello", "--name", "you"]) == 3  # its exit status is conveyor's
    assert capsys.readouterr().out.strip() == "hello you from None"

    assert main(["plugins"]) == 0
    listing = capsys.readouterr().out
    assert "conveyor.commands:" in listing
    assert any(line.split()[:2] == ["hello", "conveyor-hello"] and line.endswith("ok")
               for line in listing.splitlines()), listing


def test_bad_command_plugins_are_left_out_and_say_why(
        fake_plugins: Make, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    fake_plugins("conveyor-badcmds", {"conveyor.commands": {
        "broken": "no_such_module_xyz:command",
        "notacommand": "notcmd_mod:command",
        "worker": "hello_cmd2:command",
    }}, {"notcmd_mod.py": "command = 42\n", "hello_cmd2.py": HELLO})
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "broken" not in out and "notacommand" not in out
    assert "say hello" not in out  # the built-in worker stays
    text = caplog.text
    assert "No module named 'no_such_module_xyz'" in text
    assert "'notacommand'" in text and "not a conveyor.interfaces.Command" in text
    assert "conveyor already has a 'worker' command" in text
    with pytest.raises(SystemExit) as exc:
        main(["broken"])
    assert exc.value.code == 2  # argparse: unknown command
