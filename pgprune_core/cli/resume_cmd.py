"""``pgprune resume RUN_DIR``: continue a stopped or killed run from its last checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def resume(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `pgprune run`.")],
) -> None:
    """Continue a run; it ends with exactly the masks of an uninterrupted run."""
    from pgprune_core.report.progress import RichReporter
    from pgprune_core.run.pipeline import run_pipeline
    from pgprune_core.run.rundir import RunDir

    config = RunDir(run_dir).load_config()
    run_pipeline(config, reporter=RichReporter(), resume=run_dir)


def register(app: typer.Typer) -> None:
    app.command("resume")(resume)
