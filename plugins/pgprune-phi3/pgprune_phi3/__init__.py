"""pgprune adapter for Phi-3-architecture models."""

from .adapter import Phi3Adapter

__all__ = ["Phi3Adapter"]
