"""``uniform``: the same score for every unit, so every probability starts at the keep ratio.

This is the maximum-entropy start under the budget: sigmoid-norm maps equal scores to
``s_i = 1 - rate`` exactly, and the policy gradient alone decides the ranking.  It is not a
pruning baseline: with all scores tied, ``--estimator none`` would cut units by their
position in the layout (the budget breaks ties by index), which means nothing.
"""

from __future__ import annotations

from typing import Literal

import torch

from pgprune_core.config.base import InitializerConfig
from pgprune_core.initializers.base import CheckedInitializer
from pgprune_core.interfaces import InitContext
from pgprune_core.plugin.hookspecs import hookimpl


class UniformInitializer(CheckedInitializer):
    """Equal scores: every unit starts at the keep ratio (no prior at all)."""

    name = "uniform"
    kinds = frozenset({"channel", "head", "attention", "mlp", "layer", "expert"})
    needs_calibration = False

    class Config(InitializerConfig):
        #: score-const would turn the all-tied scores into a mask chosen by position
        transform: Literal["sigmoid-norm"] = "sigmoid-norm"

    def compute(self, ctx: InitContext) -> torch.Tensor:
        return torch.zeros(len(ctx.layout), dtype=torch.float64)


@hookimpl
def pgprune_register_initializers(register):  # type: ignore[no-untyped-def]
    register(UniformInitializer)
