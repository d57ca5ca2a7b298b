"""The ``ssehub`` command: a thin layer over the public API."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from ssehub import __version__
from ssehub._clitools import add_client_commands
from ssehub.exceptions import SsehubError
from ssehub.settings import ENV_PREFIX, Settings


def _add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field in dataclasses.fields(Settings):
        group_name = field.metadata.get("group", "server")
        group = groups.get(group_name) or parser.add_argument_group(group_name)
        groups[group_name] = group
        flag = "--" + field.name.replace("_", "-")
        env = ENV_PREFIX + field.name.upper()
        default = field.default if field.default not in (dataclasses.MISSING, None) else "none"
        help_text = f"{field.metadata['help']} (env {env}; default {default!s})"
        kind = str(field.type)
        if kind == "bool":
            group.add_argument(flag, action="store_true", default=None, help=help_text)
        elif kind.startswith("list"):
            group.add_argument(flag, action="append", default=None, metavar="VALUE", help=help_text)
        else:
            converter: Any = {"int": int, "float": float, "float | None": float}.get(kind, str)
            group.add_argument(flag, type=converter, default=None, metavar=field.name.upper(),
                               help=help_text)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="ssehub", description="Server-Sent Events to specific users."
    )
    parser.add_argument("--version", action="version", version=f"ssehub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the hub", description="Run the hub server until SIGTERM or Ctrl-C."
    )
    _add_settings_arguments(serve)
    add_client_commands(commands)
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        field.name: getattr(args, field.name, None) for field in dataclasses.fields(Settings)
    }
    return Settings.from_env(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        return _run_client_command(args)
    try:
        if args.command == "serve":
            from ssehub.server import serve

            serve(_settings_from(args))
    except SsehubError as exc:
        print(f"ssehub: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _run_client_command(args: argparse.Namespace) -> int:
    try:
        return int(args.run(args))
    except SsehubError as exc:
        print(f"ssehub {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
