"""pgprune adapter for Qwen2-architecture models (Qwen2, Qwen2.5)."""

from .adapter import Qwen2Adapter

__all__ = ["Qwen2Adapter"]
