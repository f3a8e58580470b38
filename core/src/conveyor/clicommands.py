"""Subcommands that installed plugins add to ``conveyor`` (entry point group
``conveyor.commands``; the entry point's name is the subcommand's).

The core names none of them: ``pip install 'conveyor[monitor]'`` makes
``conveyor monitor`` appear. A plugin that fails to load, is not a
:class:`~conveyor.interfaces.Command` or takes a built-in name is logged and left
out, so one broken plugin never breaks the command line.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from .exceptions import PluginError
from .plugins import GROUPS, check_command, find, load

log = logging.getLogger("conveyor.cli")


def add_plugin_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    """Add a subparser to ``sub`` (the ``add_subparsers`` result) for each installed
    command plugin; the namespace's ``plugin_command`` is the command to run."""
    group = GROUPS["commands"]
    for info in find(group):
        if info.name in sub.choices:
            log.warning("Command plugin %r (%s) is not added: conveyor already has a "
                        "%r command.", info.name, info.distribution, info.name)
            continue
        try:
            command = load(group, info.name)
            check_command(command, info.name)
        except PluginError as exc:
            log.warning("%s The command is left out.", exc)
            continue
        parser = sub.add_parser(info.name, parents=[parent], help=command.help)
        command.add_arguments(parser)
        parser.set_defaults(plugin_command=command)
