"""Builds the Typer app after plugins load, so option help and choices come from the registry."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from pgprune_core.errors import EchoedError, PgpruneError
from pgprune_core.plugin.registry import get_registry
from pgprune_core.report.console import err_console

#: ``-h`` is ``--help`` everywhere (sub-commands inherit it from the group's context)
HELP_CONTEXT = {"help_option_names": ["-h", "--help"]}


def _plain_flags(command: Any, ctx: Any) -> None:
    """Boolean flags take no value: show no ``<bool>`` type beside them in the help."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _plain_flags(sub, ctx)


class PgpruneGroup(TyperGroup):
    """Turns user errors from any sub-command into one line and exit status 2."""

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:  # type: ignore[override]
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _plain_flags(command, ctx)
        return command

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:  # type: ignore[override]
        _plain_flags(self, ctx)
        super().format_help(ctx, formatter)

    # typer.Context is typer's public name for the context (a subclass of the click copy
    # typer vendors as the private typer._click, which TyperGroup.invoke declares)
    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except PgpruneError as exc:
            if not isinstance(exc, EchoedError):  # under torchrun rank 0 prints it once
                err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                                  soft_wrap=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            # Ctrl-C outside the optimisation loop (loading, scoring, evaluating): one line and
            # the shell's status for SIGINT, not click's "Aborted!" and status 1
            err_console.print("[yellow]interrupted[/] (a run directory keeps what was saved; "
                              "`pgprune resume DIR` continues it)", highlight=False, soft_wrap=True)
            ctx.exit(130)


def build_app() -> typer.Typer:
    """A fresh ``pgprune`` app with the built-in commands and every plugin's commands."""
    from pgprune_core.cli import (
        config_cmd,
        eval_cmd,
        export_cmd,
        finetune_cmd,
        plugins_cmd,
        resume_cmd,
        run_cmd,
    )

    app = typer.Typer(
        cls=PgpruneGroup,
        name="pgprune",
        help="Structural pruning of LLMs by policy gradient, without back-propagation "
        "through the model.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
        context_settings=HELP_CONTEXT,
    )
    app.callback()(_root)
    for module in (run_cmd, resume_cmd, finetune_cmd, eval_cmd, export_cmd, plugins_cmd, config_cmd):
        module.register(app)
    registry = get_registry()
    registry.register_commands(app)
    return app


def _show_version(value: bool) -> None:
    if value:
        from pgprune_core import __version__

        typer.echo(f"pgprune {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.",
                                          callback=_show_version, is_eager=True)] = False,
) -> None:
    """Structural pruning of LLMs by policy gradient, without back-propagation through the
    model."""


def warn_failures() -> None:
    """Print one warning line per plugin that failed to load (every command shows them)."""
    for failure in get_registry().failures:
        err_console.print(f"[yellow]warning:[/] {escape(str(failure))}", highlight=False, soft_wrap=True)


def main() -> None:
    try:
        app = build_app()
    except PgpruneError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    warn_failures()
    app()
