"""From sources to a validated :class:`~pgprune_core.config.sections.RunConfig`.

Sources, later wins: a YAML/JSON file, CLI flags, dotted overrides (``--estimator.lr 3e-3``).
A plugin section's ``name`` is applied before its options whatever the order of the
overrides, and misspelt plugin names get a "did you mean".
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pgprune_core.config.sections import DEFAULTS, PLUGIN_SECTIONS, RunConfig, run_config_model
from pgprune_core.errors import ConfigError, did_you_mean, first_line
from pgprune_core.plugin.registry import Registry, get_registry

# -- assembling from sources -------------------------------------------------------------


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a plain dict."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None)
        if mark is not None and problem:
            context = getattr(exc, "context", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}"
            first = f"{where}: {problem}" + (f" ({context})" if context else "")
        else:
            first = first_line(exc)
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


def parse_overrides(args: Iterable[str], known: Iterable[str] = ()) -> dict[str, Any]:
    """``["--estimator.lr", "3e-3", "--training.steps=10"]`` -> ``{"estimator.lr": 0.003, ...}``.

    ``known``: the command's own option names, suggested for a misspelt one."""
    items = list(args)
    result: dict[str, Any] = {}
    i = 0
    while i < len(items):
        arg = items[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            hint = did_you_mean(arg.split("=", 1)[0], known, quote="") if arg.startswith("-") else ""
            raise ConfigError(
                f"unexpected argument {arg!r}{hint}; overrides look like --section.key VALUE"
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


def _known_keys(section: list[str], data: Mapping[str, Any], registry: Registry | None,
                root: Any = RunConfig) -> list[str]:
    """The keys a (possibly nested) section of ``root`` accepts, for a "did you mean"."""
    from pydantic import BaseModel

    if not section:
        return list(root.model_fields)
    if len(section) == 1 and section[0] in PLUGIN_SECTIONS and registry is not None:
        value = data.get(section[0])
        name = value.get("name") if isinstance(value, dict) else None
        try:
            return list(registry.cls(PLUGIN_SECTIONS[section[0]], str(name)).Config.model_fields)
        except Exception:
            return []
    if len(section) == 1:
        field = root.model_fields.get(section[0])
        annotation = field.annotation if field is not None else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return list(annotation.model_fields)
    return []


def format_validation_error(exc: ValidationError, data: Mapping[str, Any],
                            registry: Registry | None = None, root: Any = RunConfig) -> str:
    """One readable line for the first problem pydantic found (``root``: the model that
    was validated, for the keys a "did you mean" suggests)."""
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
            hint = did_you_mean(loc[-1], _known_keys(loc[:-1], data, registry, root))
            messages.append(f"unknown key {loc[-1]!r} in section '{section}'{hint}")
            continue
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        messages.append(f"{'.'.join(loc) or 'config'}: {message}")
    return "invalid config: " + "; ".join(messages)


def merge_file(data: dict[str, Any], loaded: Mapping[str, Any]) -> None:
    """Lay a config file's sections over ``data`` (in place): a section's keys replace
    those of the same name; selecting another plugin drops the previous one's options."""
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


def merge_flags(data: dict[str, Any], flags: Mapping[str, Any] | None,
                overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data`` with the flags that were given (not None), then the dotted overrides."""
    data = merge(data, {k: v for k, v in (flags or {}).items() if v is not None})
    return merge(data, overrides or {})


def resolve_config(
    file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
) -> RunConfig:
    """Defaults < file < CLI flags < dotted overrides, validated into a :class:`RunConfig`.

    Evaluation files (``data.eval_files``) replace the default named corpus unless
    ``data.eval`` is also given explicitly."""
    registry = registry or get_registry()
    data: dict[str, Any] = copy.deepcopy(DEFAULTS)
    explicit_eval = "data.eval" in (flags or {}) or "data.eval" in (overrides or {})
    if file is not None:
        loaded = load_config_file(file)
        explicit_eval = explicit_eval or (isinstance(loaded.get("data"), dict)
                                          and "eval" in loaded["data"])
        merge_file(data, loaded)
    data = merge_flags(data, flags, overrides)
    output, pruning = data.get("output"), data.setdefault("pruning", {})
    if isinstance(output, dict) and output.get("format") == "hf" and isinstance(pruning, dict):
        # a vanilla transformers config has one shape for every layer
        pruning.setdefault("shape", "uniform")
    data_section = data.get("data")
    if not explicit_eval and isinstance(data_section, dict) and data_section.get("eval_files"):
        # explicit evaluation files replace the default hub corpus (as in `pgprune eval`)
        data_section["eval"] = []
    return validate_config(data, registry)


def validate_config(data: Mapping[str, Any], registry: Registry | None = None) -> RunConfig:
    registry = registry or get_registry()
    _check_plugin_names(dict(data), registry)
    model = run_config_model(registry)
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, data, registry)) from None


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (the format of ``config.yaml`` in a run directory)."""
    return yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False)
