"""The ``mlp`` kind: a layer's whole MLP block, one unit per layer.

Removing the block removes every channel of the layer at once: the unit owns exactly what
the layer's ``channel`` units own together (``down_proj``'s bias, shared by the channels,
stays, as it does when channels are cut one by one; LLaMA-family models have none), and
masking scales ``act(gate(x)) * up(x)`` before ``down_proj`` by the layer's mask, as the
channel kind does per channel.  In the ``decilm`` export a layer without MLP is an
``ffn.no_op`` block.
"""

from __future__ import annotations

import torch
from torch import nn

from pgprune_core.interfaces import Granularity, Handle
from pgprune_core.model.granularity.channel import channel_cost, remove_channels
from pgprune_core.model.granularity.rowmask import by_layer, install_input_masks, per_layer_units
from pgprune_core.model.structure import ModelStructure, UnitSet
from pgprune_core.plugin.hookspecs import hookimpl


class MlpGranularity(Granularity):
    """A layer's whole MLP block (all of its channels as one unit)."""

    name = "mlp"
    #: after the channels (it removes what they leave), before layers (which renumber)
    surgery_order = 5

    def units(self, structure: ModelStructure) -> UnitSet:
        return per_layer_units(self.name, (
            (site.index, 1, site.mlp.intermediate_size * channel_cost(site.mlp))
            for site in structure.layers if site.mlp is not None and site.mlp.intermediate_size
        ))

    def install(self, structure: ModelStructure, units: UnitSet,
                row_masks: torch.Tensor) -> list[Handle]:
        def target(layer: int) -> tuple[nn.Linear, int, int]:
            site = structure.layers[layer].dense_mlp()
            return site.down_proj, 1, site.intermediate_size

        return install_input_masks(units, row_masks, target)

    def remove(self, structure: ModelStructure, units: UnitSet, keep: torch.Tensor) -> None:
        for layer, (_, kept) in by_layer(units, keep.bool()).items():
            width = structure.layers[layer].dense_mlp().intermediate_size
            if not bool(kept[0]) and width:
                remove_channels(structure, layer, torch.arange(width))


@hookimpl
def pgprune_register_granularities(register):  # type: ignore[no-untyped-def]
    register(MlpGranularity)
