"""pgprune adapters for Qwen2-MoE and Qwen3-MoE (sparse mixture-of-experts) models."""

from .adapter import Qwen2MoeAdapter, Qwen3MoeAdapter

__all__ = ["Qwen2MoeAdapter", "Qwen3MoeAdapter"]
