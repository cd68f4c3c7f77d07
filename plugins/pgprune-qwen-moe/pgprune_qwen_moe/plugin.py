"""Entry point ``qwen-moe``: registers the ``qwen2_moe`` and ``qwen3_moe`` adapters and
resolves their configs."""

from __future__ import annotations

from typing import Any

from pgprune_core import hookimpl

from .adapter import Qwen2MoeAdapter, Qwen3MoeAdapter

ADAPTERS = (Qwen2MoeAdapter, Qwen3MoeAdapter)


@hookimpl
def pgprune_register_adapters(register):  # type: ignore[no-untyped-def]
    for adapter in ADAPTERS:
        register(adapter)


@hookimpl
def pgprune_resolve_adapter(model_config: Any) -> str | None:
    model_type = getattr(model_config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter.name
    return None
