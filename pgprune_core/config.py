"""The run configuration: pydantic v2 models, assembled with the plugins' own ``Config``s.

Static sections (model, data, pruning, training, evaluation, output) are defined here.
The plugin sections (``init``, ``estimator``, ``projector`` and each entry of
``evaluation.evaluators``) are discriminated unions over the ``Config`` classes of every
registered plugin of that kind, built *after* plugins load (:func:`run_config_model`), so a
third-party estimator's options validate exactly like a built-in's.

Sources, later wins: a YAML/JSON file, CLI flags, dotted overrides (``--estimator.lr 3e-3``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from .config_base import InitializerConfig, PluginConfig
from .errors import ConfigError, UnknownPluginError
from .registry import Registry, get_registry

DTYPES = ("float32", "bfloat16", "float16")
BUDGETS = ("per-type", "global", "params", "local")
#: config section -> plugin kind, for the sections that are plugin unions
PLUGIN_SECTIONS = {"estimator": "estimator", "init": "initializer", "projector": "projector"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    """Which model to prune and how to load it."""

    #: HF hub id or local directory; None = pgprune's built-in demo model
    name_or_path: str | None = None
    #: adapter name; None = auto-detect from the model's config
    adapter: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    #: e.g. "auto" (needs accelerate) to spread a large model over GPUs; overrides device
    device_map: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"device must be cpu, mps, cuda or cuda:N, got {value!r}")
        return value


class DataSection(Section):
    """Calibration text (what the policy is optimised on) and evaluation text."""

    #: named calibration corpus (c4, wikitext2); ignored when calib_file is set
    calib: str | None = "c4"
    #: local calibration file: .txt, .json/.jsonl(.gz), .parquet
    calib_file: str | None = None
    #: documents to use from the calibration corpus, Python slice syntax ("1800:2000")
    calib_slice: str | None = None
    #: number of calibration segments (the paper: 120000); None = steps x batch size when
    #: training.steps is set, else the paper's 120000 (one batch for --estimator none)
    n_segments: int | None = Field(default=None, gt=0)
    #: tokens per calibration segment (the paper: 128)
    seq_len: int = Field(default=128, gt=1)
    #: "random": windows at random offsets (the paper); "sequential": non-overlapping windows
    sampling: Literal["random", "sequential"] = "random"
    #: named evaluation corpora
    eval: list[str] = Field(default_factory=lambda: ["wikitext2"])
    #: local evaluation files (each becomes an evaluation set named after its file stem)
    eval_files: list[str] = Field(default_factory=list)
    #: field holding the text in json/jsonl/parquet files
    text_field: str = "text"
    #: where tokenized corpora are cached; None = the user cache directory
    cache_dir: str | None = None


class PruningSection(Section):
    """What to prune and how much."""

    granularity: list[str] = Field(default_factory=lambda: ["channel", "head"])
    #: fraction of the budget to remove, in (0, 1)
    prune_rate: float = 0.3
    #: per-type: one constraint per granularity (authors' code); global: one over all units
    #: (paper text); params: one on parameter count; local: the same rate in every layer
    budget: Literal["per-type", "global", "params", "local"] = "per-type"
    #: keep the first and the last N layers whole (LLM-Pruner's protection: [4, 2])
    protect_layers: tuple[int, int] = (0, 0)

    @field_validator("prune_rate")
    @classmethod
    def _rate(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError(f"the prune rate must lie in the open interval (0, 1), got {value}")
        return value

    @field_validator("granularity", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError(f"a granularity is listed twice: {value}")
        if isinstance(value, list) and not value:
            raise ValueError("at least one granularity is needed")
        return value

    @field_validator("protect_layers", mode="before")
    @classmethod
    def _protect(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise ValueError(f"expected FIRST,LAST (e.g. 4,2), got {value!r}")
            value = (int(parts[0]), int(parts[1]))
        if isinstance(value, (list, tuple)) and any(int(v) < 0 for v in value):
            raise ValueError(f"layer counts must be >= 0, got {value}")
        return value


class TrainingSection(Section):
    """The optimisation loop."""

    #: optimisation steps; None = `epochs` passes over the calibration segments
    steps: int | None = Field(default=None, ge=0)
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=8, gt=0)
    seed: int = 0
    #: write a checkpoint every this many steps (and on SIGINT/SIGTERM)
    checkpoint_every: int = Field(default=200, gt=0)
    #: append to metrics.jsonl every this many steps
    log_every: int = Field(default=10, gt=0)
    #: "fixed": optimise at the target rate; "random-progressive": random start at
    #: `progressive_start`, the rate raised by `progressive_step` per stage (paper A.12)
    schedule: Literal["fixed", "random-progressive"] = "fixed"
    progressive_start: float = Field(default=0.05, gt=0, lt=1)
    progressive_step: float = Field(default=0.05, gt=0, lt=1)
    #: fraction of an epoch spent at each progressive rate (the paper: 1/3)
    progressive_stage_epochs: float = Field(default=1 / 3, gt=0)
    #: at most this many sequences in one batched masked forward (None = N_s x batch)
    max_rows: int | None = Field(default=None, gt=0)
    #: torch intra-op CPU threads during the run (None = torch's default: every core);
    #: on a machine shared with other jobs, 1 is often faster for small models
    threads: int | None = Field(default=None, gt=0)


class OutputSection(Section):
    """Where the run directory goes and what it holds."""

    #: run directory; None = runs/<model>-<estimator>-<rate>pct-<timestamp>
    dir: str | None = None
    overwrite: bool = False
    save_model: bool = True


class RunConfig(Section):
    """The whole configuration of one run (plugin sections typed by the subclass that
    :func:`run_config_model` builds)."""

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    pruning: PruningSection = Field(default_factory=PruningSection)
    init: InitializerConfig
    estimator: PluginConfig
    projector: PluginConfig
    training: TrainingSection = Field(default_factory=TrainingSection)
    evaluation: Any
    output: OutputSection = Field(default_factory=OutputSection)


#: defaults of the plugin sections (plain data, validated like user input)
DEFAULTS: dict[str, Any] = {
    "init": {"name": "wanda-sp"},
    "estimator": {"name": "reinforce"},
    "projector": {"name": "bisection"},
    "evaluation": {"evaluators": [{"name": "perplexity"}, {"name": "efficiency"}]},
}


def _union(registry: Registry, kind: str) -> Any:
    classes = tuple(spec.cls.Config for spec in registry.specs(kind).values())
    if not classes:
        return PluginConfig
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[classes], Field(discriminator="name")]  # noqa: UP007


def run_config_model(registry: Registry | None = None) -> type[RunConfig]:
    """The :class:`RunConfig` subclass whose plugin sections accept exactly the registered
    plugins' options."""
    registry = registry or get_registry()
    evaluator = _union(registry, "evaluator")

    class EvaluationSection(Section):
        """Which evaluators measure the dense and the pruned model, and how."""

        evaluators: list[evaluator] = Field(  # type: ignore[valid-type]
            default_factory=lambda: [{"name": "perplexity"}, {"name": "efficiency"}]
        )
        #: also measure the dense model (for the dense-vs-pruned table)
        dense: bool = True
        seq_len: int = Field(default=128, gt=1)
        batch_size: int = Field(default=8, gt=0)

        @field_validator("evaluators", mode="before")
        @classmethod
        def _names(cls, value: Any) -> Any:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list):
                value = [{"name": v} if isinstance(v, str) else v for v in value]
            return value

    model = create_model(
        "RunConfig",
        __base__=RunConfig,
        init=(_union(registry, "initializer"), ...),
        estimator=(_union(registry, "estimator"), ...),
        projector=(_union(registry, "projector"), ...),
        evaluation=(EvaluationSection, Field(default_factory=EvaluationSection)),
    )
    return model


