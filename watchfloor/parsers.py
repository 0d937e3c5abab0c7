"""How every ``watchfloor`` subcommand presents itself: its defaults in its help, and the
environment variables it reads, so that a new user needs no other page to run it."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["HelpFormatter", "command", "group"]

#: Read by every subcommand (README.md, "Configuration", has them all).
COMMON_ENV = ("WATCHFLOOR_LOG_FORMAT",)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: …)" on every option that has a default to show; none for an
    option without one (None) or a flag (False), where it would only say "None"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def command(sub: Any, name: str, *, help: str, env: Sequence[str] = (),
            run: Callable[..., None] | None = None) -> argparse.ArgumentParser:
    """A subcommand whose help shows its defaults and names the variables it reads."""
    names = [*env, *COMMON_ENV]
    epilog = ("environment: " + ", ".join(names) + " (every setting: README.md, 'Configuration')") if names else None
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, epilog=epilog,
                                                     formatter_class=HelpFormatter)
    if run is not None:
        parser.set_defaults(run=run)
    return parser


def group(sub: Any, name: str, *, help: str) -> Any:
    """A subcommand made of subcommands (``users``, ``devices``, ``db``…)."""
    parser = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")
