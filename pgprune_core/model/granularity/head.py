"""The ``head`` kind: attention heads, one unit per KV group.

Under grouped-query attention a key/value head is shared by ``n_heads / n_kv_heads`` query
heads; removing a query head alone saves little and removing a KV head breaks its queries,
so the unit is the group (the KV head and its query heads), as in the authors' code.  Under
multi-head attention a group is one head.  Masking multiplies the attention output, before
``o_proj``, by the group's mask spread over its query heads x ``head_dim`` features: a zero
there is exactly a removed group (its q/k/v rows then influence nothing).  Biases of q/k/v
are cut with their rows; per-head norms over ``head_dim`` (Qwen3, Gemma 3) are shared by
all heads and stay; a fused ``qkv_proj`` loses the group's rows in each of its three blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from pgprune_core.interfaces import Granularity, Handle
from pgprune_core.model.granularity.rowmask import by_layer, install_input_masks, per_layer_units
from pgprune_core.model.granularity.slicing import (
    group_features,
    keep_block_rows,
    keep_columns,
    kept_indices,
)
from pgprune_core.model.pruned_modeling import EmptyAttention, set_head_counts
from pgprune_core.model.structure import AttentionSite, ModelStructure, UnitSet
from pgprune_core.plugin.hookspecs import hookimpl


def group_cost(site: AttentionSite) -> int:
    """Parameters one KV group owns: the q rows of its query heads, the k and v rows of its
    KV head (with bias entries; rows of one fused qkv when the block has it) and the o
    columns of its query heads."""
    if site.n_kv_heads == 0:
        return 0
    cost = site.group_size * site.head_dim * site.o_proj.out_features
    for block in site.qkv_blocks():
        linear = block.linear
        cost += block.size // site.n_kv_heads * (linear.in_features + int(linear.bias is not None))
    return cost


class HeadGranularity(Granularity):
    """Attention heads; under GQA one unit is a KV group (the KV head and its query heads)."""

    name = "head"
    surgery_order = 0


    def units(self, structure: ModelStructure) -> UnitSet:
        return per_layer_units(self.name, (
            (site.index, site.attention.n_kv_heads, group_cost(site.attention))
            for site in structure.layers
        ))

    def install(self, structure: ModelStructure, units: UnitSet,
                row_masks: torch.Tensor) -> list[Handle]:
        def target(layer: int) -> tuple[nn.Linear, int, int]:
            site = structure.layers[layer].attention
            return site.o_proj, site.n_kv_heads, site.group_size * site.head_dim

        return install_input_masks(units, row_masks, target)

    def remove(self, structure: ModelStructure, units: UnitSet, keep: torch.Tensor) -> None:
        for layer, (index, kept) in by_layer(units, keep.bool()).items():
            dropped = index[~kept.cpu()]
            if dropped.numel():
                remove_groups(structure, layer, dropped)


def remove_groups(structure: ModelStructure, layer: int, dropped: torch.Tensor) -> None:
    """Cut the KV groups ``dropped`` (indices into the layer's current groups) out of
    layer ``layer``; a layer left without heads gets an :class:`EmptyAttention`."""
    layer_site = structure.layers[layer]
    site = layer_site.attention
    groups = kept_indices(site.n_kv_heads, dropped)
    q_features, kv_features = group_features(groups, site.group_size, site.head_dim)
    keep_block_rows(site.qkv_blocks(), (q_features, kv_features, kv_features))
    keep_columns(site.o_proj, q_features)
    site.n_heads = int(groups.numel()) * site.group_size
    site.n_kv_heads = int(groups.numel())
    if site.n_heads == 0:
        names = structure.names
        site.module = EmptyAttention(
            site.module, names.o_proj, site.head_dim,
            int(getattr(site.module, "layer_idx", layer)),
        )
        setattr(layer_site.module, names.attention, site.module)
    else:
        set_head_counts(site.module, site.n_heads, site.n_kv_heads)


@hookimpl
def pgprune_register_granularities(register):  # type: ignore[no-untyped-def]
    register(HeadGranularity)
