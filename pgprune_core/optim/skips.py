"""Skipping steps whose losses are not finite.

A NaN or infinite loss (a masked model that overflows, a corrupt batch) would poison the
probabilities for good, so every estimator skips such a step entirely, as the authors'
code does for NaN losses, and says so: a ``RuntimeWarning`` names the step and the count
is reported as ``skipped_total`` (and in the loop's ``skipped`` column).
"""

from __future__ import annotations

import warnings

import torch


class NonFiniteSkips:
    """Counts skipped steps over an estimator's whole life (all stages together)."""

    def __init__(self, estimator: str) -> None:
        self.estimator = estimator
        self.count = 0

    def finite(self, losses: torch.Tensor, step: int) -> bool:
        """True when every loss is finite; otherwise count and warn, and return False."""
        if bool(torch.isfinite(losses).all()):
            return True
        self.count += 1
        warnings.warn(
            f"{self.estimator}: non-finite loss {losses.tolist()} at step {step}; step skipped "
            f"({self.count} so far)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
