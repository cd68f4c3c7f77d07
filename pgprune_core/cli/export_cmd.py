"""``pgprune export RUN_DIR|MODEL_DIR --format FORMAT --out DIR``: write a pruned model in a
format a serving engine loads (``hf``, ``decilm``) or pgprune's own (``pgprune``).

What each format can express and how to serve it: docs/serving.md; the library side is
:mod:`pgprune_core.model.export`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pgprune_core.errors import ModelError
from pgprune_core.model.export import EXPORT_FORMATS
from pgprune_core.report.console import console, err_console


def export(
    source: Annotated[str, typer.Argument(help="A run directory or a model directory saved by pgprune.",
                                          metavar="RUN_DIR|MODEL_DIR")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write (must not exist, or be empty).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"One of: {', '.join(EXPORT_FORMATS)}.")] = "pgprune",
) -> None:
    """Write the pruned model as hf (a vanilla transformers class, uniform shapes only),
    decilm (NVIDIA Nemotron-NAS DeciLMForCausalLM: vLLM, SGLang) or pgprune."""
    from pgprune_core.model.export import export_directory
    from pgprune_core.run.loading import model_directory, saved_by_pgprune

    directory = model_directory(source)
    if directory is None:
        raise ModelError(f"no such model or run directory: {source}")
    if not saved_by_pgprune(directory):
        raise ModelError(f"{directory} was not saved by pgprune (its config.json has no pgprune "
                         f"section): export a run directory or its model/")
    result = export_directory(directory, out, fmt)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    console.print(f"exported {result.format} model ({result.params:,} parameters) to "
                  f"{escape(str(result.path))}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
