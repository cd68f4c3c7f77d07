"""``magnitude``: the root-mean-square of each unit's own weights (no data needed).

Score of a unit = ``sqrt(sum w^2 / count)`` over the entries it owns
(:mod:`.unit_params`): its L2 norm divided by ``sqrt`` of its parameter count.  Inside a
kind every unit owns the same number of entries in a dense model, so this ranks exactly
like the plain L2 norm; the division puts channels, heads and layers on one scale (an
average weight size), which matters only when a ``global`` budget ranks kinds against each
other.  Cost: one pass over the weights, no forward pass, no extra memory.
"""

from __future__ import annotations

from functools import partial

import torch

from pgprune_core.config.base import InitializerConfig
from pgprune_core.initializers.base import CheckedInitializer
from pgprune_core.initializers.unit_params import gather_units, layer_unit_sums
from pgprune_core.interfaces import InitContext
from pgprune_core.model.placement import onloaded
from pgprune_core.model.structure import LayerSite
from pgprune_core.plugin.hookspecs import hookimpl


class MagnitudeInitializer(CheckedInitializer):
    """RMS of each unit's own weights (data-free baseline)."""

    name = "magnitude"
    kinds = frozenset({"channel", "head", "attention", "mlp", "layer"})
    needs_calibration = False

    class Config(InitializerConfig):
        """No options of its own (the name is derived from the class)."""

    @torch.no_grad()
    def compute(self, ctx: InitContext) -> torch.Tensor:
        return torch.cat([gather_units(ctx.structure, unit_set, partial(unit_rms, kind=unit_set.kind))
                          for unit_set in ctx.layout])


def unit_rms(site: LayerSite, kind: str) -> torch.Tensor:
    """float32 [units of ``kind`` in the layer]: RMS of each unit's own entries (an
    offloaded layer's weights are read in for the call, one layer at a time)."""
    with onloaded(site.module):
        squares = layer_unit_sums(site, kind, lambda p: p.detach().square())
        counts = layer_unit_sums(site, kind, lambda p: torch.ones_like(p, dtype=torch.float32))
    return (squares / counts).sqrt()


@hookimpl
def pgprune_register_initializers(register):  # type: ignore[no-untyped-def]
    register(MagnitudeInitializer)
