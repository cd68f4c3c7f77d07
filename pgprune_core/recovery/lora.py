"""LoRA adapters through ``peft``: which modules get one, attaching, merging.

A pruned model can be heterogeneous: a layer may have lost every head (its attention
projections stay, with zero rows) or every MLP channel.  Adapters go on the ``nn.Linear``
modules of the decoder layers whose last name is a target and whose weight is not empty;
named one by one (full module names) so that peft touches nothing else.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from pgprune_core.errors import ConfigError, RunDirError
from pgprune_core.model.structure import ModuleNames
from pgprune_core.recovery.config import DEFAULT_TARGETS, LoraSection

#: how to get peft (the optional extra of pgprune-core)
INSTALL_HINT = "pip install 'pgprune-core[finetune]' (or: pip install peft)"


def require_peft() -> Any:
    """The ``peft`` module, or a one-line error naming the install command."""
    try:
        import peft
    except ImportError:
        raise ConfigError(f"pgprune finetune needs peft, which is not installed: "
                          f"{INSTALL_HINT}") from None
    return peft


def _layers(model: nn.Module) -> Any:
    section = getattr(getattr(model, "config", None), "pgprune", None) or {}
    path = (section.get("module_names") or {}).get("layers") or ModuleNames().layers
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ConfigError(f"cannot find the decoder layers ({path}) of this model") from None


def layer_linears(model: nn.Module) -> list[dict[str, nn.Linear]]:
    """Per decoder layer: full module name -> ``nn.Linear`` (every linear inside it)."""
    layers = _layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    out = []
    for index, layer in enumerate(layers):
        out.append({f"{prefix}.{index}.{name}": module for name, module in layer.named_modules()
                    if isinstance(module, nn.Linear)})
    return out


def resolve_targets(model: nn.Module, requested: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """``(short names, full module names)`` of the modules to adapt.

    ``requested`` None: the :data:`DEFAULT_TARGETS` that every layer has with a non-empty
    weight.  A requested name that no layer has is an error; layers where a requested
    module is empty (all heads or channels pruned) are skipped for it."""
    per_layer = layer_linears(model)
    short = lambda full: full.rpartition(".")[2]  # noqa: E731
    present = {short(name) for layer in per_layer for name in layer}
    non_empty = [{short(n) for n, m in layer.items() if m.weight.numel() > 0} for layer in per_layer]
    if requested is None:
        names = [t for t in DEFAULT_TARGETS if all(t in layer for layer in non_empty)]
        if not names:
            raise ConfigError(f"no projection of {', '.join(DEFAULT_TARGETS)} exists in every "
                              f"layer; name targets with --lora.target_modules")
    else:
        unknown = [t for t in requested if t not in present]
        if unknown:
            raise ConfigError(f"unknown LoRA target module {', '.join(map(repr, unknown))}; "
                              f"the layers have: {', '.join(sorted(present))}")
        names = list(dict.fromkeys(requested))
    full = [n for layer in per_layer for n, m in layer.items()
            if short(n) in names and m.weight.numel() > 0]
    if not full:
        raise ConfigError(f"every {', '.join(names)} module is empty in this pruned model; "
                          f"choose other --lora.target_modules")
    return names, full


def attach(model: nn.Module, lora: LoraSection, targets: list[str]) -> Any:
    """``model`` wrapped by peft with fresh LoRA adapters on ``targets`` (full names); only
    the adapters' parameters require gradients."""
    peft = require_peft()
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(targets), bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # peft asks transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(model, config)


def adapter_state(peft_model: Any) -> dict[str, Any]:
    """The trainable (LoRA) parameters by name, detached copies."""
    return {name: p.detach().clone() for name, p in peft_model.named_parameters() if p.requires_grad}


def load_adapter_state(peft_model: Any, state: dict[str, Any]) -> None:
    params = dict(peft_model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing or len(state) != sum(p.requires_grad for p in params.values()):
        raise RunDirError(f"the checkpoint's adapters do not match the model ({missing[:2]})")
    for name, value in state.items():
        params[name].data.copy_(value)
