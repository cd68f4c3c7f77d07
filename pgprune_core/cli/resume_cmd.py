"""``pgprune resume DIR``: continue a stopped or killed run (or fine-tune) from its last
checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def resume(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `pgprune run`, or a fine-tune directory written by `pgprune finetune`.")],
) -> None:
    """Continue a run (it ends with exactly the masks of an uninterrupted run) or a
    fine-tune (exactly the adapters of an uninterrupted one)."""
    from pgprune_core.report.progress import RichReporter
    from pgprune_core.run.rundir import FinetuneDir, RunDir

    if FinetuneDir(run_dir).is_finetune():
        from pgprune_core.recovery.pipeline import load_resumable, run_finetune

        run_finetune(load_resumable(run_dir), reporter=RichReporter(), resume=run_dir)
        return
    from pgprune_core.run.pipeline import run_pipeline

    config = RunDir(run_dir).load_config()
    run_pipeline(config, reporter=RichReporter(), resume=run_dir)


def register(app: typer.Typer) -> None:
    app.command("resume")(resume)
