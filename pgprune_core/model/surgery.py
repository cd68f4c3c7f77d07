"""Physical removal of pruned units, and saving / loading the smaller model.

:func:`prune_model` cuts a model in place, kind by kind in ``surgery_order`` (layers last,
since removing layers renumbers the rest).  :func:`save_pruned` writes a normal Hugging Face
directory whose ``config.json`` carries a ``pgprune`` section (per-layer shapes, dropped
layers, module names, base class) and whose ``modeling_pgprune.py`` (a verbatim copy of
:mod:`pgprune_core.model.pruned_modeling`) rebuilds those shapes, so the directory loads with
:func:`load_pruned` and with ``AutoModelForCausalLM.from_pretrained(path,
trust_remote_code=True)`` alike.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from pgprune_core.errors import ModelError
from pgprune_core.interfaces import Granularity, ModelAdapter
from pgprune_core.model import pruned_modeling
from pgprune_core.model.structure import ModelStructure, UnitLayout
from pgprune_core.run.artifacts import atomic_dir

#: file name of the modeling code inside a saved pruned model
MODELING_FILE = "modeling_pgprune.py"
#: what ``auto_map`` points ``AutoModelForCausalLM`` at
AUTO_MAP = {"AutoModelForCausalLM": f"{Path(MODELING_FILE).stem}.{pruned_modeling.PgpruneForCausalLM.__name__}"}
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
SECTION = pruned_modeling.SECTION
#: version of the layout of the ``pgprune`` config section
FORMAT_VERSION = 1


def layer_shapes(structure: ModelStructure) -> list[dict[str, Any]]:
    """Per decoder layer: heads, KV heads, head size and MLP width (``None`` for a sparse
    layer without a dense MLP), as they are now; a mixture-of-experts layer adds its count
    of routed experts (``n_experts``)."""
    shapes: list[dict[str, Any]] = []
    for site in structure.layers:
        shape: dict[str, Any] = {
            "n_heads": site.attention.n_heads,
            "n_kv_heads": site.attention.n_kv_heads,
            "head_dim": site.attention.head_dim,
            "intermediate_size": None if site.mlp is None else site.mlp.intermediate_size,
        }
        if site.experts is not None:
            shape["n_experts"] = site.experts.n_experts
        shapes.append(shape)
    return shapes


def layer_origins(config: Any, n_layers: int) -> tuple[list[int], int]:
    """Original indices of the current layers and the original layer count (a model that
    was pruned and saved before carries them in its ``pgprune`` section)."""
    section = getattr(config, SECTION, None) or {}
    origins = section.get("original_layers")
    if isinstance(origins, list) and len(origins) == n_layers:
        return [int(i) for i in origins], int(section.get("original_num_layers", n_layers))
    return list(range(n_layers)), n_layers


def prune_model(
    structure: ModelStructure,
    layout: UnitLayout,
    granularities: Mapping[str, Granularity],
    keep: torch.Tensor,
) -> dict[str, Any]:
    """Remove, in place, every unit where ``keep`` (bool ``[len(layout)]``) is False.

    Afterwards ``structure`` describes the pruned model (layers renumbered) and the model's
    config counts only the kept layers.  Returns a summary: parameters before/after,
    per-layer shapes and the original indices of the dropped layers.
    """
    if keep.shape != (len(layout),):
        raise ValueError(f"keep must have shape [{len(layout)}], got {list(keep.shape)}")
    config = structure.model.config
    origins, original_count = layer_origins(config, structure.n_layers)
    origin_of = {id(site): origin for site, origin in zip(structure.layers, origins, strict=True)}
    before = structure.total_params()
    parts = layout.split(keep.bool())
    for kind in sorted(layout.kinds, key=lambda k: granularities[k].surgery_order):
        granularities[kind].remove(structure, layout[kind], parts[kind])
    kept_origins = [origin_of[id(site)] for site in structure.layers]
    section = dict(getattr(config, SECTION, None) or {})
    section.update(original_layers=kept_origins, original_num_layers=original_count)
    setattr(config, SECTION, section)
    after = structure.total_params()
    return {
        "params_before": before,
        "params_after": after,
        "params_removed": before - after,
        "layers": layer_shapes(structure),
        "dropped_layers": sorted(set(range(original_count)) - set(kept_origins)),
    }


def save_pruned(
    model: Any,
    tokenizer: Any,
    path: str | Path,
    *,
    adapter_name: str,
    base_model: str | Path,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (pruned or not) and ``tokenizer`` to ``path`` as a Hugging Face
    directory that rebuilds its per-layer shapes on load; atomically (a temporary directory
    beside ``path`` is renamed into place).  ``extra`` (JSON-able) is kept in the section."""
    from transformers import __version__ as transformers_version

    from pgprune_core import __version__ as pgprune_version
    from pgprune_core.plugin.registry import get_registry

    target = Path(path)
    if target.exists() and any(target.iterdir()) and not _is_pruned_dir(target):
        raise ModelError(f"refusing to overwrite {target}: it exists and is not a pgprune model")
    adapter = cast(ModelAdapter, get_registry().cls("adapter", adapter_name)())
    structure = adapter.describe_model(model)
    origins, original_count = layer_origins(model.config, structure.n_layers)
    section = {
        "format": FORMAT_VERSION,
        "pgprune_version": pgprune_version,
        "transformers_version": transformers_version,
        "adapter": adapter_name,
        "base_model": str(base_model),
        "base_class": adapter.pruned_model_class(),
        "module_names": structure.names.as_dict(),
        "layers": layer_shapes(structure),
        "original_layers": origins,
        "original_num_layers": original_count,
        "dropped_layers": sorted(set(range(original_count)) - set(origins)),
        "extra": dict(extra or {}),
    }
    json.dumps(section)  # fail before writing anything if ``extra`` is not JSON-able
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        config_file = tmp / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config[SECTION] = section
        config["auto_map"] = dict(AUTO_MAP)
        config["architectures"] = [adapter.pruned_model_class().rpartition(".")[2]]
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        shutil.copyfile(pruned_modeling.__file__, tmp / MODELING_FILE)
    return target


