"""``expert-frequency``: how much the router uses each expert on calibration data.

For expert e of a sparse layer, over the N calibration tokens:

    score_e = (tokens routed to e / N) * (mean routing weight of e over those tokens)
            = (sum of e's routing weights over all tokens) / N

the routing frequency times the mean gate weight, the router-weighted usage that
expert-pruning methods rank experts by (REAP's router-weighted expert activation without
the expert-output norm; frequency-based pruning of Mixtral-style models).  The weights
are those the model's router hands to its experts (after its top-k and, where the model
renormalises, renormalisation); an expert never chosen scores 0.

Cost: one forward pass of the dense model over the calibration set; hooks on the routers
read their outputs, nothing else is stored.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from pydantic import Field
from torch import nn

from pgprune_core.config.base import InitializerConfig
from pgprune_core.initializers.base import CheckedInitializer, calibration_batches
from pgprune_core.interfaces import InitContext
from pgprune_core.model.structure import ExpertSite, ModelStructure
from pgprune_core.parallel import SINGLE, Ranks
from pgprune_core.plugin.hookspecs import hookimpl


class _Usage:
    """Summed routing weight per expert of one router, and the tokens seen."""

    def __init__(self, site: ExpertSite) -> None:
        self.weights = torch.zeros(site.n_experts, dtype=torch.float64)
        self.tokens = 0

    def hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        weights, experts = output[1], output[2]
        self.tokens += int(experts.shape[0])
        self.weights.index_add_(0, experts.reshape(-1).cpu(),
                                weights.reshape(-1).detach().to("cpu", torch.float64))

    def scores(self) -> torch.Tensor:
        return self.weights / max(self.tokens, 1)


def routing_usage(model: nn.Module, structure: ModelStructure, batches: list[torch.Tensor],
                  ranks: Ranks = SINGLE) -> dict[int, torch.Tensor]:
    """Per sparse layer, ``score_e`` (module docstring) of its experts over ``batches``
    (under ``torchrun``: this rank's share, the usage summed over the ranks)."""
    usage = {site.index: _Usage(site.experts) for site in structure.layers
             if site.experts is not None}
    handles = [structure.layers[layer].experts.router.register_forward_hook(u.hook)  # type: ignore[union-attr]
               for layer, u in usage.items()]
    try:
        with torch.inference_mode():
            for batch in batches:
                model(input_ids=batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    for u in usage.values():
        u.weights = ranks.all_reduce_sum(u.weights, "summing the routing statistics")
        u.tokens = int(ranks.all_reduce_sum(torch.tensor([u.tokens], dtype=torch.float64))[0])
    return {layer: u.scores() for layer, u in usage.items()}


class ExpertFrequencyInitializer(CheckedInitializer):
    """Routing frequency x mean gate weight of each expert on calibration data."""

    name = "expert-frequency"
    kinds = frozenset({"expert"})
    needs_calibration = True

    class Config(InitializerConfig):
        #: calibration windows
        n_sequences: int = Field(default=64, gt=0)
        #: tokens per window
        seq_len: int = Field(default=256, gt=1)
        #: windows per forward pass
        batch_size: int = Field(default=8, gt=0)

    def compute(self, ctx: InitContext) -> torch.Tensor:
        config = cast(ExpertFrequencyInitializer.Config, self.config)
        batches = calibration_batches(ctx, config.n_sequences, config.seq_len, config.batch_size,
                                      shard=True)
        usage = routing_usage(ctx.model, ctx.structure, batches, ctx.ranks)
        units = ctx.layout["expert"]
        scores = torch.stack([usage[int(layer)][int(index)]
                              for layer, index in zip(units.layer, units.index, strict=True)])
        return scores.to(torch.float64)


@hookimpl
def pgprune_register_initializers(register):  # type: ignore[no-untyped-def]
    register(ExpertFrequencyInitializer)
