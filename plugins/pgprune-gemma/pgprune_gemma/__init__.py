"""pgprune adapters for Gemma 2 and Gemma 3 (text) models."""

from .adapter import Gemma2Adapter, Gemma3Adapter, Gemma3MultimodalAdapter

__all__ = ["Gemma2Adapter", "Gemma3Adapter", "Gemma3MultimodalAdapter"]
