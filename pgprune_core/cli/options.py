"""The option surface shared by ``pgprune run`` and ``pgprune config show``.

Flags map onto dotted config keys (``--prune-rate`` -> ``pruning.prune_rate``); anything
else of the form ``--section.key VALUE`` is a dotted override, applied last.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from pgprune_core.config.resolve import parse_overrides, resolve_config
from pgprune_core.plugin.registry import get_registry

#: parameter name -> dotted config key
FLAG_KEYS: dict[str, str] = {
    "model": "model.name_or_path",
    "adapter": "model.adapter",
    "dtype": "model.dtype",
    "device": "model.device",
    "device_map": "model.device_map",
    "max_memory": "model.max_memory",
    "offload_folder": "model.offload_folder",
    "estimator": "estimator.name",
    "granularity": "pruning.granularity",
    "prune_rate": "pruning.prune_rate",
    "budget": "pruning.budget",
    "protect_layers": "pruning.protect_layers",
    "init": "init.name",
    "schedule": "training.schedule",
    "calib": "data.calib",
    "calib_file": "data.calib_file",
    "eval": "data.eval",
    "eval_file": "data.eval_files",
    "evaluator": "evaluation.evaluators",
    "steps": "training.steps",
    "batch_size": "training.batch_size",
    "seq_len": "data.seq_len",
    "seed": "training.seed",
    "out": "output.dir",
}

PANEL_MODEL = "Model"
PANEL_PRUNE = "Pruning"
PANEL_DATA = "Data"
PANEL_LOOP = "Optimisation"


def _choices(kind: str) -> str:
    names = get_registry().names(kind)
    return ", ".join(names) if names else "(none installed)"


def config_options(action: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``action(config: RunConfig, **extra)`` into a Typer command function that
    accepts every run flag, ``--config`` and dotted overrides."""

    def command(
        ctx: typer.Context,
        config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML/JSON config file.")] = None,
        model: Annotated[str | None, typer.Option(help="HF hub id or local model directory (default: the built-in demo model).", rich_help_panel=PANEL_MODEL)] = None,
        adapter: Annotated[str | None, typer.Option(help=f"Architecture adapter ({_choices('adapter')}); default: auto-detect.", rich_help_panel=PANEL_MODEL)] = None,
        dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.", rich_help_panel=PANEL_MODEL)] = None,
        device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N.", rich_help_panel=PANEL_MODEL)] = None,
        device_map: Annotated[str | None, typer.Option(help="accelerate device map, e.g. auto.", rich_help_panel=PANEL_MODEL)] = None,
        max_memory: Annotated[str | None, typer.Option(help="With --device-map: memory per device, e.g. cuda:0=20GiB,cpu=64GiB (the rest is offloaded).", rich_help_panel=PANEL_MODEL)] = None,
        offload_folder: Annotated[str | None, typer.Option(help="With --device-map: directory for weights offloaded to disk.", rich_help_panel=PANEL_MODEL)] = None,
        estimator: Annotated[str | None, typer.Option(help=f"Estimator: {_choices('estimator')}.", rich_help_panel=PANEL_PRUNE)] = None,
        granularity: Annotated[str | None, typer.Option(help=f"Comma-separated granularities: {_choices('granularity')}.", rich_help_panel=PANEL_PRUNE)] = None,
        prune_rate: Annotated[float | None, typer.Option(help="Fraction of the budget to remove, in (0, 1).", rich_help_panel=PANEL_PRUNE)] = None,
        budget: Annotated[str | None, typer.Option(help="per-type, global, params or local.", rich_help_panel=PANEL_PRUNE)] = None,
        protect_layers: Annotated[str | None, typer.Option(help="Keep the first and last N layers whole: FIRST,LAST (e.g. 4,2).", rich_help_panel=PANEL_PRUNE)] = None,
        init: Annotated[str | None, typer.Option(help=f"Initializer: {_choices('initializer')}.", rich_help_panel=PANEL_PRUNE)] = None,
        schedule: Annotated[str | None, typer.Option(help="fixed or random-progressive.", rich_help_panel=PANEL_PRUNE)] = None,
        calib: Annotated[str | None, typer.Option(help="Named calibration corpus (c4, wikitext2).", rich_help_panel=PANEL_DATA)] = None,
        calib_file: Annotated[str | None, typer.Option(help="Local calibration file (.txt, .jsonl[.gz], .json, .parquet).", rich_help_panel=PANEL_DATA)] = None,
        eval: Annotated[list[str] | None, typer.Option(help="Named evaluation corpus (repeatable).", rich_help_panel=PANEL_DATA)] = None,
        eval_file: Annotated[list[str] | None, typer.Option(help="Local evaluation file (repeatable).", rich_help_panel=PANEL_DATA)] = None,
        evaluator: Annotated[list[str] | None, typer.Option(help=f"Evaluator (repeatable): {_choices('evaluator')}.", rich_help_panel=PANEL_DATA)] = None,
        steps: Annotated[int | None, typer.Option(help="Optimisation steps (default: one epoch of the calibration segments).", rich_help_panel=PANEL_LOOP)] = None,
        batch_size: Annotated[int | None, typer.Option(help="Calibration segments per step.", rich_help_panel=PANEL_LOOP)] = None,
        seq_len: Annotated[int | None, typer.Option(help="Tokens per calibration segment.", rich_help_panel=PANEL_LOOP)] = None,
        seed: Annotated[int | None, typer.Option(help="Seed of data order and mask sampling.", rich_help_panel=PANEL_LOOP)] = None,
        out: Annotated[str | None, typer.Option(help="Run directory.", rich_help_panel=PANEL_LOOP)] = None,
        **extra: Any,
    ) -> Any:
        values = {
            "model": model, "adapter": adapter, "dtype": dtype, "device": device,
            "device_map": device_map, "max_memory": max_memory,
            "offload_folder": offload_folder, "estimator": estimator, "granularity": granularity,
            "prune_rate": prune_rate, "budget": budget, "protect_layers": protect_layers,
            "init": init, "schedule": schedule, "calib": calib, "calib_file": calib_file,
            "eval": eval, "eval_file": eval_file, "evaluator": evaluator, "steps": steps,
            "batch_size": batch_size, "seq_len": seq_len, "seed": seed, "out": out,
        }
        flags = {FLAG_KEYS[k]: v for k, v in values.items() if v is not None}
        known = [opt for param in ctx.command.params for opt in getattr(param, "opts", ())]
        overrides = parse_overrides(ctx.args, known)
        resolved = resolve_config(config, flags, overrides)
        return action(resolved, **extra)

    # Typer reads the signature and the (evaluated) annotations: append the action's own
    # keyword options after the shared flags.
    own_hints = typing.get_type_hints(action, include_extras=True)
    own_hints.pop("config", None)
    hints = {**typing.get_type_hints(command, include_extras=True), **own_hints}
    base = inspect.signature(command)
    params = [p for p in base.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [p for name, p in inspect.signature(action).parameters.items() if name != "config"]
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in params]
    _show_defaults(params)
    command.__signature__ = base.replace(parameters=params, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = action.__doc__
    command.__name__ = action.__name__.lstrip("_")
    return command


def _default_values() -> dict[str, Any]:
    """Each flag's default as the resolved default config has it (None: no fixed default)."""
    import json

    from pgprune_core.errors import PgpruneError

    try:
        data = json.loads(resolve_config(None).model_dump_json())
    except PgpruneError:  # a broken plugin set: the help shows no defaults
        return {}
    values: dict[str, Any] = {}
    for name, dotted in FLAG_KEYS.items():
        node: Any = data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, list):
            node = ",".join(str(v.get("name", v)) if isinstance(v, dict) else str(v) for v in node)
        values[name] = node
    return values


def _show_defaults(params: list[inspect.Parameter]) -> None:
    """Append ``[default: X]`` to the help of each flag whose config key has a default (the
    flags themselves default to None so that a config file is not overridden)."""
    defaults = _default_values()
    for param in params:
        value = defaults.get(param.name)
        if value in (None, ""):
            continue
        for meta in getattr(param.annotation, "__metadata__", ()):
            if isinstance(meta, typer.models.OptionInfo) and meta.help:
                meta.help = f"{meta.help} \\[default: {value}]"


#: context settings that let dotted overrides through Click's parser
OVERRIDE_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
