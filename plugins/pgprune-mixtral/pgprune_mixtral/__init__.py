"""pgprune adapter for Mixtral-architecture (sparse mixture-of-experts) models."""

from .adapter import MixtralAdapter

__all__ = ["MixtralAdapter"]
