"""The ``head`` kind: attention heads, one unit per KV group.

Under grouped-query attention a key/value head is shared by ``n_heads / n_kv_heads`` query
heads; removing a query head alone saves little and removing a KV head breaks its queries,
so the unit is the group (the KV head and its query heads), as in the authors' code.  Under
multi-head attention a group is one head.  Masking multiplies the attention output, before
``o_proj``, by the group's mask spread over its query heads x ``head_dim`` features: a zero
there is exactly a removed group (its q/k/v rows then influence nothing).
"""

from __future__ import annotations

from typing import Literal

import torch

from ..config_base import PluginConfig
from ..interfaces import Granularity, Handle
from ..pruned_modeling import EmptyAttention, set_head_counts
from ..structure import AttentionSite, ModelStructure, UnitSet
from .rowmask import by_layer, full_width, input_scaler, is_all_ones
from .slicing import head_features, keep_columns, keep_rows, kept_indices


def group_cost(site: AttentionSite) -> int:
    """Parameters one KV group owns: the q rows of its query heads, the k and v rows of its
    KV head (with bias entries) and the o columns of its query heads."""
    q, k, v, o = site.q_proj, site.k_proj, site.v_proj, site.o_proj
    q_features = site.group_size * site.head_dim
    cost = q_features * (q.in_features + int(q.bias is not None))
    cost += site.head_dim * (k.in_features + int(k.bias is not None))
    cost += site.head_dim * (v.in_features + int(v.bias is not None))
    cost += q_features * o.out_features
    return cost


class HeadGranularity(Granularity):
    """Attention heads; under GQA one unit is a KV group (the KV head and its query heads)."""

    name = "head"
    surgery_order = 0

    class Config(PluginConfig):
        name: Literal["head"] = "head"

    def units(self, structure: ModelStructure) -> UnitSet:
        layers, index, cost = [], [], []
        for site in structure.layers:
            groups = site.attention.n_kv_heads
            layers.append(torch.full((groups,), site.index, dtype=torch.int64))
            index.append(torch.arange(groups, dtype=torch.int64))
            cost.append(torch.full((groups,), group_cost(site.attention), dtype=torch.int64))
        empty = [torch.zeros(0, dtype=torch.int64)]
        return UnitSet(self.name, torch.cat(layers or empty), torch.cat(index or empty),
                       torch.cat(cost or empty))

    def install(self, structure: ModelStructure, units: UnitSet,
                row_masks: torch.Tensor) -> list[Handle]:
        handles: list[Handle] = []
        for layer, (index, columns) in by_layer(units, row_masks).items():
            if is_all_ones(columns):
                continue
            site = structure.layers[layer].attention
            weight = site.o_proj.weight
            groups = full_width(index, columns, site.n_kv_heads)
            mask = groups.repeat_interleave(site.group_size * site.head_dim, dim=1)
            mask = mask.to(device=weight.device, dtype=weight.dtype)
            handles.append(site.o_proj.register_forward_pre_hook(input_scaler(mask)))
        return handles

    def remove(self, structure: ModelStructure, units: UnitSet, keep: torch.Tensor) -> None:
        for layer, (index, kept) in by_layer(units, keep.bool()).items():
            dropped = index[~kept.cpu()]
            if dropped.numel() == 0:
                continue
            layer_site = structure.layers[layer]
            site = layer_site.attention
            groups = kept_indices(site.n_kv_heads, dropped)
            group_size = site.group_size
            queries = (groups[:, None] * group_size + torch.arange(group_size)).reshape(-1)
            q_features = head_features(queries, site.head_dim)
            kv_features = head_features(groups, site.head_dim)
            keep_rows(site.q_proj, q_features)
            keep_rows(site.k_proj, kv_features)
            keep_rows(site.v_proj, kv_features)
            keep_columns(site.o_proj, q_features)
            site.n_heads = int(queries.numel())
            site.n_kv_heads = int(groups.numel())
            if site.n_heads == 0:
                names = structure.names
                site.module = EmptyAttention(
                    site.q_proj, site.k_proj, site.v_proj, site.o_proj, names.as_dict(),
                    site.head_dim, int(getattr(site.module, "layer_idx", layer)),
                )
                setattr(layer_site.module, names.attention, site.module)
            else:
                set_head_counts(site.module, site.n_heads, site.n_kv_heads)
