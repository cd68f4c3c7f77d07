"""``pgprune eval MODEL_OR_RUN_DIR``: measure any model with the registered evaluators.

Accepts a Hugging Face model directory or hub id (loaded through the adapter that claims
it, or plain ``AutoModelForCausalLM`` when none does: measuring needs no architecture
knowledge), a model saved by pgprune (its config has a ``pgprune`` section; loaded with
``load_pruned``; a ``decilm`` export with pgprune's own copy of its modeling code), or a run
directory (its ``model/``).  Evaluator options are dotted
options named after the evaluator: ``--perplexity.max_windows 50``, ``--lm-eval.tasks
piqa,arc_easy``.  The result has the shape of one side of a run's ``metrics.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, cast

import torch
import typer
from pydantic import ValidationError
from rich.table import Table

from pgprune_core.cli.options import OVERRIDE_CONTEXT
from pgprune_core.config.resolve import parse_overrides
from pgprune_core.config.sections import DEFAULT_EVALUATORS, DTYPES, DataSection
from pgprune_core.errors import ConfigError
from pgprune_core.interfaces import EvalContext, Evaluator
from pgprune_core.plugin.registry import get_registry
from pgprune_core.report.console import console
from pgprune_core.run.loading import load_for_eval, model_directory, saved_by_pgprune
from pgprune_core.run.rundir import RunDir

__all__ = ["evaluate_cmd", "load_for_eval", "model_directory", "register", "saved_by_pgprune"]


def evaluator_configs(names: list[str], extra_args: list[str]) -> list[Any]:
    """Each named evaluator's validated ``Config``, with its ``--NAME.key VALUE`` options."""
    registry = get_registry()
    options: dict[str, dict[str, Any]] = {name: {} for name in names}
    for dotted, value in parse_overrides(extra_args).items():
        owner, _, key = dotted.partition(".")
        if owner not in options:
            registry.get("evaluator", owner)  # an unknown name: list the valid ones
            raise ConfigError(f"--{dotted} is an option of evaluator '{owner}', which is not "
                              f"selected; add --evaluator {owner}")
        options[owner][key] = value
    configs = []
    for name in names:
        cls = registry.cls("evaluator", name)
        try:
            configs.append(cls.Config(**options[name]))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown option"
            raise ConfigError(f"--{name}.{where}: {message}") from None
    return configs


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_cmd(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="MODEL_OR_RUN_DIR", help="Model directory, hub id, pgprune pruned model or run directory.")],
    evaluator: Annotated[list[str] | None, typer.Option(help="Evaluator (repeatable); default: perplexity and efficiency.")] = None,
    eval: Annotated[list[str] | None, typer.Option(help="Named evaluation corpus (repeatable); default wikitext2 unless --eval-file is given.")] = None,
    eval_file: Annotated[list[str] | None, typer.Option(help="Local evaluation file (repeatable), named after its file stem.")] = None,
    text_field: Annotated[str, typer.Option(help="Field holding the text in json/jsonl/parquet files.")] = "text",
    seq_len: Annotated[int, typer.Option(min=2, help="Window length for perplexity (the paper: 128).")] = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per forward pass.")] = 8,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: cuda when available).")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Seed of the random inputs of timing measurements.")] = 0,
    cache_dir: Annotated[str | None, typer.Option(help="Cache of tokenized corpora (default: ~/.cache/pgprune).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON (one side of metrics.json).")] = False,
    out: Annotated[Path | None, typer.Option(help="Write DIR/metrics.json.")] = None,
) -> None:
    """Measure a model with the registered evaluators (perplexity, efficiency, lm-eval, ...).

    Evaluator options: --NAME.KEY VALUE, e.g. --perplexity.max_windows 50
    --efficiency.batch_size 4 --lm-eval.tasks piqa,arc_easy.
    """
    from pgprune_core.data import eval_sources
    from pgprune_core.evaluation.efficiency import count_parameters
    from pgprune_core.report.markdown import comparison_rows
    from pgprune_core.report.progress import RichReporter
    from pgprune_core.run.artifacts import atomic_write_json

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    from pgprune_core.run.checks import check_device

    check_device(device or default_device())
    for name in eval_file or []:
        if not Path(name).expanduser().is_file():
            raise ConfigError(f"evaluation file not found: {name}")
    if out is not None and RunDir(out).marker.exists():
        raise ConfigError(f"--out {out} holds a pgprune run, whose metrics.json is the run's own; "
                          f"choose another --out")
    directory = model_directory(target)
    names = list(dict.fromkeys(evaluator or DEFAULT_EVALUATORS))
    configs = evaluator_configs(names, list(ctx.args))
    data = DataSection(
        eval=eval if eval is not None else ([] if eval_file else ["wikitext2"]),
        eval_files=eval_file or [],
        text_field=text_field,
        cache_dir=cache_dir,
    )
    datasets = eval_sources(data)
    reporter = RichReporter()
    reporter.phase(f"loading {target}")
    loaded = load_for_eval(target, directory, dtype, device or default_device())
    model_device = next(loaded.model.parameters()).device
    metrics: dict[str, Any] = {"params": count_parameters(loaded.model).total}
    registry = get_registry()
    for config in configs:
        reporter.phase(f"{config.name}")
        evaluator_obj = cast(Evaluator, registry.cls("evaluator", config.name)(config))
        metrics.update(evaluator_obj.evaluate(EvalContext(
            model=loaded.model, tokenizer=loaded.tokenizer, device=model_device, label=target,
            datasets=datasets, seq_len=seq_len, batch_size=batch_size, seed=seed,
            model_path=loaded.path, reporter=reporter,
        )))
    if out is not None:
        written = atomic_write_json(RunDir(out).metrics, metrics)
        reporter.message(f"wrote {written}")
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    table = Table(title=f"{target} ({loaded.how})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in comparison_rows([metrics]):
        table.add_row(row.label, row.values[0])
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("eval", context_settings=OVERRIDE_CONTEXT)(evaluate_cmd)
