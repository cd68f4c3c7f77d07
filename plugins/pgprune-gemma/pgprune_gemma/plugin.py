"""Entry point ``gemma``: registers the adapter(s) and resolves their configs."""

from __future__ import annotations

from typing import Any

from pgprune_core import hookimpl
from pgprune_core.model.hf_adapter import claim

from .adapter import Gemma2Adapter, Gemma3Adapter, Gemma3MultimodalAdapter


@hookimpl
def pgprune_register_adapters(register):  # type: ignore[no-untyped-def]
    register(Gemma2Adapter)
    register(Gemma3Adapter)
    register(Gemma3MultimodalAdapter)


@hookimpl
def pgprune_resolve_adapter(model_config: Any) -> str | None:
    return claim(model_config, Gemma2Adapter, Gemma3Adapter, Gemma3MultimodalAdapter)
