"""Entry point ``mixtral``: registers the ``mixtral`` adapter and resolves Mixtral configs."""

from __future__ import annotations

from typing import Any

from pgprune_core import hookimpl

from .adapter import MixtralAdapter


@hookimpl
def pgprune_register_adapters(register):  # type: ignore[no-untyped-def]
    register(MixtralAdapter)


@hookimpl
def pgprune_resolve_adapter(model_config: Any) -> str | None:
    if getattr(model_config, "model_type", None) in MixtralAdapter.model_types:
        return MixtralAdapter.name
    return None
