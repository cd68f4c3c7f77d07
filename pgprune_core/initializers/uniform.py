"""``uniform``: the same score for every unit, so every probability starts at the keep ratio.

This is the maximum-entropy start under the budget: sigmoid-norm maps equal scores to
``s_i = 1 - rate`` exactly, and the policy gradient alone decides the ranking.  It is not a
pruning baseline: with all scores tied, ``--estimator none`` would cut units by their
position in the layout (the budget breaks ties by index), which means nothing.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..config_base import InitializerConfig
from ..interfaces import InitContext
from .base import CheckedInitializer


class UniformInitializer(CheckedInitializer):
    """Equal scores: every unit starts at the keep ratio (no prior at all)."""

    name = "uniform"
    kinds = frozenset({"channel", "head", "layer"})
    needs_calibration = False

    class Config(InitializerConfig):
        name: Literal["uniform"] = "uniform"
        #: score-const would turn the all-tied scores into a mask chosen by position
        transform: Literal["sigmoid-norm"] = "sigmoid-norm"

    def compute(self, ctx: InitContext) -> torch.Tensor:
        return torch.zeros(len(ctx.layout), dtype=torch.float64)
