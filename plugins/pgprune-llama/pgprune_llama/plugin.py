"""Entry point ``llama``: registers the ``llama`` and ``vicuna`` adapters and resolves
LLaMA-type configs to one of them."""

from __future__ import annotations

from typing import Any

from pgprune_core import hookimpl

from .adapters import LlamaAdapter, VicunaAdapter, is_vicuna


@hookimpl
def pgprune_register_adapters(register):  # type: ignore[no-untyped-def]
    register(LlamaAdapter)
    register(VicunaAdapter)


@hookimpl
def pgprune_resolve_adapter(model_config: Any) -> str | None:
    if getattr(model_config, "model_type", None) != "llama":
        return None
    return VicunaAdapter.name if is_vicuna(model_config) else LlamaAdapter.name