def _is_pruned_dir(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get(SECTION), dict)


def _check_pruned_dir(path: Path) -> None:
    """Fail early, naming the file, on a directory that cannot be a saved pruned model."""
    if not path.is_dir():
        raise ModelError(f"pruned model directory not found: {path}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{config_file} is missing; is {path} a model saved by pgprune?")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_file} is not valid JSON: {exc}") from exc
    section = config.get(SECTION) if isinstance(config, dict) else None
    required = ("base_class", "module_names", "layers")
    if not isinstance(section, dict) or any(key not in section for key in required):
        raise ModelError(f"{config_file} has no complete '{SECTION}' section; "
                         f"was the model saved with pgprune's save_pruned?")
    modeling = path / MODELING_FILE
    if not modeling.is_file():
        raise ModelError(f"{modeling} is missing; the pruned model cannot be rebuilt without it")
    try:
        compile(modeling.read_text(encoding="utf-8"), str(modeling), "exec")
    except (SyntaxError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{modeling} is corrupt: {exc}") from exc
    if not any((path / name).is_file() for name in WEIGHTS_FILES):
        raise ModelError(f"{path / WEIGHTS_FILES[0]} is missing: no weights to load")


def load_pruned(path: str | Path, *, dtype: str | torch.dtype | None = None,
                device: str | torch.device = "cpu") -> nn.Module:
    """Load a model saved by :func:`save_pruned`, in eval mode with gradients off.

    ``dtype``: ``None`` keeps the saved dtype.  Every weight of the pruned shapes must be in
    the file: a missing or mismatched tensor is an error, never a silent random init.
    """
    from transformers import AutoConfig

    from pgprune_core.model.hf_adapter import DTYPES

    path = Path(path)
    _check_pruned_dir(path)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ModelError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    config_file = path / "config.json"
    try:
        config = AutoConfig.from_pretrained(path)
        cls = pruned_modeling.pruned_class(config)
    except Exception as exc:
        raise ModelError(f"cannot build the model described by {config_file}: {exc}") from exc
    weights = next(path / name for name in WEIGHTS_FILES if (path / name).is_file())
    try:
        model, info = cls.from_pretrained(path, config=config, dtype=dtype or "auto",
                                          output_loading_info=True)
    except Exception as exc:
        raise ModelError(f"cannot load the weights in {weights}: {exc}") from exc
    problems = {key: value for key, value in info.items()
                if key in ("missing_keys", "unexpected_keys", "mismatched_keys") and value}
    if problems:
        first = next(iter(problems))
        raise ModelError(f"{weights} does not match the pruned shapes ({first}: "
                         f"{sorted(problems[first])[:3]})")
    model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model