# -- assembling from sources -------------------------------------------------------------


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a plain dict."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"config file {file} is not valid YAML/JSON: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a mapping of sections, not {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """A CLI string as the most specific scalar: int, float, bool/null/list (YAML), else str."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (bool, list, dict)) or value is None else text


def parse_overrides(args: Iterable[str]) -> dict[str, Any]:
    """``["--estimator.lr", "3e-3", "--training.steps=10"]`` -> ``{"estimator.lr": 0.003, ...}``."""
    items = list(args)
    result: dict[str, Any] = {}
    i = 0
    while i < len(items):
        arg = items[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(
                f"unexpected argument {arg!r}; overrides look like --section.key VALUE"
            )
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
        else:
            if i + 1 >= len(items):
                raise ConfigError(f"override {arg} needs a value")
            i += 1
            raw = items[i]
        result[key] = parse_value(raw)
        i += 1
    return result


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def merge(base: dict[str, Any], flat: Mapping[str, Any]) -> dict[str, Any]:
    """Apply ``{"section.key": value}`` onto a nested dict.  Selecting another plugin
    (``estimator.name``) drops the previous plugin's options, which would not validate;
    names are applied first, so ``--estimator.lr 1e-3 --estimator.name ppo`` keeps the lr."""
    out = copy.deepcopy(base)
    names_first = sorted(flat.items(), key=lambda item: item[0].partition(".")[2] != "name")
    for dotted, value in names_first:
        section, _, rest = dotted.partition(".")
        if rest == "name" and section in PLUGIN_SECTIONS:
            current = out.get(section) or {}
            if isinstance(current, dict) and current.get("name") != value:
                out[section] = {"name": value}
                continue
        _set_dotted(out, dotted, value)
    return out


def _check_plugin_names(data: dict[str, Any], registry: Registry) -> None:
    for section, kind in PLUGIN_SECTIONS.items():
        value = data.get(section)
        if isinstance(value, dict) and "name" in value:
            registry.get(kind, str(value["name"]))
        elif value is not None and not isinstance(value, dict):
            raise ConfigError(f"section '{section}' must be a mapping with a 'name'")
    evaluation = data.get("evaluation")
    if isinstance(evaluation, dict):
        entries = evaluation.get("evaluators") or []
        if isinstance(entries, str):
            entries = [e.strip() for e in entries.split(",") if e.strip()]
        for entry in entries if isinstance(entries, list) else []:
            name = entry.get("name") if isinstance(entry, dict) else entry
            registry.get("evaluator", str(name))
    pruning = data.get("pruning")
    if isinstance(pruning, dict):
        kinds = pruning.get("granularity") or []
        if isinstance(kinds, str):
            kinds = [k.strip() for k in kinds.split(",") if k.strip()]
        for kind in kinds if isinstance(kinds, list) else []:
            registry.get("granularity", str(kind))
    model = data.get("model")
    if isinstance(model, dict) and model.get("adapter"):
        registry.get("adapter", str(model["adapter"]))


def format_validation_error(exc: ValidationError, data: Mapping[str, Any]) -> str:
    """One readable line for the first problem pydantic found."""
    messages = []
    for error in exc.errors()[:3]:
        loc = [str(part) for part in error["loc"]]
        # drop the discriminator tag pydantic inserts: ("estimator", "reinforce", "lr")
        if len(loc) >= 2 and loc[0] in PLUGIN_SECTIONS:
            section = data.get(loc[0])
            if isinstance(section, dict) and loc[1] == str(section.get("name")):
                loc.pop(1)
        if len(loc) >= 4 and loc[:2] == ["evaluation", "evaluators"]:
            loc.pop(3)
        if error["type"] == "extra_forbidden":
            section = ".".join(loc[:-1]) or "top level"
            messages.append(f"unknown key {loc[-1]!r} in section '{section}'")
            continue
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        messages.append(f"{'.'.join(loc) or 'config'}: {message}")
    return "invalid config: " + "; ".join(messages)


def resolve_config(
    file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
) -> RunConfig:
    """Defaults < file < CLI flags < dotted overrides, validated into a :class:`RunConfig`."""
    registry = registry or get_registry()
    data: dict[str, Any] = copy.deepcopy(DEFAULTS)
    if file is not None:
        loaded = load_config_file(file)
        for section, value in loaded.items():
            if (
                section in PLUGIN_SECTIONS
                and isinstance(value, dict)
                and isinstance(data.get(section), dict)
                and value.get("name", data[section].get("name")) != data[section].get("name")
            ):
                data[section] = {}
            if isinstance(value, dict) and isinstance(data.get(section), dict):
                data[section] = {**data[section], **value}
            else:
                data[section] = value
    data = merge(data, {k: v for k, v in (flags or {}).items() if v is not None})
    data = merge(data, overrides or {})
    return validate_config(data, registry)


def validate_config(data: Mapping[str, Any], registry: Registry | None = None) -> RunConfig:
    registry = registry or get_registry()
    try:
        _check_plugin_names(dict(data), registry)
    except UnknownPluginError:
        raise
    model = run_config_model(registry)
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, data)) from None


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (the format of ``config.yaml`` in a run directory)."""
    return yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False)
