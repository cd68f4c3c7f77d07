"""``pgprune run``: prune a model end to end (the demo model when --model is omitted)."""

from __future__ import annotations

from typing import Annotated

import typer

from pgprune_core.cli.options import OVERRIDE_CONTEXT, config_options
from pgprune_core.config.sections import RunConfig


def _run(
    config: RunConfig,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the config, run nothing.")] = False,
) -> None:
    """Learn keep-probabilities by policy gradient, cut the model, save and evaluate it.

    Any config key can be overridden with a dotted option, e.g. --estimator.lr 3e-2
    --training.checkpoint_every 50.  See `pgprune config show` for every key.
    """
    if dry_run:
        from pgprune_core.config.resolve import dump_config
        from pgprune_core.demo import apply_demo_defaults

        typer.echo(dump_config(apply_demo_defaults(config)), nl=False)
        return
    from pgprune_core.report.progress import RichReporter
    from pgprune_core.run.pipeline import run_pipeline

    run_pipeline(config, reporter=RichReporter())


def register(app: typer.Typer) -> None:
    app.command("run", context_settings=OVERRIDE_CONTEXT)(config_options(_run))
