"""pgprune adapters for LLaMA-architecture models (LLaMA 1/2/3, Vicuna)."""

from .adapters import LlamaAdapter, VicunaAdapter

__all__ = ["LlamaAdapter", "VicunaAdapter"]
