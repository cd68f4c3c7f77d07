"""``pgprune finetune RUN_DIR|PRUNED_MODEL_DIR --train-file FILE --out DIR``: recover what
pruning lost with LoRA adapters (peft), on next-token cross-entropy, distillation from the
dense model, or both; the adapters are merged and the model saved in the input's format.

Any key of the fine-tune's configuration is a dotted option: ``--lora.r 16
--training.lr 1e-4 --objective.kl_weight 0.3``; docs/finetune.md lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pgprune_core.cli.options import OVERRIDE_CONTEXT
from pgprune_core.config.resolve import parse_overrides

PANEL = "Fine-tuning"


def finetune(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(metavar="RUN_DIR|PRUNED_MODEL_DIR",
                                          help="A run directory or a pruned model directory (pgprune, hf or decilm format).")],
    train_file: Annotated[str | None, typer.Option(help="Training data: Alpaca JSON/JSONL (instruction, input, output) or text (.txt, .jsonl[.gz], .json, .parquet).")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Fine-tune directory to write.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps.", rich_help_panel=PANEL)] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the training data (default 1, when --steps is not given).", rich_help_panel=PANEL)] = None,
    objective: Annotated[str | None, typer.Option(help="ce (next-token), kl (distillation from the dense model) or mix (--objective.kl_weight).", rich_help_panel=PANEL)] = None,
    teacher: Annotated[str | None, typer.Option(help="The dense model for kl/mix (default: the base model the run or the pruned model records).", rich_help_panel=PANEL)] = None,
    eval_file: Annotated[list[str] | None, typer.Option(help="Evaluation text for perplexity before and after (repeatable).", rich_help_panel=PANEL)] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML/JSON file of fine-tune settings.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything cheap, print the config, train nothing.")] = False,
) -> None:
    """Fine-tune a pruned model with LoRA: before/after perplexity, the merged model in the
    input's format (DIR/model) and the unmerged adapters (DIR/adapter).

    Other settings are dotted options, e.g. --lora.r 16 --lora.target_modules q_proj,v_proj
    --training.lr 1e-4 --training.batch_size 8 --data.seq_len 256.
    """
    from pgprune_core.recovery.config import dump_finetune, resolve_finetune
    from pgprune_core.recovery.lora import require_peft
    from pgprune_core.recovery.pipeline import configure, preflight, run_finetune
    from pgprune_core.report.progress import RichReporter

    require_peft()  # first: without it nothing else matters

    flags = {"data.train_file": train_file, "output.dir": out, "training.steps": steps,
             "training.epochs": epochs, "objective.name": objective, "model.teacher": teacher,
             "data.eval_files": list(eval_file) if eval_file else None}
    known = [opt for param in ctx.command.params for opt in getattr(param, "opts", ())]
    resolved = resolve_finetune(config, flags, parse_overrides(ctx.args, known))
    resolved = configure(resolved, source)
    if dry_run:
        preflight(resolved)
        typer.echo(dump_finetune(resolved), nl=False)
        return
    run_finetune(resolved, reporter=RichReporter())


def register(app: typer.Typer) -> None:
    app.command("finetune", context_settings=OVERRIDE_CONTEXT)(finetune)
