"""Entry point ``qwen2``: registers the ``qwen2`` adapter and resolves Qwen2 configs."""

from __future__ import annotations

from typing import Any

from pgprune_core import hookimpl
from pgprune_core.model.hf_adapter import claim

from .adapter import Qwen2Adapter


@hookimpl
def pgprune_register_adapters(register):  # type: ignore[no-untyped-def]
    register(Qwen2Adapter)


@hookimpl
def pgprune_resolve_adapter(model_config: Any) -> str | None:
    return claim(model_config, Qwen2Adapter)
