"""The ``channel`` kind: MLP intermediate channels.

Channel ``j`` of a gated MLP ``down(act(gate(x)) * up(x))`` is row ``j`` of ``gate_proj`` and
of ``up_proj`` (rows ``j`` and ``intermediate_size + j`` of a fused ``gate_up_proj``) and
column ``j`` of ``down_proj``.  Masking multiplies ``act(gate(x)) * up(x)``
by the mask just before ``down_proj`` (as in the authors' code); a zero there contributes
exactly what a physically removed channel contributes: nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from pgprune_core.interfaces import Granularity, Handle
from pgprune_core.model.granularity.rowmask import by_layer, install_input_masks, per_layer_units
from pgprune_core.model.granularity.slicing import keep_block_rows, keep_columns, kept_indices
from pgprune_core.model.pruned_modeling import set_intermediate_size
from pgprune_core.model.structure import MlpSite, ModelStructure, UnitSet
from pgprune_core.plugin.hookspecs import hookimpl


def channel_cost(site: MlpSite) -> int:
    """Parameters one channel owns: a row of gate and up (with their bias entries; rows of
    one fused gate_up when the MLP has it) and a column of down (down's bias belongs to the
    hidden size, not to a channel)."""
    return site.down_proj.out_features + sum(
        block.linear.in_features + int(block.linear.bias is not None)
        for block in site.gate_up_blocks())


class ChannelGranularity(Granularity):
    """MLP intermediate channels (gate/up rows and the down column of each channel)."""

    name = "channel"
    surgery_order = 0


    def units(self, structure: ModelStructure) -> UnitSet:
        return per_layer_units(self.name, (
            (site.index, site.mlp.intermediate_size, channel_cost(site.mlp))
            for site in structure.layers if site.mlp is not None
        ))

    def install(self, structure: ModelStructure, units: UnitSet,
                row_masks: torch.Tensor) -> list[Handle]:
        def target(layer: int) -> tuple[nn.Linear, int, int]:
            site = structure.layers[layer].dense_mlp()
            return site.down_proj, site.intermediate_size, 1

        return install_input_masks(units, row_masks, target)

    def remove(self, structure: ModelStructure, units: UnitSet, keep: torch.Tensor) -> None:
        for layer, (index, kept) in by_layer(units, keep.bool()).items():
            dropped = index[~kept.cpu()]
            if dropped.numel():
                remove_channels(structure, layer, dropped)


def remove_channels(structure: ModelStructure, layer: int, dropped: torch.Tensor) -> None:
    """Cut the channels ``dropped`` (indices into the layer's current width) out of layer
    ``layer``'s MLP."""
    site = structure.layers[layer].dense_mlp()
    channels = kept_indices(site.intermediate_size, dropped)
    keep_block_rows(site.gate_up_blocks(), (channels, channels))
    keep_columns(site.down_proj, channels)
    site.intermediate_size = int(channels.numel())
    set_intermediate_size(site.module, site.intermediate_size)


@hookimpl
def pgprune_register_granularities(register):  # type: ignore[no-untyped-def]
    register(ChannelGranularity)
