"""pgprune adapter for Mistral-architecture models."""

from .adapter import MistralAdapter

__all__ = ["MistralAdapter"]
