"""docs/configuration.md documents every configuration key, and its YAML examples validate.

The keys are collected from the pydantic models (the static sections of ``RunConfig`` and
the ``Config`` of every plugin shipped in this repository), so adding a key without a row in
the doc, or changing a default or the allowed values without updating it, fails here.

Doc conventions this test relies on:

- a key's row is a table row whose first cell is the key, dotted and in backticks
  (``| `data.calib_slice` | type | default | ...``); the 2nd cell lists a ``Literal``'s
  values in backticks, the 3rd cell holds the default in backticks (YAML; ``1/3`` allowed);
- a plugin's own keys are rows under a heading containing ``\\`SECTION.name: PLUGIN\\```
  (evaluators: ``\\`evaluation.evaluators[].name: PLUGIN\\```), with keys prefixed
  ``init.``, ``estimator.``, ``projector.`` or ``evaluation.evaluators[].``;
- keys a plugin inherits from a shared base (``InitializerConfig``, ``StepSizeConfig``)
  are rows under a heading naming that base in backticks.
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from pgprune_core.cli.options import FLAG_KEYS
from pgprune_core.config.base import PluginConfig, declared_config
from pgprune_core.config.resolve import resolve_config
from pgprune_core.config.sections import PLUGIN_SECTIONS, run_config_model

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"

#: plugin kind -> the dotted prefix of its keys in the doc
PREFIX = {kind: f"{section}." for section, kind in PLUGIN_SECTIONS.items()}
PREFIX["evaluator"] = "evaluation.evaluators[]."
#: plugin kinds whose Config has no configurable section (selected by name only)
NAME_ONLY_KINDS = ("granularity", "adapter")


def _repo_distributions() -> set[str]:
    """The core and the plugin distributions of this repository (foreign plugins that
    happen to be installed are not this doc's business)."""
    names = {"pgprune-core"}
    for pyproject in ROOT.glob("plugins/*/pyproject.toml"):
        match = re.search(r'^name\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
        if match:
            names.add(match.group(1))
    return names


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _blocks() -> list[tuple[str, dict[str, list[str]]]]:
    """(heading, {key: row cells}) for every heading of the doc, in order."""
    blocks: list[tuple[str, dict[str, list[str]]]] = [("", {})]
    in_fence = False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif in_fence:
            continue
        elif line.startswith("#"):
            blocks.append((line, {}))
        elif line.startswith("|"):
            cells = _cells(line)
            key = re.fullmatch(r"`([^`]+)`", cells[0])
            if key:
                blocks[-1][1][key.group(1)] = cells
    return blocks


BLOCKS = _blocks()
ALL_ROWS: dict[str, list[str]] = {k: v for _, rows in BLOCKS for k, v in rows.items()}


def _rows_under(marker: str) -> dict[str, list[str]]:
    found = [rows for heading, rows in BLOCKS if marker in heading]
    assert found, f"docs/configuration.md has no heading containing {marker}"
    assert len(found) == 1, f"docs/configuration.md has several headings containing {marker}"
    return found[0]


def _declaring_class(cls: type[BaseModel], field: str) -> type:
    """The most derived class in ``cls``'s MRO that annotates ``field`` itself."""
    for klass in cls.__mro__:
        if field in inspect.get_annotations(klass):
            return klass
    raise AssertionError(f"{cls.__qualname__}.{field} is declared nowhere")


def _literal_values(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _literal_values(arg)]


def _parse_default(cell: str) -> Any:
    match = re.search(r"`([^`]*)`", cell)
    assert match, f"no default in backticks: {cell!r}"
    text = match.group(1)
    fraction = re.fullmatch(r"(\d+)/(\d+)", text)
    if fraction:
        return int(fraction.group(1)) / int(fraction.group(2))
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def _same(documented: Any, actual: Any) -> bool:
    numbers = (int, float)
    if isinstance(documented, bool) or isinstance(actual, bool):
        return documented is actual
    if isinstance(documented, numbers) and isinstance(actual, numbers):
        return math.isclose(documented, actual, rel_tol=1e-9)
    if isinstance(documented, list) and isinstance(actual, list):
        return len(documented) == len(actual) and all(map(_same, documented, actual))
    return documented == actual


def _check_row(key: str, cells: list[str], annotation: Any, default: Any) -> list[str]:
    """Problems of one documented row against the model's field."""
    problems = []
    if len(cells) < 4:
        return [f"{key}: the row needs key, type, default and meaning cells"]
    for value in _literal_values(annotation):
        if f"`{value}`" not in cells[1]:
            problems.append(f"{key}: allowed value `{value}` is missing from {cells[1]!r}")
    is_plain = not (isinstance(default, dict)
                    or (isinstance(default, list) and any(isinstance(v, dict) for v in default)))
    if is_plain and not _same(_parse_default(cells[2]), default):
        problems.append(f"{key}: documented default {cells[2]!r}, the model's is {default!r}")
    return problems


def _static_keys() -> list[tuple[str, Any, Any]]:
    """(dotted key, annotation, default) of every key of the non-plugin sections."""
    model = run_config_model()
    defaults = resolve_config().model_dump(mode="json")
    keys = []
    for section, field in model.model_fields.items():
        if section in PLUGIN_SECTIONS:
            continue
        section_model = field.annotation
        assert isinstance(section_model, type) and issubclass(section_model, BaseModel), section
        for name, sub in section_model.model_fields.items():
            keys.append((f"{section}.{name}", sub.annotation, defaults[section][name]))
    return keys


def _plugin_configs() -> list[tuple[str, str, type[PluginConfig]]]:
    """(kind, name, Config) of every registered plugin from this repository."""
    from pgprune_core.plugin.registry import get_registry

    registry = get_registry()
    ours = _repo_distributions()
    found = []
    for kind in (*PREFIX, *NAME_ONLY_KINDS):
        for name, spec in registry.specs(kind).items():
            if spec.origin.distribution in ours:
                found.append((kind, name, spec.cls.Config))
    return found


def test_every_static_key_is_documented_with_its_default_and_values():
    problems = []
    for key, annotation, default in _static_keys():
        if key not in ALL_ROWS:
            problems.append(f"{key}: no row in docs/configuration.md")
            continue
        problems += _check_row(key, ALL_ROWS[key], annotation, default)
    assert not problems, "\n".join(problems)


def test_every_plugin_section_name_is_documented():
    defaults = resolve_config().model_dump(mode="json")
    for section in PLUGIN_SECTIONS:
        key = f"{section}.name"
        assert key in ALL_ROWS, f"{key}: no row in docs/configuration.md"
        assert _same(_parse_default(ALL_ROWS[key][2]), defaults[section]["name"]), key


def test_every_plugin_key_is_documented_under_its_plugin():
    configs = _plugin_configs()
    kinds = {kind for kind, _, _ in configs}
    assert {"initializer", "estimator", "projector", "evaluator"} <= kinds, kinds
    problems = []
    for kind, name, config in configs:
        fields = {f: info for f, info in config.model_fields.items() if f != "name"}
        if kind in NAME_ONLY_KINDS:
            if fields:
                problems.append(f"{kind} {name!r} has options {sorted(fields)} but no config "
                                f"section; give it one and document it")
            continue
        section = PREFIX[kind]
        own = _rows_under(f"`{section}name: {name}`")
        defaults = config().model_dump(mode="json")
        for field, info in fields.items():
            key = section + field
            owner = _declaring_class(config, field)
            if owner is declared_config(config):  # the plugin's own Config (name derived)
                owner = config
            rows = own if owner is config else _rows_under(f"`{owner.__name__}`")
            where = name if owner is config else owner.__name__
            if key not in rows:
                problems.append(f"{key} ({kind} {name!r}): no row under the heading of {where}")
                continue
            problems += _check_row(f"{key} ({name})", rows[key], info.annotation, defaults[field])
    assert not problems, "\n".join(problems)


def test_every_flag_is_named_in_its_keys_row():
    for param, key in FLAG_KEYS.items():
        flag = "--" + param.replace("_", "-")
        assert key in ALL_ROWS, f"{key} (flag {flag}): no row in docs/configuration.md"
        assert f"`{flag}" in " ".join(ALL_ROWS[key]), f"{key}: the row does not name {flag}"


def _yaml_blocks() -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)


@pytest.mark.parametrize("index", range(len(_yaml_blocks())))
def test_yaml_examples_resolve(index, tmp_path):
    path = tmp_path / "example.yaml"
    path.write_text(_yaml_blocks()[index], encoding="utf-8")
    resolve_config(path)


def test_the_complete_example_sets_every_static_key(tmp_path):
    text = DOC.read_text(encoding="utf-8").split("## A complete example", 1)[1]
    block = re.search(r"^```yaml\n(.*?)^```", text, re.S | re.M)
    assert block, "the complete example has no yaml block"
    data = yaml.safe_load(block.group(1))
    assert set(data) == set(run_config_model().model_fields), sorted(data)
    missing = [key for key, _, _ in _static_keys()
               if key.split(".", 1)[1] not in data[key.split(".", 1)[0]]]
    assert not missing, f"the complete example lacks {missing}"
    path = tmp_path / "example.yaml"
    path.write_text(block.group(1), encoding="utf-8")
    resolve_config(path)
