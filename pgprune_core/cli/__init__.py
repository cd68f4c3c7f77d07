"""The ``pgprune`` command line: a Typer app, one module per command.

Every :class:`~pgprune_core.errors.PgpruneError` raised by any command (built-in or a
plugin's) becomes one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

from pgprune_core.cli.app import build_app, main

__all__ = ["build_app", "main"]
