"""The ``attention`` kind: a layer's whole attention block, one unit per layer.

Removing the block removes every head of the layer at once: the unit owns exactly what the
layer's ``head`` units own together (the output projection's bias, shared by the heads,
stays, as it does when heads are cut one by one; LLaMA-family models have none), and masking
scales the attention output before ``o_proj`` by the layer's mask, as the head kind does for
each group.  A layer without attention still runs its MLP, unlike a dropped ``layer``; in the
``decilm`` export it is an ``attention.no_op`` block.
"""

from __future__ import annotations

import torch
from torch import nn

from pgprune_core.interfaces import Granularity, Handle
from pgprune_core.model.granularity.head import group_cost, remove_groups
from pgprune_core.model.granularity.rowmask import by_layer, install_input_masks, per_layer_units
from pgprune_core.model.structure import ModelStructure, UnitSet
from pgprune_core.plugin.hookspecs import hookimpl


class AttentionGranularity(Granularity):
    """A layer's whole attention block (all of its heads as one unit)."""

    name = "attention"
    #: after the heads (it removes what they leave), before layers (which renumber)
    surgery_order = 5

    def units(self, structure: ModelStructure) -> UnitSet:
        return per_layer_units(self.name, (
            (site.index, 1, site.attention.n_kv_heads * group_cost(site.attention))
            for site in structure.layers if site.attention.n_kv_heads
        ))

    def install(self, structure: ModelStructure, units: UnitSet,
                row_masks: torch.Tensor) -> list[Handle]:
        def target(layer: int) -> tuple[nn.Linear, int, int]:
            site = structure.layers[layer].attention
            return site.o_proj, 1, site.n_heads * site.head_dim

        return install_input_masks(units, row_masks, target)

    def remove(self, structure: ModelStructure, units: UnitSet, keep: torch.Tensor) -> None:
        for layer, (_, kept) in by_layer(units, keep.bool()).items():
            n_groups = structure.layers[layer].attention.n_kv_heads
            if not bool(kept[0]) and n_groups:
                remove_groups(structure, layer, torch.arange(n_groups))


@hookimpl
def pgprune_register_granularities(register):  # type: ignore[no-untyped-def]
    register(AttentionGranularity)
