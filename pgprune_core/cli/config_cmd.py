"""``pgprune config show``: the fully resolved configuration, as YAML."""

from __future__ import annotations

import typer

from pgprune_core.cli.options import OVERRIDE_CONTEXT, config_options
from pgprune_core.config.resolve import dump_config
from pgprune_core.config.sections import RunConfig


def _show(config: RunConfig) -> None:
    """Print the resolved config (defaults < --config file < flags < dotted overrides),
    with the demo's data and run length filled in when no --model is named."""
    from pgprune_core.demo import apply_demo_defaults

    typer.echo(dump_config(apply_demo_defaults(config)), nl=False)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
    group.command("show", context_settings=OVERRIDE_CONTEXT)(config_options(_show))
    app.add_typer(group, name="config")
