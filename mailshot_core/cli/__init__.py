"""The ``mailshot`` command (Typer + Rich), one module per group of commands.

Importing the package registers every command on ``common.app``; ``main`` is the console script's
entry point (``mailshot_core.cli:main``).  Prefect is imported only by the commands that run flows.
"""

# Imported in the order `mailshot --help` lists their commands.
from mailshot_core.cli import audience, sendings, running, maintenance, api_keys  # noqa: F401, I001  (they register commands)
from mailshot_core.cli.common import app
from mailshot_core.cli.entry import main

__all__ = ["app", "main"]
