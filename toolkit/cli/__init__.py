"""``lcpress`` on the command line: one module per command, plus the commands plugins register.

Every command is a thin shell over the Python API: it parses its arguments,
calls one API function and prints the result. Errors lcpress raises on
purpose print as one clear line (exit 2) instead of a traceback; so does a
closed pipe (``lcpress options | head``).

A built-in command is a module here with ``NAME``, ``HELP``,
``arguments(parser)`` and ``run(args)``; a plugin adds one through the
``lcpress_register_commands`` hook (docs/plugins.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from lcpress.cli import (compress, costs, demo, export, info, options, plugins, profile, report, sweep)
from lcpress.cli.options import options_reference
from lcpress.errors import LcpressError
from lcpress.version import __version__

#: The built-in commands, in the order ``lcpress --help`` lists them.
COMMANDS = (demo, compress, sweep, report, export, profile, costs, plugins, info, options)

__all__ = ["main", "COMMANDS", "options_reference"]


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 1
        return int(args.func(args) or 0)
    except (LcpressError, FileExistsError) as exc:
        print(f"lcpress: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lcpress options | head`: the reader left; nothing is wrong
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        # a run that had written a checkpoint has said which one is intact, and how to resume it
        print("lcpress: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit flush does not raise BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcpress", description="Compress trained PyTorch models with the LC algorithm.")
    parser.add_argument("--version", action="version", version=f"lcpress {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP, description=command.HELP[:1].upper() + command.HELP[1:])
        command.arguments(p)
        p.set_defaults(func=command.run)
    _plugin_commands(sub)
    return parser


def _plugin_commands(sub: argparse._SubParsersAction) -> None:
    """The commands plugins register (``lcpress_register_commands``); a name a built-in holds is refused."""
    from lcpress.core.registry import get_registry

    registry = get_registry()
    builtin = {c.NAME for c in COMMANDS}
    for name, command in registry.commands.items():
        origin = registry.origins[("command", name)]
        if name in builtin:
            raise LcpressError(f"plugin {origin.plugin!r} ({origin.package}) registers the command {name!r}, which "
                               f"is a built-in lcpress command; the plugin must choose another name")
        p = sub.add_parser(name, help=f"{command.help} [plugin {origin.plugin}]".strip())
        if command.arguments is not None:
            command.arguments(p)
        p.set_defaults(func=command.run)
