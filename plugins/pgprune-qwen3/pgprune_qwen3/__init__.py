"""pgprune adapter for Qwen3-architecture (dense) models."""

from .adapter import Qwen3Adapter

__all__ = ["Qwen3Adapter"]
