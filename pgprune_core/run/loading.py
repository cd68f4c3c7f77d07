"""Finding and loading a model to measure or fine-tune: a run directory's ``model/``, a
model saved by pgprune (``load_pruned``), a ``decilm`` export (pgprune's own modeling code,
no remote code), or any Hugging Face causal LM (through the adapter that claims it, else
plain ``AutoModelForCausalLM``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pgprune_core.errors import ModelError, first_line
from pgprune_core.interfaces import ModelAdapter, ModelSource
from pgprune_core.plugin.registry import get_registry
from pgprune_core.run.rundir import RunDir


@dataclass
class ModelToEvaluate:
    model: Any
    tokenizer: Any
    #: local directory the weights came from (for size on disk), if any
    path: Path | None
    how: str
    #: the directory's format: pgprune, decilm or hf (any other Hugging Face directory)
    format: str = "hf"


def model_directory(target: str) -> Path | None:
    """The model directory behind ``target``: a run directory's ``model/``, a local model
    directory itself, or None for a hub id."""
    path = Path(target).expanduser()
    if not path.exists():
        if target.startswith((".", "/", "~")) or target.count("/") > 1:
            raise ModelError(f"no such model or run directory: {target}")
        return None
    run = RunDir(path)
    if run.marker.is_file() or (run.model.is_dir() and not (path / "config.json").exists()):
        model = run.model
        if not (model / "config.json").is_file():
            raise ModelError(f"run directory {path} holds no saved model (was output.save_model false?)")
        return model
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is neither a model directory (no config.json) nor a run directory")
    return path


def saved_by_pgprune(path: Path) -> bool:
    """Whether ``path/config.json`` carries pgprune's section of per-layer shapes."""
    from pgprune_core.model.surgery import SECTION

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path / 'config.json'} is unreadable: {exc}") from None
    return isinstance(config, dict) and SECTION in config


def load_for_eval(target: str, directory: Path | None, dtype: str, device: str) -> ModelToEvaluate:
    """Load ``target`` (see the module docstring; ``directory`` is its
    :func:`model_directory`) with its tokenizer, in eval mode."""
    from transformers import AutoTokenizer

    from pgprune_core.model.export import is_decilm_dir, load_decilm
    from pgprune_core.model.hf_adapter import DTYPES as TORCH_DTYPES
    from pgprune_core.model.hf_adapter import load_model_config

    if directory is not None and saved_by_pgprune(directory):
        from pgprune_core import load_pruned

        pruned = load_pruned(directory, dtype=dtype, device=device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory)
        except Exception as exc:
            raise ModelError(f"cannot load the tokenizer saved in {directory}: {exc}") from None
        return ModelToEvaluate(pruned, tokenizer, directory, "pgprune pruned model", "pgprune")
    if directory is not None and is_decilm_dir(directory):
        decilm = load_decilm(directory, dtype=TORCH_DTYPES[dtype], device=device)
        return ModelToEvaluate(decilm, AutoTokenizer.from_pretrained(directory), directory,
                               "pgprune decilm export", "decilm")
    name = str(directory) if directory is not None else target
    registry = get_registry()
    adapter_name = registry.resolve_adapter(load_model_config(name))
    if adapter_name is not None:
        adapter = cast(ModelAdapter, registry.cls("adapter", adapter_name)())
        loaded = adapter.load(ModelSource(name_or_path=name, dtype=dtype, device=device))
        return ModelToEvaluate(loaded.model, loaded.tokenizer, directory, f"adapter {adapter_name}")
    from transformers import AutoModelForCausalLM

    try:
        model: Any = AutoModelForCausalLM.from_pretrained(name, dtype=TORCH_DTYPES[dtype])
        model = model.to(device)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise ModelError(f"cannot load {name} as a causal LM: {first_line(exc)}") from None
    model.eval().requires_grad_(False)
    return ModelToEvaluate(model, tokenizer, directory, "transformers AutoModelForCausalLM")


def directory_format(directory: Path) -> str:
    """``pgprune`` (saved by pgprune), ``decilm`` (a decilm export) or ``hf``."""
    from pgprune_core.model.export import is_decilm_dir

    if saved_by_pgprune(directory):
        return "pgprune"
    return "decilm" if is_decilm_dir(directory) else "hf"


def model_skeleton(directory: Path, fmt: str) -> Any:
    """The model of ``directory`` built on the meta device (its module names and shapes, no
    weights read or allocated): what cheap checks of module names look at."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pgprune_core.model import decilm_modeling, pruned_modeling

    try:
        if fmt == "decilm":
            config: Any = decilm_modeling.DeciLMConfig.from_pretrained(directory)
            with torch.device("meta"):
                return decilm_modeling.DeciLMForCausalLM(config)
        config = AutoConfig.from_pretrained(directory)
        with torch.device("meta"):
            if fmt == "pgprune":
                return pruned_modeling.pruned_class(config)(config)
            return AutoModelForCausalLM.from_config(config)
    except Exception as exc:
        raise ModelError(f"cannot build the model described by {directory / 'config.json'}: "
                         f"{first_line(exc)}") from None
