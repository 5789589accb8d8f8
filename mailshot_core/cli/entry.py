"""The entry point: one clear line for every error a user can cause."""

from __future__ import annotations

import sys

import typer

from mailshot_core.cli.common import (
    app,
    err,
)
from mailshot_core.config import ConfigError
from mailshot_core.errors import MailshotError


def _undecodable_argument(args: list[str]) -> str | None:
    """The first argument that is not UTF-8, described; None when all are.

    Python hands undecodable bytes of argv over as lone surrogates (PEP 383): they would only fail
    later, with a traceback, when the value reaches the database, a header or the terminal.
    """
    import os

    for position, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            raw = os.fsencode(arg)
            shown = raw.decode("utf-8", "backslashreplace")
            return (
                f"argument {position} ({shown!r}) is not UTF-8 text: byte 0x{raw[len(os.fsencode(arg[: exc.start]))]:02x} "
                f"at character {exc.start + 1}; give it in UTF-8"
            )
    return None


def main() -> None:
    """Entry point: one clear line for every error a user can cause."""
    problem = _undecodable_argument(sys.argv[1:])
    if problem is not None:
        err.print(f"error: {problem}", markup=False)
        sys.exit(1)
    try:
        app(standalone_mode=False)
    except ConfigError as exc:
        for line in exc.problems:  # one line per bad setting
            err.print(f"error: {line}", markup=False)
        sys.exit(1)
    except MailshotError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(1)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
