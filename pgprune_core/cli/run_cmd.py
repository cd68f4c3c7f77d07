"""``pgprune run``: prune a model end to end (the demo model when --model is omitted)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import RunConfig
from .options import OVERRIDE_CONTEXT, config_options


def _run(
    config: RunConfig,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the config, run nothing.")] = False,
) -> None:
    """Learn keep-probabilities by policy gradient, cut the model, save and evaluate it.

    Any config key can be overridden with a dotted option, e.g. --estimator.lr 3e-2
    --training.checkpoint_every 50.  See `pgprune config show` for every key.
    """
    if dry_run:
        from ..config import dump_config
        from ..demo import apply_demo_defaults

        typer.echo(dump_config(apply_demo_defaults(config)), nl=False)
        return
    from ..pipeline import run_pipeline
    from .progress import RichReporter

    run_pipeline(config, reporter=RichReporter())


def register(app: typer.Typer) -> None:
    app.command("run", context_settings=OVERRIDE_CONTEXT)(config_options(_run))
